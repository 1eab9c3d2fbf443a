"""The three tasks of the study: their networks, losses and metrics, and their data as padded arrays."""

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from odyssey import ctc, losses, metrics, nets


@dataclasses.dataclass(frozen=True)
class Task:
    """What a task trains: network kind, sizes, loss and metric (DESIGN §2)."""

    name: str
    kind: str          # "uni" or "bi"
    n_out: int
    loss: str          # "bernoulli", "xent" or "ctc"
    metric_name: str


TASKS = {
    "jsb": Task("jsb", "uni", 88, "bernoulli", "NLL per time step (nats)"),
    "timit": Task("timit", "bi", 61, "xent", "frame classification error (%)"),
    "iam_online": Task("iam_online", "bi", 82, "ctc", "character error rate (%)"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


class Arrays(NamedTuple):
    """One split as padded arrays; sequences are right-padded to the split's longest.

    xs float32[S, T, M]; mask float32[S, T]; targets float32[S, T, 88] (jsb), int32[S, T] (timit) or
    int32[S, L] (iam_online, with label_paddings float32[S, L], 1 = padding).
    """

    xs: np.ndarray
    mask: np.ndarray
    targets: np.ndarray
    label_paddings: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.xs.shape[0]

    def take(self, index) -> "Arrays":
        lp = None if self.label_paddings is None else self.label_paddings[index]
        return Arrays(self.xs[index], self.mask[index], self.targets[index], lp)


def _pad_stack(seqs, length, dtype):
    shape = (len(seqs), length) + seqs[0].shape[1:]
    out = np.zeros(shape, dtype)
    for k, s in enumerate(seqs):
        out[k, :len(s)] = s
    return out


def to_arrays(task: Task, split: list, dtype=np.float32) -> Arrays:
    """Pads one split of a task's data (as the loaders return it) into `Arrays`.

    jsb: a list of piano rolls float[T, 88]; input step t predicts step t + 1, so a roll of T steps gives
    T − 1 predictions. timit: (features float[T, 39], labels int[T]). iam_online: (features float[T, 4],
    labels int[L]).
    """
    if not split:
        raise ValueError(f"{task.name}: an empty split cannot be trained or evaluated")
    if task.name == "jsb":
        rolls = [np.asarray(r, dtype) for r in split]
        short = [k for k, r in enumerate(rolls) if len(r) < 2]
        if short:
            raise ValueError(f"jsb: sequences {short[:5]} have fewer than 2 steps; nothing to predict")
        xs, ys = [r[:-1] for r in rolls], [r[1:] for r in rolls]
        length = max(len(x) for x in xs)
        mask = _pad_stack([np.ones(len(x), dtype) for x in xs], length, dtype)
        return Arrays(_pad_stack(xs, length, dtype), mask, _pad_stack(ys, length, dtype))
    feats = [np.asarray(f, dtype) for f, _ in split]
    labels = [np.asarray(y, np.int32) for _, y in split]
    length = max(len(f) for f in feats)
    mask = _pad_stack([np.ones(len(f), dtype) for f in feats], length, dtype)
    xs = _pad_stack(feats, length, dtype)
    if task.name == "timit":
        return Arrays(xs, mask, _pad_stack(labels, length, np.int32))
    max_label = max(1, max(len(y) for y in labels))
    label_pad = np.where(np.arange(max_label)[None] < np.array([len(y) for y in labels])[:, None], 0.0, 1.0)
    targets = np.zeros((len(labels), max_label), np.int32)
    for k, y in enumerate(labels):
        targets[k, :len(y)] = y
    return Arrays(xs, mask, targets, label_pad.astype(dtype))


def sequence_loss(task: Task, variant: str, params, x, mask, target, label_padding=None, steps=None,
                  exact_steps=False, switches=None, recurrent_dtype=None, loops=None):
    """The task's loss of one sequence (summed over its steps), for `jax.grad`.

    `steps`, optional: x is padding from this step on (see `odyssey.nets.apply_net`); speed only.
    `exact_steps`: the caller promises that the sequence has exactly `steps` valid steps (or, with `steps`
    None, no padding at all), so the LSTM loops need no mask; the loss still applies it. Speed only.
    `switches`: the mixed cell's, with variant "V" (see `odyssey.nets.apply_net`).
    `recurrent_dtype`: static, the LSTM loops' recurrent products' operand dtype (see `odyssey.nets.apply_net`).
    `loops`: static, "xla" (None) or "pallas", how the LSTM layers' time loops run (see `odyssey.nets.apply_net`).
    """
    logits = nets.apply_net(variant, task.kind, params, x, None if exact_steps else mask, steps=steps,
                            switches=switches, recurrent_dtype=recurrent_dtype, loops=loops)
    if task.loss == "bernoulli":
        return losses.bernoulli_nll(logits, target, mask)
    if task.loss == "xent":
        return losses.framewise_cross_entropy(logits, target, mask)
    return ctc.ctc_loss(logits[None], 1.0 - mask[None], target[None], label_padding[None])[0]


def eval_statistics(task: Task, variant: str, params, x, mask, target, steps=None, switches=None,
                    recurrent_dtype=None, loops=None):
    """Per-sequence sufficient statistics of the metric, on device.

    Returns (jsb) the summed NLL and the number of steps, (timit) wrong frames and frames, (iam_online) the
    argmax label per frame int32[T] for best-path decoding on the host. `steps`, `switches`,
    `recurrent_dtype` and `loops` as in `sequence_loss`.
    """
    logits = nets.apply_net(variant, task.kind, params, x, mask, steps=steps, switches=switches,
                            recurrent_dtype=recurrent_dtype, loops=loops)
    if task.loss == "bernoulli":
        return losses.bernoulli_nll(logits, target, mask), jnp.sum(mask)
    if task.loss == "xent":
        wrong = (jnp.argmax(logits, -1) != target).astype(logits.dtype)
        return jnp.sum(wrong * mask), jnp.sum(mask)
    return jnp.argmax(logits, -1).astype(jnp.int32)


def finish_metric(task: Task, stats, arrays: Arrays) -> np.ndarray:
    """Per-trial metric from the statistics of all sequences.

    Args:
      stats: for jsb/timit a pair of float[K, S] arrays; for iam_online int[K, S, T] frame labels.
      arrays: the split (for lengths and reference labels).

    Returns:
      float64[K]: NLL per step, frame error %, or CER %.
    """
    if task.loss in ("bernoulli", "xent"):
        num, den = (np.asarray(s, np.float64) for s in stats)
        value = num.sum(1) / den.sum(1)
        return value * (100.0 if task.loss == "xent" else 1.0)
    frames = np.asarray(stats)
    lengths = arrays.mask.sum(1).astype(int)
    refs = [arrays.targets[s, :int((1 - arrays.label_paddings[s]).sum())] for s in range(arrays.size)]
    out = np.empty(frames.shape[0])
    for k in range(frames.shape[0]):
        hyps = [ctc.collapse_path(frames[k, s, :lengths[s]]) for s in range(arrays.size)]
        out[k] = metrics.character_error_rate(refs, hyps)
    return out
