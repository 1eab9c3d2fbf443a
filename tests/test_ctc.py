"""Tests of CTC against optax, brute-force alignment sums and finite differences; best-path decoding by hand."""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from odyssey import ctc

# Eager calls would compile every small op on its own; one jitted program per shape is much faster.
_ctc_loss = jax.jit(ctc.ctc_loss, static_argnames="blank_id")


def _paddings(lengths, size):
    """float[B, size]: 1.0 from each row's length onward."""
    return (np.arange(size)[None, :] >= np.asarray(lengths)[:, None]).astype(np.float64)


def _labelled_batch(rng, dtype):
    """A batch that exercises every rule: mixed lengths, repeats, empty and just-fitting labels.

    Returns (logits, logit_paddings, labels, label_paddings) as numpy arrays; every item is feasible.
    """
    frames, classes, max_labels = 14, 6, 8
    items = [  # (valid frames, labels)
        (14, [1, 2, 3]),
        (11, [4, 4, 4]),                     # repeats need a blank between them
        (9, []),                             # empty label: all-blank path only
        (8, [1, 2, 3, 4, 5, 1, 2, 3]),       # U = T: exactly one alignment
        (6, [2, 2, 3, 3]),                   # U + repeats = T: exactly one alignment
        (1, [5]),
        (14, [3, 1, 3, 1, 5, 5, 2, 4]),
        (12, [1, 1, 2]),
    ]
    logits = rng.normal(size=(len(items), frames, classes)) * 2.0
    labels = rng.integers(1, classes, size=(len(items), max_labels))  # garbage in padded slots
    for b, (_, seq) in enumerate(items):
        labels[b, :len(seq)] = seq
    logit_paddings = _paddings([n for n, _ in items], frames)
    label_paddings = _paddings([len(s) for _, s in items], max_labels)
    return (logits.astype(dtype), logit_paddings.astype(dtype), labels.astype(np.int32),
            label_paddings.astype(dtype))


def _loss_and_grad(fn, logits, logit_paddings, labels, label_paddings, weights):
    """Per-item losses and the gradient of their weighted sum w.r.t. logits, jitted."""
    def total(x):
        loss = fn(x, logit_paddings, labels, label_paddings)
        return jnp.sum(loss * weights), loss

    grad, loss = jax.jit(jax.grad(total, has_aux=True))(logits)
    return np.asarray(loss), np.asarray(grad)


def test_matches_optax_float64(x64):
    rng = np.random.default_rng(0)
    batch = _labelled_batch(rng, np.float64)
    weights = rng.uniform(0.5, 1.5, size=batch[0].shape[0])
    ours_loss, ours_grad = _loss_and_grad(ctc.ctc_loss, *batch, weights)
    ref_loss, ref_grad = _loss_and_grad(optax.ctc_loss, *batch, weights)
    assert ours_loss.dtype == np.float64
    np.testing.assert_allclose(ours_loss, ref_loss, rtol=1e-8)
    np.testing.assert_allclose(ours_grad, ref_grad, rtol=1e-8, atol=1e-12)
    assert np.abs(ref_grad).max() > 0.1  # the comparison is not between two zero arrays


def test_matches_optax_float32():
    rng = np.random.default_rng(1)
    batch = _labelled_batch(rng, np.float32)
    weights = rng.uniform(0.5, 1.5, size=batch[0].shape[0]).astype(np.float32)
    ours_loss, ours_grad = _loss_and_grad(ctc.ctc_loss, *batch, weights)
    # optax gathers label scores with a one-hot matrix product, which GPUs run in TF32 by default.
    with jax.default_matmul_precision("highest"):
        ref_loss, ref_grad = _loss_and_grad(optax.ctc_loss, *batch, weights)
    assert ours_loss.dtype == np.float32
    np.testing.assert_allclose(ours_loss, ref_loss, rtol=1e-4)
    # Gradient entries are differences of probabilities in [-1, 1]; near-zero ones get an absolute floor.
    np.testing.assert_allclose(ours_grad, ref_grad, rtol=1e-4, atol=1e-5)


def _collapse(path, blank):
    """Merges repeats, then drops blanks."""
    merged = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
    return tuple(k for k in merged if k != blank)


def _brute_force_nll(logits, label, blank):
    """-log of the summed probability of every path over K classes that collapses to label."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    frames, classes = logits.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=frames):
        if _collapse(path, blank) == tuple(label):
            total += np.prod(probs[np.arange(frames), path])
    return -np.log(total) if total > 0 else np.inf


@pytest.mark.parametrize("blank_id", [0, 2])
def test_equals_brute_force_sum_over_alignments(x64, blank_id):
    rng = np.random.default_rng(2 + blank_id)
    frames, classes = 5, 3
    others = [k for k in range(classes) if k != blank_id]
    a, b = others
    items = [  # (valid frames, labels)
        (5, [a]), (5, [a, a]), (5, [a, b]), (5, [b, a, b]), (5, []), (5, [a, a, a]),
        (4, [b, b]), (3, [a, b, a]), (2, [b]), (1, []),
    ]
    max_labels = 3
    logits = rng.normal(size=(len(items), frames, classes)) * 1.5
    labels = np.full((len(items), max_labels), a, dtype=np.int32)
    for i, (_, seq) in enumerate(items):
        labels[i, :len(seq)] = seq
    loss = _ctc_loss(
        logits, _paddings([n for n, _ in items], frames), labels,
        _paddings([len(s) for _, s in items], max_labels), blank_id=blank_id)
    expected = [_brute_force_nll(logits[i, :n], seq, blank_id) for i, (n, seq) in enumerate(items)]
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-10)


def test_impossible_alignments_are_finite_and_large():
    rng = np.random.default_rng(4)
    frames, classes, max_labels = 6, 5, 7
    items = [  # (valid frames, labels): all impossible but the last
        (6, [1, 2, 3, 4, 1, 2, 3]), (4, [2, 2, 2]), (3, [1, 2, 3, 4]), (0, [1]), (6, [3, 3, 3, 3]), (0, []),
    ]
    logits = (rng.normal(size=(len(items), frames, classes)) * 3.0).astype(np.float32)
    labels = np.zeros((len(items), max_labels), dtype=np.int32)
    for i, (_, seq) in enumerate(items):
        labels[i, :len(seq)] = seq
    args = (_paddings([n for n, _ in items], frames).astype(np.float32), labels,
            _paddings([len(s) for _, s in items], max_labels).astype(np.float32))
    loss, grad = _loss_and_grad(ctc.ctc_loss, logits, *args, np.ones(len(items), np.float32))
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    # exp(-loss) must stand for probability 0, far below that of any real path.
    assert np.all(loss[:-1] > 1e4)
    # The empty label on zero frames is certain: loss 0, not the log-epsilon.
    assert loss[-1] == 0.0


def test_gradient_matches_central_differences(x64):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 5, 4))
    logit_paddings = _paddings([5, 4], 5)
    labels = np.array([[1, 1], [2, 3]], dtype=np.int32)
    label_paddings = np.zeros((2, 2))
    weights = np.array([0.7, 1.3])
    fn = jax.jit(lambda x: jnp.sum(ctc.ctc_loss(x, logit_paddings, labels, label_paddings) * weights))
    grad = np.asarray(jax.grad(fn)(logits))
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[idx] = eps
        numeric[idx] = (float(fn(logits + step)) - float(fn(logits - step))) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(grad[1, 4], 0.0)  # a padded frame gets no gradient


def test_padding_does_not_change_the_loss(x64):
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(1, 7, 5))
    labels = np.array([[3, 1, 1]], dtype=np.int32)
    alone = _ctc_loss(logits, np.zeros((1, 7)), labels, np.zeros((1, 3)))
    # The same item inside a wider batch: extra frames of large garbage, extra label slots whose
    # value repeats the last real label, and a padded frame in the middle of the valid ones.
    wide = rng.normal(size=(1, 10, 5)) * 50.0
    wide[0, [0, 1, 2, 4, 5, 6, 7]] = logits[0]
    frame_pad = np.array([[0, 0, 0, 1, 0, 0, 0, 0, 1, 1]], dtype=np.float64)
    wide_labels = np.array([[3, 1, 1, 1, 1]], dtype=np.int32)
    padded = _ctc_loss(wide, frame_pad, wide_labels, np.array([[0, 0, 0, 1, 1]], dtype=np.float64))
    np.testing.assert_allclose(np.asarray(padded), np.asarray(alone), rtol=1e-12)


def test_unrolling_does_not_change_the_result(x64):
    rng = np.random.default_rng(11)
    batch = _labelled_batch(rng, np.float64)  # 14 frames: unroll 4 leaves a remainder of 2
    weights = np.ones(batch[0].shape[0])
    results = [_loss_and_grad(functools.partial(ctc.ctc_loss, unroll=u), *batch, weights) for u in (1, 4)]
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-13)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-12, atol=1e-15)


def test_vmap_over_trials_equals_a_loop():
    rng = np.random.default_rng(7)
    trials, batch, frames, classes, max_labels = 3, 2, 9, 5, 3
    logits = rng.normal(size=(trials, batch, frames, classes)).astype(np.float32)
    logit_paddings = np.stack([_paddings(rng.integers(6, 10, size=batch), frames) for _ in range(trials)])
    labels = rng.integers(1, classes, size=(trials, batch, max_labels)).astype(np.int32)
    label_paddings = np.stack([_paddings(rng.integers(0, 4, size=batch), max_labels) for _ in range(trials)])
    args = (logits, logit_paddings.astype(np.float32), labels, label_paddings.astype(np.float32))
    vmapped = jax.jit(jax.vmap(ctc.ctc_loss))(*args)
    looped = np.stack([_ctc_loss(*(a[n] for a in args)) for n in range(trials)])
    np.testing.assert_allclose(np.asarray(vmapped), looped, rtol=1e-6)


def test_compiles_once_per_padded_shape():
    rng = np.random.default_rng(8)
    fn = jax.jit(chex.assert_max_traces(ctc.ctc_loss, n=1))
    for lengths, label_lengths in [([9, 4], [3, 0]), ([2, 9], [1, 2]), ([0, 5], [0, 3])]:
        logits = rng.normal(size=(2, 9, 4)).astype(np.float32)
        labels = rng.integers(1, 4, size=(2, 3)).astype(np.int32)
        loss = fn(logits, _paddings(lengths, 9).astype(np.float32), labels,
                  _paddings(label_lengths, 3).astype(np.float32))
        assert np.all(np.isfinite(np.asarray(loss)))


@pytest.mark.parametrize("bad, message", [
    (dict(logits=np.zeros((9, 4))), "logits must be"),
    (dict(logit_paddings=np.zeros((2, 8))), "logit_paddings"),
    (dict(labels=np.zeros((3, 3), np.int32)), "labels must be"),
    (dict(label_paddings=np.zeros((2, 4))), "label_paddings"),
    (dict(labels=np.zeros((2, 3))), "integers"),
    (dict(blank_id=4), "blank_id"),
    (dict(unroll=0), "unroll"),
])
def test_rejects_bad_shapes(bad, message):
    args = dict(logits=np.zeros((2, 9, 4)), logit_paddings=np.zeros((2, 9)),
                labels=np.ones((2, 3), np.int32), label_paddings=np.zeros((2, 3)), blank_id=0, unroll=None)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        ctc.ctc_loss(**args)


@pytest.mark.parametrize("labels, label_paddings, message", [
    ([[1, 4, 2], [1, 1, 1]], [[0, 0, 0], [0, 0, 1]], r"outside \[0, 4\): labels\[0, 1\] = 4 \(1 such"),
    ([[1, 2, 3], [-1, 1, 1]], [[0, 0, 0], [0, 0, 1]], r"outside \[0, 4\): labels\[1, 0\] = -1"),
    ([[1, 0, 3], [1, 2, 0]], [[0, 0, 0], [0, 0, 0]], r"the blank \(0\): labels\[0, 1\] = 0 \(2 such"),
    ([[1, 2, 3], [1, 2, 3]], [[0, 0, 0], [1, 0, 0]], r"zeros then ones .* row 1 is \[1.0, 0.0, 0.0\]"),
])
def test_rejects_bad_label_values(labels, label_paddings, message):
    """Concrete labels: a valid one out of range (it gave NaN, or wrapped around to another class), a valid one
    that is the blank (taken as a blank), or padding that is not at the end (neither sequence's loss) is refused;
    padded slots may hold anything."""
    args = dict(logits=np.zeros((2, 9, 4)), logit_paddings=np.zeros((2, 9)))
    with pytest.raises(ValueError, match=message):
        ctc.ctc_loss(**args, labels=np.array(labels, np.int32), label_paddings=np.array(label_paddings, float))
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 9, 4))
    padded = ctc.ctc_loss(logits, np.zeros((2, 9)), np.array([[1, 2, 9], [3, -5, 0]], np.int32),
                          np.array([[0, 0, 1], [0, 1, 1]], float))
    want = [optax.ctc_loss(logits[i:i + 1], np.zeros((1, 9)), np.array([y]), np.zeros((1, len(y))))[0]
            for i, y in enumerate(([1, 2], [3]))]
    np.testing.assert_allclose(np.asarray(padded), np.asarray(want), rtol=1e-5)


def _logits_for_paths(paths, classes, rng):
    """float[B, T, K] whose per-frame argmax is the given path, with noise well below the margin."""
    paths = np.asarray(paths)
    return np.eye(classes)[paths] * 5.0 + rng.uniform(-1.0, 1.0, size=paths.shape + (classes,))


def test_best_path_decode_hand_made_cases():
    rng = np.random.default_rng(9)
    paths = [
        [0, 1, 1, 0, 1, 2, 2, 0],   # a blank separates the two 1s: both stay
        [3, 3, 3, 3, 3, 3, 3, 3],   # one run, one symbol
        [0, 0, 0, 0, 0, 0, 0, 0],   # only blanks: empty
        [1, 2, 2, 3, 3, 0, 0, 0],   # frames 5.. are padding below and would add nothing anyway
        [2, 2, 0, 0, 3, 3, 1, 1],   # frames 6.. are padding: the trailing 1 is cut off
    ]
    paddings = np.zeros((5, 8))
    paddings[3, 5:] = 1.0
    paddings[4, 6:] = 1.0
    decoded = ctc.best_path_decode(_logits_for_paths(paths, 4, rng), paddings)
    expected = [[1, 1, 2], [3], [], [1, 2, 3], [2, 3]]
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected):
        assert np.issubdtype(got.dtype, np.integer)
        np.testing.assert_array_equal(got, want)


def test_best_path_decode_with_another_blank():
    rng = np.random.default_rng(10)
    logits = _logits_for_paths([[2, 0, 0, 2, 0, 1, 2, 2]], 3, rng)
    (decoded,) = ctc.best_path_decode(logits, np.zeros((1, 8)), blank_id=2)
    np.testing.assert_array_equal(decoded, [0, 0, 1])


def test_best_path_decode_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logit_paddings"):
        ctc.best_path_decode(np.zeros((2, 5, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="blank_id"):
        ctc.best_path_decode(np.zeros((2, 5, 3)), np.zeros((2, 5)), blank_id=3)
