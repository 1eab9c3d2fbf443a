"""Tests of layers over time and the networks: gradients, masks, padding of the hidden size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odyssey import cells, nets


# Compile time dominates these small problems; XLA's backend optimisation level changes speed, not the maths.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def _directional_fd(fn, params, direction, eps=1e-4):
    """The derivative of fn along direction by the five-point central stencil (error O(eps^4))."""
    def at(h):
        return fn(jax.tree_util.tree_map(lambda p, d: p + h * d, params, direction))
    return (8 * (at(eps) - at(-eps)) - (at(2 * eps) - at(-2 * eps))) / (12 * eps)


def _random_like(seed, tree):
    # numpy's generator: a jax.random draw compiles a program per tensor shape (seconds over a test).
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), tree)


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("variant", cells.VARIANTS)
@pytest.mark.parametrize("nonzero_start", [False, True])
def test_gradients_match_finite_differences(variant, nonzero_start, x64):
    m, n, t = 3, 4, 6
    params = cells.init(jax.random.PRNGKey(3), variant, m, n, std=0.5, dtype=jnp.float64)
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(t, m)))
    weights = jnp.asarray(rng.normal(size=(t, n)))
    carry0 = None
    if nonzero_start:
        carry0 = (jnp.asarray(rng.normal(size=n)), jnp.asarray(rng.normal(size=n)))
        if variant == "FGR":
            carry0 = carry0 + (jnp.asarray(rng.uniform(size=(3, n))),)

    def loss_fn(p):
        return jnp.sum(weights * nets.lstm_layer(variant, p, xs, carry0=carry0))

    # Compiled once each: the finite differences call the loss 2 x (3 + tensors) times.
    loss = jax.jit(loss_fn, compiler_options=_QUICK_COMPILE)
    grad = jax.jit(jax.grad(loss_fn), compiler_options=_QUICK_COMPILE)(params)
    for seed in range(3):
        direction = _random_like(seed, params)
        fd = _directional_fd(loss, params, direction)
        analytic = _dot(grad, direction)
        assert abs(analytic - fd) <= 1e-8 * abs(fd), (variant, float(analytic), float(fd))
    # Each tensor on its own, so that no wrong block can hide behind another's error.
    for name in params:
        direction = jax.tree_util.tree_map(jnp.zeros_like, params)
        direction[name] = jnp.asarray(np.random.default_rng(9).normal(size=params[name].shape))
        fd = _directional_fd(loss, params, direction)
        assert abs(_dot(grad, direction) - fd) <= 1e-8 * abs(fd), (variant, name)


@pytest.mark.parametrize("variant", cells.VARIANTS)
@pytest.mark.parametrize("kind", nets.NET_KINDS)
def test_padded_sequence_equals_unpadded(variant, kind, x64):
    m, n, k, t, pad = 3, 4, 5, 7, 5
    params = nets.init_net(jax.random.PRNGKey(4), variant, kind, m, n, k, std=0.5, dtype=jnp.float64)
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.normal(size=(t, m)))
    padded = jnp.concatenate([xs, jnp.asarray(rng.normal(size=(pad, m)))])  # garbage in the padding
    mask = jnp.concatenate([jnp.ones(t), jnp.zeros(pad)])
    weights = jnp.asarray(rng.normal(size=(t, k)))

    def loss_plain(p):
        return jnp.sum(weights * nets.apply_net(variant, kind, p, xs))

    def loss_padded(p):
        return jnp.sum(weights * nets.apply_net(variant, kind, p, padded, mask)[:t])

    apply = jax.jit(nets.apply_net, static_argnums=(0, 1), compiler_options=_QUICK_COMPILE)
    np.testing.assert_allclose(apply(variant, kind, params, padded, mask)[:t],
                               apply(variant, kind, params, xs), atol=1e-12)
    g_plain, g_padded = (jax.jit(jax.grad(f), compiler_options=_QUICK_COMPILE)(params)
                         for f in (loss_plain, loss_padded))
    for a, b in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_padded)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    # The backward layer alone, on the padded sequence, reverses only the valid part.
    ys = nets.lstm_layer(variant, params["fwd"], padded, mask, reverse=True)
    np.testing.assert_allclose(ys[:t], nets.lstm_layer(variant, params["fwd"], xs[::-1])[::-1], atol=1e-12)
    np.testing.assert_array_equal(ys[t:], 0.0)


@pytest.mark.parametrize("variant", cells.VARIANTS)
def test_hidden_padding_is_exact_with_masked_gradients(variant, x64):
    """N = 3 padded to 8: same outputs, and gradients equal on the real units and zero elsewhere once masked."""
    m, n, n_max, k, t = 2, 3, 8, 4, 5
    params = nets.init_net(jax.random.PRNGKey(5), variant, "bi", m, n, k, std=0.5, dtype=jnp.float64)
    padded = nets.pad_hidden(params, n, n_max, "bi")
    xs = jnp.asarray(np.random.default_rng(4).normal(size=(t, m)))
    apply = jax.jit(nets.apply_net, static_argnums=(0, 1), compiler_options=_QUICK_COMPILE)
    np.testing.assert_allclose(apply(variant, "bi", padded, xs), apply(variant, "bi", params, xs), atol=1e-12)

    def loss(p):
        return jnp.sum(jnp.sin(nets.apply_net(variant, "bi", p, xs)))

    mask = nets.hidden_mask(variant, "bi", m, n, n_max, k, jnp.float64)
    grad = jax.jit(jax.grad(loss), compiler_options=_QUICK_COMPILE)
    g_small = grad(params)
    g_big = jax.tree_util.tree_map(jnp.multiply, grad(padded), mask)
    for a, b in zip(jax.tree_util.tree_leaves(nets.pad_hidden(g_small, n, n_max, "bi")),
                    jax.tree_util.tree_leaves(g_big)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    back = nets.unpad_hidden(padded, n, n_max, "bi")
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_fgr_padding_needs_the_mask(x64):
    """Without the mask the padded units' gates (σ(0) = 0.5) give the gate-recurrent weights a gradient."""
    params = nets.init_net(jax.random.PRNGKey(6), "FGR", "uni", 2, 3, 2, dtype=jnp.float64)
    padded = nets.pad_hidden(params, 3, 5, "uni")
    xs = jnp.ones((4, 2))
    grad = jax.grad(lambda p: jnp.sum(nets.apply_net("FGR", "uni", p, xs)))(padded)
    from_padded_units = grad["fwd"]["Rg"][:, 3:, :, :3]
    assert float(jnp.abs(from_padded_units).max()) > 1e-4


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown net kind 'tri'"):
        nets.init_net(jax.random.PRNGKey(0), "V", "tri", 2, 3, 4)
    uni = nets.init_net(jax.random.PRNGKey(0), "V", "uni", 2, 3, 4)
    with pytest.raises(ValueError, match="unknown net kind 'tri'"):  # it ran the one-direction net
        nets.apply_net("V", "tri", uni, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"a 'bi' net's params hold \['bwd', 'fwd', 'out'\], got \['fwd', 'out'\]"):
        nets.apply_net("V", "bi", uni, jnp.ones((5, 2)))  # a bare KeyError 'bwd'
    bi = nets.init_net(jax.random.PRNGKey(0), "V", "bi", 2, 3, 4)
    with pytest.raises(ValueError, match=r"a 'uni' net's params hold \['fwd', 'out'\], got \['bwd', 'fwd', 'out'\]"):
        nets.apply_net("V", "uni", bi, jnp.ones((5, 2)))  # its backward layer went unused


@pytest.mark.parametrize("kind", nets.NET_KINDS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_steps_bound_the_sequence_with_autodiff_too(kind, with_mask, x64):
    """steps = 4 of 7: the valid rows are those of the sequence cut at step 4, for the hand-written backward pass
    and for autodiff (which ignored steps, so its backward layer read the padding), values and gradients."""
    m, n, k, t, steps = 2, 3, 4, 7, 4
    params = nets.init_net(jax.random.PRNGKey(7), "NP", kind, m, n, k, std=0.5, dtype=jnp.float64)
    xs = jnp.asarray(np.random.default_rng(8).normal(size=(t, m)))
    mask = jnp.asarray([1.0] * 6 + [0.0]) if with_mask else None
    weights = jnp.asarray(np.random.default_rng(9).normal(size=(steps, k)))

    def loss(p, autodiff, bounded):
        if bounded:
            out = nets.apply_net("NP", kind, p, xs, mask, autodiff=autodiff, steps=steps)[:steps]
        else:
            out = nets.apply_net("NP", kind, p, xs[:steps], autodiff=autodiff)
        return jnp.sum(weights * out), out

    (_, want_out), want_grad = jax.value_and_grad(loss, has_aux=True)(params, True, False)
    for autodiff in (False, True):
        (_, got_out), got_grad = jax.value_and_grad(loss, has_aux=True)(params, autodiff, True)
        np.testing.assert_allclose(got_out, want_out, atol=1e-12, err_msg=str(autodiff))
        for a, b in zip(jax.tree_util.tree_leaves(got_grad), jax.tree_util.tree_leaves(want_grad)):
            np.testing.assert_allclose(a, b, atol=1e-12, err_msg=str(autodiff))
