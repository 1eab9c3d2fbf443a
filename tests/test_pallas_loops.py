"""The LSTM layer's loops as Pallas kernels (`odyssey.pallas_loops`, `fast_lstm.lstm_layer(loops="pallas")`).

Here they run in Pallas' interpret mode (a CPU), which executes the kernels' own code step by step: each
trial's step range, the masked loads of padded units, both forms (R held, R read in chunks with the state
passed through the output arrays), the mixed cell's switches, FGR's gate recurrence. Oracles: autodiff of the plain scan
`odyssey.nets.lstm_layer` (float64), a hand-stepped float64 loop, `fast_lstm`'s XLA loops at the same
bfloat16 rounding, and the trainer against the paper's protocol stepped one sequence at a time
(`tests/test_train.py`'s reference loop).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import make_splits, reference_run, run_trainer

from odyssey import cells, fast_lstm, nets, pallas_loops, train

T, M = 11, 5


def _trials(k, n, seed, dtype=np.float64, variant="V"):
    ps = [cells.init(key, variant, M, n) for key in jax.random.split(jax.random.PRNGKey(seed), k)]
    return {name: jnp.stack([p[name] for p in ps]).astype(dtype) for name in ps[0]}


def _masks(kind, k, rng):
    if kind is None:
        return None
    if kind == "lengths":  # padding at the end, one trial empty, one whole
        lengths = np.array([T, 4, 0, 1])[:k]
        return (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
    return (rng.random((k, T)) > 0.35).astype(np.float64)  # masked steps anywhere


def _values_and_grads(layer, params, xs, mask, sw, cot):
    def one(p, x, m, s, c):
        def loss(p, x):
            y = layer(p, x, m, s)
            return jnp.sum(y * c), y
        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x)
    axes = (0, 0, None if mask is None else 0, None if sw is None else 0, 0)
    (_, ys), grads = jax.jit(jax.vmap(one, in_axes=axes))(params, xs, mask, sw, cot)
    return ys, grads


# (N, switches of the variant each trial computes, mask, reverse, steps): N = 8 holds R (P = 8), N = 5 and
# 13 / 9 are masked loads inside P = 8 / 16, N = 70 reads R in chunks (P = 128, its last chunks partly and
# wholly past N).
CASES = [(8, None, None, False, None), (5, ("CIFG", "NIG", "NOAF"), "lengths", False, 9),
         (13, ("NOG", "NIAF", "NP"), "holes", True, None), (9, ("V", "NFG", "CIFG"), "lengths", True, 10),
         (70, None, "lengths", False, None), (70, ("NOAF", "CIFG", "NFG"), "holes", True, 9)]


@pytest.mark.parametrize("n,variants,mask_kind,reverse,steps", CASES)
def test_pallas_loops_equal_autodiff_of_the_plain_scan(n, variants, mask_kind, reverse, steps, x64):
    """Outputs and the gradients of all parameters and inputs, float64, trials vmapped, against autodiff of
    `nets.lstm_layer` (with the mask also zero from `steps` on, which is what `steps` promises)."""
    sw = None if variants is None else jnp.asarray(np.stack([cells.switches(v, np.float64) for v in variants]))
    _compare_with_the_plain_scan("V", n, sw, mask_kind, reverse, steps)


# FGR always reads R and Rg in chunks: N = 6 and 13 in P = 8 and 16, N = 40 in two chunks of 32, N = 70 in
# P = 128 (its last chunks partly and wholly past N).
@pytest.mark.parametrize("n,mask_kind,reverse,steps", [(6, None, False, None), (13, "holes", True, None),
                                                       (40, "lengths", False, 9), (70, "holes", True, 10)])
def test_pallas_loops_of_fgr_equal_autodiff_of_the_plain_scan(n, mask_kind, reverse, steps, x64):
    """FGR (the gate recurrence Rg, scaled up 3x so that it matters): as above."""
    _compare_with_the_plain_scan("FGR", n, None, mask_kind, reverse, steps)


def _compare_with_the_plain_scan(variant, n, sw, mask_kind, reverse, steps):
    rng = np.random.default_rng(n)
    k = 3
    params = _trials(k, n, seed=n, variant=variant)
    if variant == "FGR":
        params["Rg"] = 3.0 * params["Rg"]
    xs = jnp.asarray(rng.normal(size=(k, T, M)))
    cot = jnp.asarray(rng.normal(size=(k, T, n)))
    mask = _masks(mask_kind, k, rng)
    if steps is not None:  # the layer's promise: padding from step `steps` on (in either direction)
        mask = (np.ones((k, T)) if mask is None else mask) * (np.arange(T) < steps)[None]

    def pallas(p, x, m, s):
        return fast_lstm.lstm_layer(variant, p, x, m, reverse=reverse, steps=steps, switches=s, loops="pallas")

    def plain(p, x, m, s):
        return nets.lstm_layer(variant, p, x, m, reverse=reverse, switches=s)

    got_y, got_g = _values_and_grads(pallas, params, xs, mask, sw, cot)
    want_y, want_g = _values_and_grads(plain, params, xs, mask, sw, cot)
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-13)
    for name in params:
        scale = float(jnp.abs(want_g[0][name]).max())
        np.testing.assert_allclose(got_g[0][name], want_g[0][name], rtol=0, atol=1e-12 * max(scale, 1.0),
                                   err_msg=name)
    np.testing.assert_allclose(got_g[1], want_g[1], rtol=0, atol=1e-12)
    # Not a vacuous comparison: the outputs and gradients are far from zero.
    assert float(jnp.abs(want_y).max()) > 1e-2 and float(jnp.abs(want_g[0]["R"]).max()) > 1e-3

def test_pallas_forward_equals_a_hand_stepped_loop(x64):
    """V's cell, R read in chunks (N = 70): the outputs against DESIGN §1's step written out in numpy."""
    rng = np.random.default_rng(3)
    n = 70
    params = _trials(1, n, seed=4)
    p = {k: np.asarray(v[0]) for k, v in params.items()}
    xs = rng.normal(size=(T, M))
    length = 7
    mask = (np.arange(T) < length).astype(np.float64)
    got = np.asarray(fast_lstm.lstm_layer("V", {k: v[0] for k, v in params.items()}, jnp.asarray(xs),
                                          jnp.asarray(mask), loops="pallas"))
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    y, c = np.zeros(n), np.zeros(n)
    want = np.zeros((T, n))
    for t in range(length):
        a = np.einsum("m,mgn->gn", xs[t], p["W"]) + p["b"] + np.einsum("k,kgn->gn", y, p["R"])
        z, i, f = np.tanh(a[0]), sig(a[1] + p["p"][0] * c), sig(a[2] + p["p"][1] * c)
        c = z * i + c * f
        y = np.tanh(c) * sig(a[3] + p["p"][2] * c)
        want[t] = y
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [6, 40, 70])
def test_pallas_loops_round_like_the_xla_loops_in_bfloat16(n):
    """recurrent_dtype=bfloat16, float32: the same roundings as `fast_lstm`'s XLA loops (R and each step's
    vector to bfloat16, sums in float32); only the order of the sums differs. With bfloat16 every width here
    holds R, its products as tensor-core dots (`pallas_loops.holds`; N = 70: P = 128, which float32 reads in
    chunks)."""
    assert pallas_loops.holds(pallas_loops._pow2(n), jnp.bfloat16) == (True, True)
    rng = np.random.default_rng(n)
    k = 3
    params = _trials(k, n, seed=n, dtype=np.float32)
    xs = jnp.asarray(rng.normal(size=(k, T, M)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(k, T, n)), jnp.float32)
    mask = jnp.asarray(_masks("lengths", k, rng), jnp.float32)
    sw = jnp.asarray(np.stack([cells.switches(v) for v in ("V", "CIFG", "NOAF")]))
    out = {}
    for loops in ("xla", "pallas"):
        def layer(p, x, m, s, loops=loops):
            return fast_lstm.lstm_layer("V", p, x, m, switches=s, recurrent_dtype=jnp.bfloat16, loops=loops)
        out[loops] = _values_and_grads(layer, params, xs, mask, sw, cot)
    def worst(got, want):  # the largest difference over all outputs, relative to each one's scale
        return max(float(jnp.abs(a - b).max()) / max(1.0, float(jnp.abs(b).max()))
                   for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)))
    assert worst(out["pallas"], out["xla"]) < 1e-6  # measured 7e-8, 9e-8, 6e-8 (products as dots; 1.4e-7 before)
    # Not the float32 layer: without the rounding the values move 100x further (measured 1.1e-4 and 5.7e-4).
    def unrounded(p, x, m, s):
        return fast_lstm.lstm_layer("V", p, x, m, switches=s)
    assert worst(_values_and_grads(unrounded, params, xs, mask, sw, cot), out["xla"]) > 3e-5

def test_each_trial_runs_only_its_own_steps(x64):
    """`step_range` (the steps a trial's kernels loop over) against a brute-force scan of the mask and the
    bounds; and inputs past a trial's range (NaN here) do not reach its outputs."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        keep = (rng.random(T) > rng.random()).astype(np.float64)
        lo = int(rng.integers(0, T))
        hi = int(rng.integers(lo, T + 1))
        valid = [t for t in range(T) if keep[t] > 0 and lo <= t < hi]
        want = (valid[0], valid[-1] + 1) if valid else (0, 0)
        ranges, inside = pallas_loops.step_range(T, jnp.asarray(keep), (lo, hi))
        assert tuple(np.asarray(ranges)) == want
        np.testing.assert_array_equal(inside, [want[0] <= t < want[1] for t in range(T)])
    params = {k: v[0] for k, v in _trials(1, 70, seed=2).items()}
    xs = rng.normal(size=(T, M))
    mask = jnp.asarray((np.arange(T) < 8).astype(np.float64))
    clean = fast_lstm.lstm_layer("V", params, jnp.asarray(xs), mask, loops="pallas")
    xs[8:] = np.nan
    np.testing.assert_array_equal(fast_lstm.lstm_layer("V", params, jnp.asarray(xs), mask, loops="pallas"), clean)
    assert float(jnp.abs(clean).max()) > 1e-2

def test_unsupported_settings_are_refused():
    params = cells.init(jax.random.PRNGKey(0), "NIG", M, 4)
    xs = jnp.zeros((T, M))
    with pytest.raises(ValueError, match="loops='pallas' implements V, the mixed cell and FGR only, not NIG"):
        fast_lstm.lstm_layer("NIG", params, xs, loops="pallas")
    with pytest.raises(ValueError, match=r"loops must be one of \('xla', 'pallas'\), got 'triton'"):
        fast_lstm.lstm_layer("NIG", params, xs, loops="triton")
    with pytest.raises(ValueError, match="not on tpu"):
        pallas_loops.check("pallas", "V", "tpu")
    with pytest.raises(ValueError, match="autodiff=True runs the reference layer's scan"):
        nets.apply_net("V", "uni", nets.init_net(jax.random.PRNGKey(0), "V", "uni", M, 4, 3), xs, autodiff=True,
                       loops="pallas")
    with pytest.raises(ValueError, match=r"lstm_loops must be one of \('xla', 'pallas'\), got 'cuda'"):
        train.train_trials("jsb", make_splits("jsb"), [train.Trial(0, "V", 4, 1e-2, 0.5, 0.0)], max_epochs=1,
                           lstm_loops="cuda")


@pytest.mark.parametrize("task,target", [("jsb", "NOAF"), ("timit", "V"), ("jsb", "FGR")])
def test_the_trainer_with_pallas_loops_follows_the_reference_protocol(task, target, x64):
    """train_trials(lstm_loops="pallas"): the target trial, in its program (the mixed one, or FGR's) beside
    trials of other variants and sizes (padded to the bucket), on sequences of two lengths, follows the paper's
    protocol stepped one sequence at a time through autodiff of the plain scan, to float64 round-off; the
    others agree with the same run on XLA's loops."""
    splits = make_splits(task, seed=5, lengths=(3, 6))
    other = "NP" if target == "FGR" else "FGR"
    trials = [train.Trial(0, target, 4, 3e-2, 0.7, 0.3, True, task == "timit", seed=5),
              train.Trial(1, "CIFG", 6, 2e-2, 0.9, 0.1, False, False, seed=6),
              train.Trial(2, other, 3, 1e-2, 0.5, 0.2, True, False, seed=7)]
    kwargs = dict(max_epochs=3, patience=5, hidden_buckets=(6,), dtype=np.float64)
    losses, ref_losses, xla_losses = {}, [], {}
    results, curves = run_trainer(task, splits, trials, losses, lstm_loops="pallas", **kwargs)
    ref_curve, ref_best_epoch, ref_best, ref_test = reference_run(task, target, trials[0], splits, 3, 5,
                                                                  losses=ref_losses)
    np.testing.assert_allclose(curves[0], ref_curve, rtol=1e-10)
    np.testing.assert_allclose(losses[0], ref_losses, rtol=1e-10)  # (TIMIT's frame error is coarse here)
    assert results[0].best_epoch == ref_best_epoch
    np.testing.assert_allclose([results[0].val_metric, results[0].test_metric], [ref_best, ref_test], rtol=1e-10)
    xla_results, xla_curves = run_trainer(task, splits, trials, xla_losses, lstm_loops="xla", **kwargs)
    for t in trials[1:]:
        np.testing.assert_allclose(curves[t.trial_id], xla_curves[t.trial_id], rtol=1e-10)
        np.testing.assert_allclose(losses[t.trial_id], xla_losses[t.trial_id], rtol=1e-10)
        assert results[t.trial_id].epochs == xla_results[t.trial_id].epochs

