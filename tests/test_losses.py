"""Tests of masked cross-entropy and Bernoulli NLL against numpy loops, closed forms and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from odyssey import losses

_cross_entropy = jax.jit(losses.framewise_cross_entropy)
_bernoulli_nll = jax.jit(losses.bernoulli_nll)


def _ce_case(rng, frames=9, classes=7, valid=6):
    """Logits, labels with out-of-range values at padded frames, and a right-padded mask."""
    logits = rng.normal(size=(frames, classes)) * 3.0
    labels = rng.integers(0, classes, size=frames)
    labels[valid:] = np.resize([-1, classes + 5, 2], frames - valid)
    mask = (np.arange(frames) < valid).astype(np.float64)
    return logits, labels, mask


def _ce_reference(logits, labels, mask):
    """Sum over valid frames of log-sum-exp minus the target logit, one frame at a time."""
    return sum(scipy.special.logsumexp(logits[t]) - logits[t, labels[t]]
               for t in range(len(labels)) if mask[t] > 0)


def _bernoulli_case(rng, frames=8, units=88, valid=5):
    logits = rng.normal(size=(frames, units)) * 4.0
    targets = (rng.uniform(size=(frames, units)) < 0.2).astype(np.float64)
    mask = (np.arange(frames) < valid).astype(np.float64)
    return logits, targets, mask


def _bernoulli_reference(logits, targets, mask):
    """-[y log p + (1 - y) log(1 - p)] with p = 1 / (1 + e^-x), written out in numpy."""
    p = 1.0 / (1.0 + np.exp(-logits))
    per_unit = -(targets * np.log(p) + (1.0 - targets) * np.log(1.0 - p))
    return float(np.sum(per_unit.sum(axis=1) * mask))


def test_cross_entropy_equals_a_loop_over_frames(x64):
    logits, labels, mask = _ce_case(np.random.default_rng(0))
    got = _cross_entropy(logits, labels, mask)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), _ce_reference(logits, labels, mask), rtol=1e-12)


def test_bernoulli_nll_equals_the_written_out_likelihood(x64):
    # |logits| stays below ~20 here, where the naive formula is still accurate in float64.
    logits, targets, mask = _bernoulli_case(np.random.default_rng(1))
    got = _bernoulli_nll(logits, targets, mask)
    np.testing.assert_allclose(float(got), _bernoulli_reference(logits, targets, mask), rtol=1e-12)


def test_bernoulli_nll_is_exact_and_finite_for_huge_logits():
    # Closed form: a unit with the right sign costs ~0, one with the wrong sign costs |x|.
    logits = np.array([[1e4, -1e4, 1e4, -1e4, 80.0, -80.0]], dtype=np.float32)
    targets = np.array([[1, 0, 0, 1, 0, 1]], dtype=np.float32)
    mask = np.ones(1, np.float32)
    value, grad = jax.jit(jax.value_and_grad(losses.bernoulli_nll))(logits, targets, mask)
    np.testing.assert_allclose(float(value), 1e4 + 1e4 + 80.0 + 80.0, rtol=1e-6)
    # d/dx = sigmoid(x) - y.
    np.testing.assert_allclose(np.asarray(grad), [[0.0, 0.0, 1.0, -1.0, 1.0, -1.0]], atol=1e-6)


def test_cross_entropy_is_finite_for_huge_logits():
    logits = np.array([[1e4, -1e4, 0.0], [0.0, 0.0, 3e4]], dtype=np.float32)
    value, grad = jax.jit(jax.value_and_grad(losses.framewise_cross_entropy))(
        logits, np.array([1, 2]), np.ones(2, np.float32))
    # Frame 0 misses by 2e4; frame 1 is certain: log-softmax is exact there.
    np.testing.assert_allclose(float(value), 2e4, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)


def _central_differences(fn, x, eps=1e-5):
    """(f(x + eps e_i) - f(x - eps e_i)) / 2 eps; eps balances O(eps^2) truncation against roundoff / eps."""
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = eps
        numeric[idx] = (float(fn(x + step)) - float(fn(x - step))) / (2 * eps)
    return numeric


def test_gradients_match_central_differences(x64):
    rng = np.random.default_rng(2)
    logits, labels, mask = _ce_case(rng, frames=5, classes=4, valid=4)
    ce = jax.jit(lambda x: losses.framewise_cross_entropy(x, labels, mask))
    grad = np.asarray(jax.grad(ce)(logits))
    np.testing.assert_allclose(grad, _central_differences(ce, logits), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(grad[4], 0.0)  # the padded frame

    logits, targets, mask = _bernoulli_case(rng, frames=4, units=6, valid=3)
    nll = jax.jit(lambda x: losses.bernoulli_nll(x, targets, mask))
    grad = np.asarray(jax.grad(nll)(logits))
    np.testing.assert_allclose(grad, _central_differences(nll, logits), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(grad[3], 0.0)


def test_vmap_over_sequences_equals_the_references(x64):
    rng = np.random.default_rng(3)
    cases = [_ce_case(rng, valid=v) for v in (9, 6, 1)]
    got = jax.jit(jax.vmap(losses.framewise_cross_entropy))(*(np.stack(a) for a in zip(*cases)))
    np.testing.assert_allclose(np.asarray(got), [_ce_reference(*c) for c in cases], rtol=1e-12)

    cases = [_bernoulli_case(rng, valid=v) for v in (8, 3, 0)]
    got = jax.jit(jax.vmap(losses.bernoulli_nll))(*(np.stack(a) for a in zip(*cases)))
    np.testing.assert_allclose(np.asarray(got), [_bernoulli_reference(*c) for c in cases], rtol=1e-12)


@pytest.mark.parametrize("fn, args, message", [
    (losses.framewise_cross_entropy, (np.zeros((2, 5, 3)), np.zeros(5, int), np.ones(5)), "unbatched"),
    (losses.framewise_cross_entropy, (np.zeros((5, 3)), np.zeros(4, int), np.ones(5)), "labels"),
    (losses.framewise_cross_entropy, (np.zeros((5, 3)), np.zeros(5, int), np.ones((5, 1))), "mask"),
    (losses.bernoulli_nll, (np.zeros((5, 88)), np.zeros((5, 87)), np.ones(5)), "targets"),
    (losses.bernoulli_nll, (np.zeros((5, 88)), np.zeros((5, 88)), np.ones(6)), "mask"),
])
def test_rejects_bad_shapes(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*args)


def test_a_valid_frames_label_out_of_range_is_refused_and_padding_may_hold_any():
    """Concrete labels: one outside [0, K) at a valid frame is refused (it matched no class and silently added 0);
    at padded frames any value is fine, and the loss is the loop over the valid frames."""
    logits = np.random.default_rng(0).normal(size=(4, 3))
    for label in (3, -1, 7):
        with pytest.raises(ValueError, match=rf"in \[0, 3\); frame 2 has {label} \(1 such frames\)"):
            losses.framewise_cross_entropy(logits, np.array([0, 1, label, 2]), np.ones(4))
    got = losses.framewise_cross_entropy(logits, np.array([0, 1, 7, -1]), np.array([1.0, 1.0, 0.0, 0.0]))
    want = sum(scipy.special.logsumexp(logits[t]) - logits[t, y] for t, y in ((0, 0), (1, 1)))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # traced (under jit) the values are not seen: the frame adds nothing, as documented
    traced = jax.jit(losses.framewise_cross_entropy)(logits, np.array([0, 1, 7, 2]), np.ones(4))
    want = sum(scipy.special.logsumexp(logits[t]) - logits[t, y] for t, y in ((0, 0), (1, 1), (3, 2)))
    np.testing.assert_allclose(float(traced), want, rtol=1e-6)
