"""Benchmark: odyssey.ctc.ctc_loss against optax.ctc_loss, both jitted, forward and forward+grad.

Run: python bench/ctc_speed.py [--repeats=20] [--quick] [--unroll=N]

Prints one row per shape with the median wall time over repeats (after a compile-and-warm-up
call; ours and optax alternate) and the ratio ours / optax; a ratio below 1 means ours is faster.
Each shape uses mixed frame and label lengths inside one padded batch, as the IAM-OnDB task
produces. On CPU and other backends, ctc_loss picks its own scan unrolling unless --unroll is given.
"""

import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from odyssey import ctc

import trainer_speed  # bench/ is the script's folder, so on sys.path

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per measurement; the median is shown.")
_QUICK = flags.DEFINE_bool("quick", False, "Only the two smallest shapes, for a smoke run.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random logits and labels.")
_UNROLL = flags.DEFINE_integer(
    "unroll", None, "Time steps per scan iteration of ours; default: ctc_loss's choice for the backend.")

# (B, T, K, L): batch, padded frames, classes incl. blank, padded label length.
# IAM-OnDB lines give T of about 350-700 frames and 30-60 characters over 81 + blank classes.
_SHAPES = (
    (1, 350, 82, 30),
    (4, 500, 82, 40),
    (8, 500, 82, 45),
    (16, 600, 82, 50),
    (32, 700, 82, 60),
    (32, 150, 30, 20),
)


def _batch(rng, batch, frames, classes, max_labels):
    """Random logits with each item's frame and label lengths drawn between 70 % and 100 %."""
    logits = rng.normal(size=(batch, frames, classes)).astype(np.float32)
    frame_lengths = rng.integers(int(0.7 * frames), frames + 1, size=batch)
    label_lengths = rng.integers(int(0.7 * max_labels), max_labels + 1, size=batch)
    logit_paddings = (np.arange(frames)[None, :] >= frame_lengths[:, None]).astype(np.float32)
    label_paddings = (np.arange(max_labels)[None, :] >= label_lengths[:, None]).astype(np.float32)
    labels = rng.integers(1, classes, size=(batch, max_labels)).astype(np.int32)
    return tuple(jnp.asarray(a) for a in (logits, logit_paddings, labels, label_paddings))


def _programs(loss_fn):
    """The jitted forward pass and the jitted forward+gradient (w.r.t. logits) of a CTC loss."""
    forward = jax.jit(loss_fn)

    def total(logits, logit_paddings, labels, label_paddings):
        return jnp.sum(loss_fn(logits, logit_paddings, labels, label_paddings))

    return forward, jax.jit(jax.value_and_grad(total))


def main(argv):
    del argv
    rng = np.random.default_rng(_SEED.value)
    ours = _programs(functools.partial(ctc.ctc_loss, unroll=_UNROLL.value))
    theirs = _programs(optax.ctc_loss)
    shapes = _SHAPES[:2] if _QUICK.value else _SHAPES
    print(f"device: {jax.devices()[0].device_kind}; unroll: {_UNROLL.value or 'default'}; "
          f"median of {_REPEATS.value} calls; times in ms")
    header = ("B", "T", "K", "L", "ours fwd", "optax fwd", "ratio", "ours f+g", "optax f+g", "ratio")
    print("".join(f"{h:>10}" for h in header))
    worst = 0.0
    for shape in shapes:
        args = _batch(rng, *shape)
        np.testing.assert_allclose(ours[0](*args), theirs[0](*args), rtol=1e-4)
        row = list(shape)
        for which in (0, 1):
            mine, ref = trainer_speed.paired_median_seconds(ours[which], theirs[which], args, _REPEATS.value)
            worst = max(worst, mine / ref)
            row += [f"{1e3 * mine:.3f}", f"{1e3 * ref:.3f}", f"{mine / ref:.2f}"]
        print("".join(f"{v:>10}" for v in row))
    print(f"worst ratio ours / optax: {worst:.2f}")


if __name__ == "__main__":
    app.run(main)
