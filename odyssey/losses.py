"""Per-sequence losses of the framewise tasks: masked softmax cross-entropy and Bernoulli NLL."""

import jax
import jax.numpy as jnp
import numpy as np


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


def concrete(x):
    """x as a numpy array, or None where it is traced (under jit, vmap or grad): value checks run on concrete
    arguments only."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def framewise_cross_entropy(logits, labels, mask):
    """Softmax cross-entropy summed over the valid frames of one sequence (the TIMIT loss).

    loss = sum_t mask_t * (logsumexp_k logits[t, k] - logits[t, labels_t]).

    Args:
        logits: float[T, K] unnormalised class scores of one sequence.
        labels: int[T] target class per frame, in [0, K) at every valid frame. Entries at padded
            frames may hold any value, also one outside [0, K). Traced (under jit), a valid frame's
            label outside [0, K) matches no class and the frame adds 0; concrete, it is refused.
        mask: float[T], 1.0 for a valid frame and 0.0 for padding.

    Returns:
        Scalar of the logits' dtype: the summed (not averaged) cross-entropy.

    Raises:
        ValueError: if the ranks or shapes do not match, or (concrete arguments) a valid frame's label
            is outside [0, K).
    """
    _check_masked_pair("framewise_cross_entropy", logits, labels, 1, mask)
    labels_np, mask_np = concrete(labels), concrete(mask)
    if labels_np is not None and mask_np is not None:
        bad = np.flatnonzero((mask_np > 0) & ((labels_np < 0) | (labels_np >= jnp.shape(logits)[-1])))
        if bad.size:
            raise ValueError(f"framewise_cross_entropy: the labels of valid frames must be in [0, "
                             f"{jnp.shape(logits)[-1]}); frame {bad[0]} has {labels_np[bad[0]]} ({bad.size} such "
                             f"frames)")
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
