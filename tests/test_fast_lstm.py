"""Tests of the hand-written LSTM backward pass against JAX autodiff of `odyssey.nets.lstm_layer`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odyssey import cells, fast_lstm, nets

_T, _M, _N = 9, 3, 4
# Interior gap and padding at the end: the backward direction must start at the last valid step.
_MASK = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0], np.float64)
# (mask, reverse): the ways a layer is run. Unmasked reverse is the same flip as masked reverse and is
# covered by the padding test, which keeps the compiled programs (most of this file's time) smaller.
_MODES = ((False, False), (True, False), (True, True))
# Compile time dominates these tests; XLA's backend optimisation level changes speed, not the maths.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0}
# float64: both sides are exact up to round-off of O(T) operations; atol covers entries that cancel to ~0.
_RTOL64, _ATOL64 = 1e-10, 1e-13


def _params(variant, seed, dtype=np.float64, n=_N, std=0.4):
    """Random parameters; std 0.4 keeps the gates away from saturation so every path carries gradient."""
    return {k: jnp.asarray(v) for k, v in cells.init(jax.random.PRNGKey(seed), variant, _M, n, std, dtype).items()}


def _data(seed, dtype=np.float64, t=_T):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.normal(size=(t, _M)).astype(dtype))
    cots = jnp.asarray(rng.normal(size=(len(_MODES), t, _N)).astype(dtype))
    return xs, cots


def _outputs_and_grads(layer, variant, params, xs, cots, mask, modes=_MODES):
    """For each mode: the layer's outputs and the gradients of <cotangent, outputs> w.r.t. params and xs.

    cots: float[len(_MODES), T, N], one cotangent per mode of _MODES (modes may pick a subset).
    """
    out = []
    for masked, reverse in modes:
        cot = cots[_MODES.index((masked, reverse))]
        def loss(p, x, masked=masked, reverse=reverse, cot=cot):
            ys = layer(variant, p, x, mask if masked else None, reverse)
            return jnp.sum(ys * cot), ys

        (_, ys), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
        out.append((ys, grads))
    return out


_reference = jax.jit(functools.partial(_outputs_and_grads, nets.lstm_layer), static_argnums=0,
                     compiler_options=_QUICK_COMPILE)
_fast = jax.jit(functools.partial(_outputs_and_grads, fast_lstm.lstm_layer), static_argnums=0,
                compiler_options=_QUICK_COMPILE)


def _assert_close(actual, expected, rtol, atol_scale, where):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected), where
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    flat_e = jax.tree_util.tree_leaves(expected)
    for (path, a), e in zip(flat_a, flat_e):
        assert a.shape == e.shape and a.dtype == e.dtype, f"{where} {jax.tree_util.keystr(path)}"
        e = np.asarray(e)
        np.testing.assert_allclose(np.asarray(a), e, rtol=rtol, atol=atol_scale * np.max(np.abs(e)),
                                   err_msg=f"{where} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("variant", cells.VARIANTS)
def test_outputs_and_gradients_equal_autodiff_float64(x64, variant):
    params = _params(variant, 1)
    xs, cots = _data(2)
    mask = jnp.asarray(_MASK)
    got = _fast(variant, params, xs, cots, mask)
    want = _reference(variant, params, xs, cots, mask)
    for mode, (g, w) in zip(_MODES, zip(got, want)):
        where = f"{variant} mask={mode[0]} reverse={mode[1]}"
        _assert_close(g, w, _RTOL64, _ATOL64, where)
        # every parameter tensor and xs receives a gradient that is not trivially zero
        assert all(np.max(np.abs(leaf)) > 1e-3 for leaf in jax.tree_util.tree_leaves(w[1])), where
    # masked steps output exactly 0 in both directions
    for masked, ys in ((m[0], g[0]) for m, g in zip(_MODES, got)):
        if masked:
            assert np.all(np.asarray(ys)[_MASK == 0] == 0.0)


@pytest.mark.parametrize("variant", cells.VARIANTS)
def test_vmap_over_trials_equals_each_trial_alone(x64, variant):
    """Three trials with their own parameters, inputs, masks and cotangents, vmapped, against a loop."""
    k = 3
    trials = [_params(variant, 10 + j) for j in range(k)]
    data = [_data(20 + j) for j in range(k)]
    masks = [_MASK, np.ones(_T), np.r_[np.ones(5), np.zeros(_T - 5)]]
    stack = functools.partial(jax.tree_util.tree_map, lambda *a: jnp.stack(a))
    # one mode keeps the vmapped program small; the trials' masks differ (an interior gap, none, a tail)
    mode = (True, False)
    program = functools.partial(_outputs_and_grads, fast_lstm.lstm_layer, variant, modes=(mode,))
    batched = jax.jit(jax.vmap(program), compiler_options=_QUICK_COMPILE)(
        stack(*trials), jnp.stack([d[0] for d in data]), jnp.stack([d[1] for d in data]), jnp.asarray(np.stack(masks)))
    for j in range(k):
        want = _reference(variant, trials[j], data[j][0], data[j][1], jnp.asarray(masks[j]))[_MODES.index(mode)]
        got = jax.tree_util.tree_map(lambda a, j=j: a[j], batched[0])
        _assert_close(got, want, _RTOL64, _ATOL64, f"{variant} trial {j}")


@pytest.mark.parametrize("variant, reverse", [("V", True), ("NOAF", False), ("CIFG", True), ("FGR", True)])
def test_padding_at_the_end_gives_the_unpadded_sequence(x64, variant, reverse):
    """A sequence of 6 steps padded to 9: same outputs on the valid steps and the same gradients."""
    params = _params(variant, 3)
    xs, cots = _data(4)
    n_valid = 6
    mask = jnp.asarray(np.r_[np.ones(n_valid), np.zeros(_T - n_valid)])
    # the padded steps carry junk inputs and cotangents, which must not matter
    xs_pad = xs.at[n_valid:].set(1e3)

    def loss(p, x, m, cot):
        return jnp.sum(fast_lstm.lstm_layer(variant, p, x, m, reverse) * cot)

    grad = jax.jit(jax.grad(loss, (0, 1)), compiler_options=_QUICK_COMPILE)
    g_pad = grad(params, xs_pad, mask, cots[0])
    g_cut = grad(params, xs[:n_valid], None, cots[0, :n_valid])
    _assert_close(g_pad[0], g_cut[0], _RTOL64, _ATOL64, f"{variant} params")
    np.testing.assert_allclose(g_pad[1][:n_valid], g_cut[1], rtol=_RTOL64, atol=1e-14)
    assert np.all(np.asarray(g_pad[1][n_valid:]) == 0.0)


@pytest.mark.parametrize("variant", ["V", "CIFG", "FGR"])
def test_steps_skips_the_padding_under_vmap(x64, variant):
    """Two trials of lengths 6 and 4 (T = 9), vmapped with the unbatched bound steps = 6: the loops run 6
    steps, forward and reversed, and give autodiff's outputs and gradients of the full padded run."""
    params = [_params(variant, 5), _params(variant, 6)]
    xs, cots = _data(7)
    masks = jnp.asarray([[1.0] * 6 + [0.0] * 3, [1.0] * 4 + [0.0] * 5])
    xs2 = jnp.stack([xs, xs.at[4:].set(1e3)])  # junk at padded steps must not matter
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)
    for reverse in (False, True):
        def loss(layer, p, x, m, cot, steps=None, reverse=reverse):
            kwargs = {} if steps is None else {"steps": steps}
            return jnp.sum(layer(variant, p, x, m, reverse, **kwargs) * cot)

        fast = jax.jit(jax.vmap(jax.grad(functools.partial(loss, fast_lstm.lstm_layer), (0, 1)),
                                (0, 0, 0, None, None)), compiler_options=_QUICK_COMPILE)
        got = fast(stacked, xs2, masks, cots[0], 6)
        for j in range(2):
            want = jax.grad(functools.partial(loss, nets.lstm_layer), (0, 1))(params[j], xs2[j], masks[j], cots[0])
            _assert_close(jax.tree_util.tree_map(lambda a, j=j: a[j], got), want, _RTOL64, _ATOL64,
                          f"{variant} reverse={reverse} trial {j}")


@pytest.mark.parametrize("variant, unroll", [("V", 4), ("FGR", 5)])
def test_unrolled_loops_give_autodiff_values(x64, variant, unroll):
    """Steps per loop iteration that do not divide the run (9 steps, or 6 with `steps`, by 4 and 5): the same
    outputs and gradients as autodiff, masked and reversed, with and without the step bound."""
    params = _params(variant, 11)
    xs, cots = _data(12)
    mask = jnp.asarray(np.r_[np.ones(6), np.zeros(_T - 6)] * _MASK)
    for reverse in (False, True):
        def loss(layer, p, x, steps=None, reverse=reverse, **kwargs):
            if steps is not None:
                kwargs["steps"] = steps
            ys = layer(variant, p, x, mask, reverse, **kwargs)
            return jnp.sum(ys * cots[0]), ys

        want = jax.value_and_grad(functools.partial(loss, nets.lstm_layer), (0, 1), has_aux=True)(params, xs)
        for steps in (None, 6):
            fast = functools.partial(loss, fast_lstm.lstm_layer, steps=steps, unroll=unroll)
            got = jax.jit(jax.value_and_grad(fast, (0, 1), has_aux=True),
                          compiler_options=_QUICK_COMPILE)(params, xs)
            _assert_close(got, want, _RTOL64, _ATOL64, f"{variant} unroll={unroll} reverse={reverse} steps={steps}")


def test_unroll_must_be_a_positive_int():
    args = ("V", _params("V", 9, np.float32), _data(9, np.float32)[0])
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="unroll must be a positive int"):
            fast_lstm.lstm_layer(*args, unroll=bad)


def test_float32_matches_autodiff_and_keeps_dtype():
    """float32 in, float32 out (values and gradients); equal to autodiff up to float32 round-off.

    FGR, as it has every tensor of every variant (p and Rg included).
    """
    variant = "FGR"
    params = _params(variant, 5, np.float32)
    xs, cots = _data(6, np.float32)
    mask = jnp.asarray(_MASK, jnp.float32)
    got = _fast(variant, params, xs, cots, mask)
    want = _reference(variant, params, xs, cots, mask)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(got))
    # ~T * N accumulated float32 round-offs of O(1) terms
    _assert_close(got, want, 2e-5, 2e-6, variant)


def test_mask_gets_no_gradient(x64):
    params = _params("V", 7)
    xs, cots = _data(8)

    def loss(layer, m):
        return jnp.sum(layer("V", params, xs, m, False) * cots[0])

    for layer in (nets.lstm_layer, fast_lstm.lstm_layer):
        np.testing.assert_array_equal(jax.grad(functools.partial(loss, layer))(jnp.asarray(_MASK)), 0.0)


@pytest.mark.parametrize("change, message", [
    (lambda v, p, x, m: ("LSTM", p, x, m), "unknown variant"),
    (lambda v, p, x, m: (v, {k: a for k, a in p.items() if k != "p"}, x, m), "need the keys"),
    (lambda v, p, x, m: (v, {**p, "b": p["b"][:, :-1]}, x, m), "parameter b has shape"),
    (lambda v, p, x, m: (v, p, x[:, :-1], m), "parameter W has shape"),
    (lambda v, p, x, m: (v, p, x[None], m), "xs must be float"),
    (lambda v, p, x, m: (v, p, x, m[:-1]), "mask must be float"),
])
def test_bad_arguments_are_named(change, message):
    args = ("V", _params("V", 9, np.float32), _data(9, np.float32)[0], jnp.asarray(_MASK, jnp.float32))
    with pytest.raises(ValueError, match=message):
        fast_lstm.lstm_layer(*change(*args))


def test_mixed_cell_equals_each_variants_own_layer_under_vmap(x64):
    """The eight mixable variants as one vmapped batch of the mixed cell (V's layout, per-row switches): outputs
    and the gradients of the variant's own parameters equal autodiff of the variant's own layer; the
    gradients of the entries a variant lacks are zero except NP's peepholes (which the trainer masks)."""
    variants = cells.MIXABLE
    own = [_params(v, 40 + j) for j, v in enumerate(variants)]
    mixed = [cells.to_mixed(v, {k: np.asarray(x) for k, x in p.items()}) for v, p in zip(variants, own)]
    switches = jnp.asarray(np.stack([cells.switches(v, np.float64) for v in variants]))
    xs, cots = _data(41)
    mask = jnp.asarray(_MASK)
    mode = (True, True)
    cot = cots[_MODES.index(mode)]

    def program(p, sw):
        def loss(p, x):
            ys = fast_lstm.lstm_layer("V", p, x, mask, reverse=True, unroll=2, switches=sw)
            return jnp.sum(ys * cot), ys
        (_, ys), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, xs)
        return ys, grads

    stack = functools.partial(jax.tree_util.tree_map, lambda *a: jnp.stack(a))
    ys, (grads, dxs) = jax.jit(jax.vmap(program), compiler_options=_QUICK_COMPILE)(stack(*mixed), switches)
    for j, v in enumerate(variants):
        want_ys, (want_p, want_x) = _reference(v, own[j], xs, cots, mask)[_MODES.index(mode)]
        got_p = {k: np.asarray(g[j]) for k, g in grads.items()}
        _assert_close((ys[j], (cells.from_mixed(v, got_p), dxs[j])), (want_ys, (want_p, want_x)), _RTOL64,
                      _ATOL64, v)
        ones = cells.to_mixed(v, {k: np.ones_like(np.asarray(x)) for k, x in own[j].items()})
        for k in got_p:
            foreign = got_p[k][ones[k] == 0]
            if v == "NP" and k == "p":
                assert np.max(np.abs(foreign)) > 1e-3
            else:
                assert np.all(foreign == 0), (v, k)


def _bf16(a):
    """a rounded to bfloat16 (to nearest, ties to even), back in float64."""
    return np.asarray(a, np.float64).astype(jnp.bfloat16).astype(np.float64)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _hand_bptt_rounded(params, xs, cot):
    """The vanilla layer (V) and the gradients of <cot, ys>, stepped by hand in float64 numpy, with the
    recurrent products taking bfloat16-rounded operands: forward round(y_{t−1}) · round(R), backward
    round(R) · round(δā_t). Weight gradients are sums over steps of the unrounded values (as the layer's
    products after its loops)."""
    w, r, b, p = (np.asarray(params[k], np.float64) for k in ("W", "R", "b", "p"))
    xs, cot = np.asarray(xs, np.float64), np.asarray(cot, np.float64)
    t_len, n = cot.shape
    r2 = _bf16(r.reshape(n, 4 * n))
    y, c = np.zeros(n), np.zeros(n)
    ys, cs, gates = [], [], []
    for t in range(t_len):
        a = np.einsum("m,mgn->gn", xs[t], w) + b + (_bf16(y) @ r2).reshape(4, n)
        c_prev = c
        z = np.tanh(a[0])
        i = _sigmoid(a[1] + p[0] * c_prev)
        f = _sigmoid(a[2] + p[1] * c_prev)
        c = z * i + c_prev * f
        o = _sigmoid(a[3] + p[2] * c)
        y = np.tanh(c) * o
        ys.append(y), cs.append(c), gates.append((z, i, f, o))
    grads = {k: np.zeros_like(v) for k, v in (("W", w), ("R", r), ("b", b), ("p", p))}
    dxs = np.zeros_like(xs)
    dy_rec, dc_next = np.zeros(n), np.zeros(n)
    for t in reversed(range(t_len)):
        z, i, f, o = gates[t]
        c, c_prev = cs[t], cs[t - 1] if t else np.zeros(n)
        y_prev = ys[t - 1] if t else np.zeros(n)
        dy = cot[t] + dy_rec
        da_o = dy * np.tanh(c) * o * (1 - o)
        dc = dc_next + dy * o * (1 - np.tanh(c) ** 2) + da_o * p[2]
        da_z = dc * i * (1 - z * z)
        da_i = dc * z * i * (1 - i)
        da_f = dc * c_prev * f * (1 - f)
        dc_next = dc * f + da_i * p[0] + da_f * p[1]
        da = np.stack([da_z, da_i, da_f, da_o])
        dy_rec = r2 @ _bf16(da.reshape(-1))
        grads["W"] += np.einsum("m,gn->mgn", xs[t], da)
        grads["R"] += np.einsum("k,gn->kgn", y_prev, da)
        grads["b"] += da
        grads["p"] += np.stack([da_i * c_prev, da_f * c_prev, da_o * c])
        dxs[t] = np.einsum("mgn,gn->m", w, da)
    return np.stack(ys), grads, dxs


def test_bfloat16_recurrent_products_equal_a_hand_stepped_bptt(x64):
    """recurrent_dtype=bfloat16 in a float64 layer: outputs and gradients equal the hand-stepped loop that
    rounds the same operands (to float64 round-off), and differ from the unrounded layer by bfloat16's
    rounding (so the rounding does happen). Under vmap and with unrolled loops alike."""
    n = 6
    params = _params("V", 21, n=n)
    xs = jnp.asarray(np.random.default_rng(22).normal(size=(_T, _M)))
    cot = jnp.asarray(np.random.default_rng(23).normal(size=(_T, n)))
    want_ys, want_grads, want_dxs = _hand_bptt_rounded(params, xs, cot)

    def loss(p, x, unroll, rdt):
        ys = fast_lstm.lstm_layer("V", p, x, unroll=unroll, recurrent_dtype=rdt)
        return jnp.sum(ys * cot), ys

    for unroll in (1, 4):
        (_, ys), (grads, dxs) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs, unroll,
                                                                                        jnp.bfloat16)
        assert ys.dtype == jnp.float64 and grads["R"].dtype == jnp.float64
        np.testing.assert_allclose(ys, want_ys, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(dxs, want_dxs, rtol=1e-10, atol=1e-13)
        for k, g in grads.items():
            np.testing.assert_allclose(g, want_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)
    # two trials under vmap: each equals its own hand-stepped loop
    other = _params("V", 24, n=n)
    batched = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, other)
    (_, ys2), (grads2, _) = jax.vmap(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                                     in_axes=(0, None, None, None))(batched, xs, 1, jnp.bfloat16)
    other_ys, other_grads, _ = _hand_bptt_rounded(other, xs, cot)
    np.testing.assert_allclose(ys2, np.stack([want_ys, other_ys]), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grads2["R"], np.stack([want_grads["R"], other_grads["R"]]), rtol=1e-10, atol=1e-13)
    # and it is not the unrounded layer: bfloat16 keeps 8 significant bits
    (_, exact_ys), (exact_grads, _) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs, 1, None)
    gap = np.max(np.abs(np.asarray(exact_ys) - want_ys))
    assert 1e-6 < gap < 2e-2, gap
    assert 1e-6 < np.max(np.abs(exact_grads["R"] - want_grads["R"])) / np.max(np.abs(want_grads["R"])) < 5e-2


def _hand_bptt_rounded_cifg(params, xs, cot, keep):
    """CIFG (gates z, i, o; f = 1 − i; peepholes i, o) with a mask, stepped by hand in float64 numpy with the
    recurrent products' operands rounded to bfloat16 as in `_hand_bptt_rounded`. A masked step keeps the state,
    outputs 0 and passes the state's deltas through."""
    w, r, b, p = (np.asarray(params[k], np.float64) for k in ("W", "R", "b", "p"))
    xs, cot = np.asarray(xs, np.float64), np.asarray(cot, np.float64)
    t_len, n = cot.shape
    r2 = _bf16(r.reshape(n, 3 * n))
    y, c = np.zeros(n), np.zeros(n)
    ys, steps = [], {}
    for t in range(t_len):
        if not keep[t]:
            ys.append(np.zeros(n))
            continue
        y_prev, c_prev = y, c
        a = np.einsum("m,mgn->gn", xs[t], w) + b + (_bf16(y_prev) @ r2).reshape(3, n)
        z = np.tanh(a[0])
        i = _sigmoid(a[1] + p[0] * c_prev)
        c = z * i + c_prev * (1 - i)
        o = _sigmoid(a[2] + p[1] * c)
        y = np.tanh(c) * o
        ys.append(y)
        steps[t] = (y_prev, c_prev, c, z, i, o)
    grads = {k: np.zeros_like(v) for k, v in (("W", w), ("R", r), ("b", b), ("p", p))}
    dxs = np.zeros_like(xs)
    dy_rec, dc_next = np.zeros(n), np.zeros(n)
    for t in reversed(range(t_len)):
        if t not in steps:
            continue  # the deltas pass through a masked step unchanged
        y_prev, c_prev, c, z, i, o = steps[t]
        dy = cot[t] + dy_rec
        da_o = dy * np.tanh(c) * o * (1 - o)
        dc = dc_next + dy * o * (1 - np.tanh(c) ** 2) + da_o * p[1]
        da_z = dc * i * (1 - z * z)
        da_i = dc * (z - c_prev) * i * (1 - i)  # c = z i + c_prev (1 − i)
        dc_next = dc * (1 - i) + da_i * p[0]
        da = np.stack([da_z, da_i, da_o])
        dy_rec = r2 @ _bf16(da.reshape(-1))
        grads["W"] += np.einsum("m,gn->mgn", xs[t], da)
        grads["R"] += np.einsum("k,gn->kgn", y_prev, da)
        grads["b"] += da
        grads["p"] += np.stack([da_i * c_prev, da_o * c])
        dxs[t] = np.einsum("mgn,gn->m", w, da)
    return np.stack(ys), grads, dxs


@pytest.mark.parametrize("reverse", [False, True])
def test_bfloat16_recurrent_products_of_a_masked_cifg_layer_equal_a_hand_stepped_bptt(x64, reverse):
    """The rounded products outside V's four-gate layout, through padding: CIFG's three gates (f = 1 − i) on the
    masked sequence, forward and reversed, against the hand-stepped rounded loop (to float64 round-off)."""
    n = 5
    params = _params("CIFG", 41, n=n)
    xs = jnp.asarray(np.random.default_rng(42).normal(size=(_T, _M)))
    cot = jnp.asarray(np.random.default_rng(43).normal(size=(_T, n)))
    keep = _MASK > 0
    flip = (lambda a: np.asarray(a)[::-1]) if reverse else np.asarray
    want_ys, want_grads, want_dxs = _hand_bptt_rounded_cifg(params, flip(xs), flip(cot), flip(keep))

    def loss(p, x):
        ys = fast_lstm.lstm_layer("CIFG", p, x, jnp.asarray(_MASK), reverse=reverse, recurrent_dtype=jnp.bfloat16)
        return jnp.sum(ys * cot), ys

    (_, ys), (grads, dxs) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
    np.testing.assert_allclose(ys, flip(want_ys), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dxs, flip(want_dxs), rtol=1e-10, atol=1e-13)
    for k, g in grads.items():
        np.testing.assert_allclose(g, want_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)
    # the rounding happens: the unrounded layer is further off than round-off
    exact = fast_lstm.lstm_layer("CIFG", params, xs, jnp.asarray(_MASK), reverse=reverse)
    assert np.max(np.abs(np.asarray(exact) - flip(want_ys))) > 1e-6


@pytest.mark.parametrize("variant", ["FGR", "NOAF", "CIFG"])
def test_bfloat16_recurrent_products_stay_near_float32_for_every_layout(variant):
    """Every variant's loops (FGR's gate recurrence included) take the bfloat16 path: outputs and gradients
    move from the float32 layer's by bfloat16's relative precision (2^-8), not more, and not zero."""
    params = _params(variant, 31, np.float32, n=8, std=0.3)
    xs, cots = _data(32, np.float32)
    cot = jnp.asarray(np.random.default_rng(33).normal(size=(_T, 8)).astype(np.float32))
    mask = jnp.asarray(_MASK, jnp.float32)

    def run(rdt):
        def loss(p):
            ys = fast_lstm.lstm_layer(variant, p, xs, mask, recurrent_dtype=rdt)
            return jnp.sum(ys * cot), ys
        (_, ys), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return ys, grads

    ys32, g32 = run(None)
    ys16, g16 = run(jnp.bfloat16)
    assert ys16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in g16.values())
    gap = float(jnp.max(jnp.abs(ys16 - ys32)))
    assert 1e-6 < gap < 2 ** -8 * 4, gap
    for k in g32:
        rel = float(jnp.max(jnp.abs(g16[k] - g32[k])) / jnp.max(jnp.abs(g32[k])))
        assert 1e-7 < rel < 2 ** -8 * 8, (k, rel)


@pytest.mark.parametrize("bad", [jnp.float64, jnp.int8, "float16x"])
def test_recurrent_dtype_must_be_a_float_no_wider_than_the_layer(bad):
    args = ("V", _params("V", 9, np.float32), _data(9, np.float32)[0])
    with pytest.raises(ValueError, match="recurrent_dtype must be None or a float dtype no wider than the layer's "
                                         "float32"):
        fast_lstm.lstm_layer(*args, recurrent_dtype=bad)
