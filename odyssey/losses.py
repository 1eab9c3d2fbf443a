"""Per-sequence losses of the framewise tasks: masked softmax cross-entropy and Bernoulli NLL."""

import jax
import jax.numpy as jnp


def _check_masked_pair(name, logits, targets, target_rank, mask):
    """Raises a ValueError naming the argument whose rank or shape disagrees with logits [T, K]."""
    if jnp.ndim(logits) != 2:
        raise ValueError(
            f"{name}: logits must be one unbatched sequence [T, K] (use jax.vmap for batches), "
            f"got shape {jnp.shape(logits)}.")
    frames = jnp.shape(logits)[0]
    expected = jnp.shape(logits) if target_rank == 2 else (frames,)
    if jnp.shape(targets) != expected:
        raise ValueError(f"{name}: targets/labels must have shape {expected}, got {jnp.shape(targets)}.")
    if jnp.shape(mask) != (frames,):
        raise ValueError(f"{name}: mask must have shape ({frames},), got {jnp.shape(mask)}.")


def framewise_cross_entropy(logits, labels, mask):
    """Softmax cross-entropy summed over the valid frames of one sequence (the TIMIT loss).

    loss = sum_t mask_t * (logsumexp_k logits[t, k] - logits[t, labels_t]).

    Args:
        logits: float[T, K] unnormalised class scores of one sequence.
        labels: int[T] target class per frame. Entries at padded frames may hold any value,
            also one outside [0, K); a valid frame's label outside [0, K) contributes only the
            log-partition term, since it matches no class.
        mask: float[T], 1.0 for a valid frame and 0.0 for padding.

    Returns:
        Scalar of the logits' dtype: the summed (not averaged) cross-entropy.

    Raises:
        ValueError: if the ranks or shapes do not match.
    """
    _check_masked_pair("framewise_cross_entropy", logits, labels, 1, mask)
    mask = jnp.asarray(mask)
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    # A one-hot product rather than a gather: out-of-range padding labels give 0, never NaN.
    target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logprobs.dtype)
    per_frame = -jnp.sum(target * logprobs, axis=-1)
    return jnp.sum(per_frame * mask.astype(logprobs.dtype))


def bernoulli_nll(logits, targets, mask):
    """Negative log-likelihood of binary targets under independent sigmoid units (the JSB loss).

    Per unit, -[y log sigma(x) + (1 - y) log(1 - sigma(x))] = softplus(x) - y x, which is evaluated
    in that log-sigmoid form: exact and finite for any finite logit, with gradient sigma(x) - y.
    The caller aligns targets with the next time step.

    Args:
        logits: float[T, U] pre-sigmoid outputs of one sequence (U = 88 piano keys for JSB).
        targets: float[T, U] in {0, 1}: the piano roll the outputs predict.
        mask: float[T], 1.0 for a valid step and 0.0 for padding.

    Returns:
        Scalar of the logits' dtype: the NLL summed over valid steps and all U units.

    Raises:
        ValueError: if the ranks or shapes do not match.
    """
    _check_masked_pair("bernoulli_nll", logits, targets, 2, mask)
    logits, targets, mask = jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)
    targets = targets.astype(logits.dtype)
    per_unit = jax.nn.softplus(logits) - targets * logits
    return jnp.sum(jnp.sum(per_unit, axis=-1) * mask.astype(logits.dtype))
