"""Check of the handwriting stand-in: corpus facts, a PNG drawn from the features, a short CTC training run.

Run (each part can be switched off):

    python bench/handwriting_standin_check.py --png=docs/handwriting_standin.png
    python bench/handwriting_standin_check.py --nostats --train_lines=400 --hidden=64 --batch=8 --minutes=10

`--stats` builds (or reads from the cache) the corpus of `--sizes` and prints the characters it
covers, the mean pen samples per line before and after subsampling, and the generation time.
`--png` draws a few test lines, each from its four standardised features and the training
statistics alone. `--train_lines` > 0 trains the vanilla bidirectional LSTM of the study
(odyssey.nets) with the CTC loss (odyssey.ctc) on that many stand-in lines for `--minutes` and
prints the character error rate of best-path decoding on `--eval_lines` held-out lines (other
writers, other text) as it goes. Adam and mini-batches keep the run short; the study itself uses
online SGD.

Measured (seed 0): the second command above, on 2 shared CPU cores, reached a held-out CER of
10.1 % after 1200 updates (10 min); with `--train_lines=2000 --eval_lines=200 --batch=32
--minutes=6` on one H200 GPU, 0.7 % after 3331 updates.
"""

import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

from odyssey import ctc, metrics, nets
from odyssey.data import handwriting_standin, iam_ondb

_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Stand-in cache folder (default: the library's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the stand-in corpus and of the network.")
_SIZES = flags.DEFINE_list("sizes", [str(s) for s in handwriting_standin.DEFAULT_SIZES],
                           "Lines in train, valid, test for --stats and --png.")
_STATS = flags.DEFINE_bool("stats", True, "Print the corpus facts.")
_PNG = flags.DEFINE_string("png", None, "Where to write the drawing of a few test lines (none: no drawing).")
_PNG_LINES = flags.DEFINE_integer("png_lines", 6, "Lines in the drawing, each by another writer.")
_TRAIN_LINES = flags.DEFINE_integer("train_lines", 0, "Training lines of the CTC check (0: no training).")
_EVAL_LINES = flags.DEFINE_integer("eval_lines", 100, "Held-out lines the CER is measured on.")
_HIDDEN = flags.DEFINE_integer("hidden", 100, "LSTM blocks per direction.")
_BATCH = flags.DEFINE_integer("batch", 16, "Lines per update.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
_MINUTES = flags.DEFINE_float("minutes", 5.0, "Training time budget.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "Updates between CER measurements.")

_CLASSES = len(iam_ondb.ALPHABET) + 1  # the characters and the CTC blank (0)


def _sizes():
    return tuple(int(s) for s in _SIZES.value)


def _print_stats():
    started = time.perf_counter()
    splits = handwriting_standin.build(_CACHE_DIR.value, _SEED.value, _sizes())
    wall = time.perf_counter() - started
    info = handwriting_standin.corpus_info(_CACHE_DIR.value, _SEED.value, _sizes())
    chars = set()
    for items in splits.values():
        for _, labels in items:
            chars.update(iam_ondb.decode(labels))
    raw = np.concatenate(list(info["raw_points"].values()))
    frames = np.concatenate(list(info["frames"].values()))
    print(f"lines (train, valid, test): {tuple(len(splits[s]) for s in handwriting_standin.SPLITS)}")
    print(f"characters covered: {len(chars)} of {len(iam_ondb.ALPHABET)}"
          f"{'' if len(chars) == len(iam_ondb.ALPHABET) else ', missing ' + repr(set(iam_ondb.ALPHABET) - chars)}")
    label_lengths = [len(labels) for items in splits.values() for _, labels in items]
    print(f"characters per line: mean {np.mean(label_lengths):.1f}, min {min(label_lengths)}, max {max(label_lengths)}")
    print(f"pen samples per line before subsampling: mean {raw.mean():.1f}")
    print(f"frames per line after subsampling: mean {frames.mean():.1f} (IAM-OnDB per the paper: about 334), "
          f"min {frames.min()}, max {frames.max()}")
    for split in handwriting_standin.SPLITS:
        print(f"  {split}: {info['raw_points'][split].mean():.1f} -> {info['frames'][split].mean():.1f}")
    print(f"generation time: {info['seconds']:.1f} s (this call: {wall:.1f} s, cached if much less)")


def _draw(path):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel  (after the backend)

    splits = handwriting_standin.build(_CACHE_DIR.value, _SEED.value, _sizes())
    info = handwriting_standin.corpus_info(_CACHE_DIR.value, _SEED.value, _sizes())
    test = splits["test"]
    # Lines a form apart come from different writers (a writer keeps a form of several lines).
    step = max(1, min(len(test) // _PNG_LINES.value, 8 * 5 + 3))
    picks = [k * step for k in range(_PNG_LINES.value) if k * step < len(test)]
    fig, axes = plt.subplots(len(picks), 1, figsize=(10, 1.25 * len(picks)), squeeze=False)
    for ax, index in zip(axes[:, 0], picks):
        features, labels = test[index]
        for stroke in iam_ondb.strokes_from_features(features, info["mean"], info["std"]):
            ax.plot(stroke[:, 0], -stroke[:, 1], color="black", linewidth=1.0)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"test line {index}: {iam_ondb.decode(labels)!r} ({len(features)} frames)",
                     fontsize=8, loc="left")
    fig.suptitle("Handwriting stand-in, drawn from the four features (Δx, Δy, time, pen lift) alone",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}: test lines {picks}")


def _pad(items, batch):
    """Padded arrays of a batch: features [B, T, 4], frame mask [B, T], labels [B, L], label paddings.

    T is rounded up to a multiple of 256 frames and L to one of 48 characters (a stand-in line has at
    most 45), so that few shapes, and compilations, occur; rows past the items are all padding.
    """
    frames = -(-max(len(f) for f, _ in items) // 256) * 256
    chars = -(-max(len(l) for _, l in items) // 48) * 48
    xs = np.zeros((batch, frames, 4), np.float32)
    mask = np.zeros((batch, frames), np.float32)
    labels = np.zeros((batch, chars), np.int32)
    label_pad = np.ones((batch, chars), np.float32)
    for k, (f, l) in enumerate(items):
        xs[k, :len(f)], mask[k, :len(f)] = f, 1.0
        labels[k, :len(l)], label_pad[k, :len(l)] = l, 0.0
    return xs, mask, labels, label_pad


def _bucketed(items, rng, batch):
    """Batches of lines of similar length (less padding), in a shuffled order."""
    order = np.argsort([len(f) + rng.uniform(0, 40) for f, _ in items])
    batches = [order[k:k + batch] for k in range(0, len(order), batch)]
    rng.shuffle(batches)
    return [[items[i] for i in b] for b in batches]


def _train():
    n_train, n_eval = _TRAIN_LINES.value, _EVAL_LINES.value
    splits = handwriting_standin.build(_CACHE_DIR.value, _SEED.value, (n_train, n_eval, n_eval))
    train, held_out = splits["train"], splits["valid"]
    logging.info("CTC check: %d training lines, %d held-out lines, %s", len(train), len(held_out), jax.devices())

    def logits_of(params, xs, mask):
        return jax.vmap(lambda x, m: nets.apply_net("V", "bi", params, x, m))(xs, mask)

    def loss_fn(params, xs, mask, labels, label_pad):
        losses = ctc.ctc_loss(logits_of(params, xs, mask), 1.0 - mask, labels, label_pad, blank_id=0)
        chars = jnp.sum(1.0 - label_pad, axis=1)
        # Rows that are only padding (a short last batch) carry no characters and no weight.
        return jnp.sum(jnp.where(chars > 0, losses, 0.0)) / jnp.maximum(jnp.sum(chars), 1.0)

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(_LEARNING_RATE.value))

    @jax.jit
    def update(params, opt_state, xs, mask, labels, label_pad):
        loss, grads = jax.value_and_grad(loss_fn)(params, xs, mask, labels, label_pad)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    logits_jit = jax.jit(logits_of)

    def cer(params, items):
        refs, hyps = [], []
        for k in range(0, len(items), 32):
            chunk = items[k:k + 32]
            xs, mask, _, _ = _pad(chunk, 32)
            decoded = ctc.best_path_decode(np.asarray(logits_jit(params, xs, mask)), 1.0 - mask)
            refs += [l for _, l in chunk]
            hyps += decoded[:len(chunk)]
        return metrics.character_error_rate(refs, hyps), refs, hyps

    params = nets.init_net(jax.random.PRNGKey(_SEED.value), "V", "bi", 4, _HIDDEN.value, _CLASSES)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(_SEED.value)
    started, steps, epoch, best = time.perf_counter(), 0, 0, float("inf")
    done = False
    while not done:
        epoch += 1
        for batch in _bucketed(train, rng, _BATCH.value):
            params, opt_state, loss = update(params, opt_state, *_pad(batch, _BATCH.value))
            steps += 1
            if steps % _EVAL_EVERY.value == 0:
                held_cer, refs, hyps = cer(params, held_out)
                best = min(best, held_cer)
                minutes = (time.perf_counter() - started) / 60
                print(f"step {steps} (epoch {epoch}, {minutes:.1f} min): CTC loss per character {float(loss):.3f}, "
                      f"held-out CER {held_cer:.1f} %", flush=True)
                print(f"    {iam_ondb.decode(refs[0])!r} -> {iam_ondb.decode(hyps[0])!r}", flush=True)
            if time.perf_counter() - started > 60 * _MINUTES.value:
                done = True
                break
    held_cer, refs, hyps = cer(params, held_out)
    train_cer, _, _ = cer(params, train[:n_eval])
    print(f"after {steps} updates ({epoch} epochs, {(time.perf_counter() - started) / 60:.1f} min, "
          f"{jax.devices()[0].platform}): held-out CER {held_cer:.1f} % (best seen {min(best, held_cer):.1f} %), "
          f"training CER {train_cer:.1f} %")
    for ref, hyp in list(zip(refs, hyps))[:5]:
        print(f"    {iam_ondb.decode(ref)!r} -> {iam_ondb.decode(hyp)!r}")


def main(argv):
    del argv
    if _STATS.value:
        _print_stats()
    if _PNG.value:
        _draw(_PNG.value)
    if _TRAIN_LINES.value > 0:
        _train()


if __name__ == "__main__":
    app.run(main)
