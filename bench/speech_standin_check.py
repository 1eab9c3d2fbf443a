"""Check of the speech stand-in: corpus facts and a short framewise training run of a bidirectional LSTM.

Run (each part can be switched off):

    python bench/speech_standin_check.py
    python bench/speech_standin_check.py --nostats --train_utterances=400 --minutes=5

`--stats` builds (or reads from the cache) the corpus of `--sizes` and prints how many of the 61
TIMIT phones occur, the frames per utterance (TIMIT: about 304), the share of the most frequent
phone, and the build time. `--train_utterances` > 0 trains the vanilla bidirectional LSTM of the
study (odyssey.nets, cross-entropy of odyssey.losses) on the first that many training utterances
of that corpus for `--minutes` and prints the frame error on the first `--eval_utterances` of its
validation split (other sentences) beside the error of always answering the most frequent
training phone. Adam and mini-batches keep the run short; the study itself uses online SGD.
"""

import collections
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from odyssey import losses, metrics, nets
from odyssey.data import speech_standin, timit

_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Stand-in cache folder (default: the library's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the stand-in corpus and of the network.")
_SIZES = flags.DEFINE_list("sizes", ["3696", "400", "192"], "Utterances in train, valid, test of the corpus.")
_STATS = flags.DEFINE_bool("stats", True, "Print the corpus facts.")
_TRAIN_UTTERANCES = flags.DEFINE_integer("train_utterances", 0, "Training utterances of the check (0: none).")
_EVAL_UTTERANCES = flags.DEFINE_integer("eval_utterances", 100, "Held-out utterances the frame error is measured on.")
_HIDDEN = flags.DEFINE_integer("hidden", 100, "LSTM blocks per direction.")
_BATCH = flags.DEFINE_integer("batch", 16, "Utterances per update.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
_MINUTES = flags.DEFINE_float("minutes", 5.0, "Training time budget.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "Updates between frame-error measurements.")


def _majority_error(train, held_out):
    """Frame error in % of answering the most frequent training phone everywhere."""
    counts = np.bincount(np.concatenate([y for _, y in train]), minlength=len(timit.PHONES))
    labels = np.concatenate([y for _, y in held_out])
    return 100.0 * np.mean(labels != counts.argmax()), timit.PHONES[counts.argmax()]


def _print_stats():
    sizes = tuple(int(s) for s in _SIZES.value)
    started = time.perf_counter()
    splits = speech_standin.build(_CACHE_DIR.value, _SEED.value, sizes)
    wall = time.perf_counter() - started
    counts = collections.Counter()
    for items in splits.values():
        for _, labels in items:
            counts.update(labels.tolist())
    missing = [p for k, p in enumerate(timit.PHONES) if counts[k] == 0]
    print(f"utterances (train, valid, test): {tuple(len(splits[s]) for s in speech_standin.SPLITS)}")
    print(f"phones covered: {len(timit.PHONES) - len(missing)} of {len(timit.PHONES)}, missing {missing}")
    frames = np.array([len(y) for items in splits.values() for _, y in items])
    print(f"frames per utterance: mean {frames.mean():.1f} (TIMIT: about 304), std {frames.std():.1f}, "
          f"min {frames.min()}, max {frames.max()}")
    total = sum(counts.values())
    print("most frequent phones (% of frames): "
          + ", ".join(f"{timit.PHONES[k]} {100 * n / total:.1f}" for k, n in counts.most_common(8)))
    error, phone = _majority_error(splits["train"], splits["test"])
    print(f"majority-class frame error on test: {error:.1f} % (always {phone!r})")
    print(f"build time: {wall:.1f} s (cached if a few seconds)")


def _pad(items, batch):
    """Features [B, T, 39], frame mask [B, T], labels [B, T]; T rounded up to 200 frames for few shapes."""
    frames = -(-max(len(f) for f, _ in items) // 200) * 200
    xs = np.zeros((batch, frames, 39), np.float32)
    mask = np.zeros((batch, frames), np.float32)
    labels = np.zeros((batch, frames), np.int32)
    for k, (f, y) in enumerate(items):
        xs[k, :len(f)], mask[k, :len(f)], labels[k, :len(y)] = f, 1.0, y
    return xs, mask, labels


def _bucketed(items, rng, batch):
    """Batches of utterances of similar length (less padding), in a shuffled order."""
    order = np.argsort([len(f) + rng.uniform(0, 40) for f, _ in items])
    batches = [order[k:k + batch] for k in range(0, len(order), batch)]
    rng.shuffle(batches)
    return [[items[i] for i in b] for b in batches]


def _train():
    n_train, n_eval = _TRAIN_UTTERANCES.value, _EVAL_UTTERANCES.value
    splits = speech_standin.build(_CACHE_DIR.value, _SEED.value, tuple(int(s) for s in _SIZES.value))
    train, held_out = splits["train"][:n_train], splits["valid"][:n_eval]
    logging.info("Frame check: %d training utterances, %d held-out, %s", len(train), len(held_out), jax.devices())

    def logits_of(params, xs, mask):
        return jax.vmap(lambda x, m: nets.apply_net("V", "bi", params, x, m))(xs, mask)

    def loss_fn(params, xs, mask, labels):
        per_sequence = jax.vmap(losses.framewise_cross_entropy)(logits_of(params, xs, mask), labels, mask)
        return jnp.sum(per_sequence) / jnp.maximum(jnp.sum(mask), 1.0)

    optimizer = optax.adam(_LEARNING_RATE.value)

    @jax.jit
    def update(params, opt_state, xs, mask, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, xs, mask, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda params, xs, mask: jnp.argmax(logits_of(params, xs, mask), axis=-1))

    def frame_error(params, items):
        preds, truths = [], []
        for k in range(0, len(items), 32):
            chunk = items[k:k + 32]
            xs, mask, _ = _pad(chunk, 32)
            out = np.asarray(predict(params, xs, mask))
            preds += [out[i, :len(y)] for i, (_, y) in enumerate(chunk)]
            truths += [y for _, y in chunk]
        return metrics.frame_error_rate(preds, truths)

    params = nets.init_net(jax.random.PRNGKey(_SEED.value), "V", "bi", 39, _HIDDEN.value, len(timit.PHONES))
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(_SEED.value)
    majority, phone = _majority_error(train, held_out)
    started, steps, epoch, best = time.perf_counter(), 0, 0, float("inf")
    done = False
    while not done:
        epoch += 1
        for batch in _bucketed(train, rng, _BATCH.value):
            params, opt_state, loss = update(params, opt_state, *_pad(batch, _BATCH.value))
            steps += 1
            if steps % _EVAL_EVERY.value == 0:
                held = frame_error(params, held_out)
                best = min(best, held)
                minutes = (time.perf_counter() - started) / 60
                print(f"step {steps} (epoch {epoch}, {minutes:.1f} min): cross-entropy per frame {float(loss):.3f}, "
                      f"held-out frame error {held:.1f} %", flush=True)
            if time.perf_counter() - started > 60 * _MINUTES.value:
                done = True
                break
    held = frame_error(params, held_out)
    print(f"after {steps} updates ({epoch} epochs, {(time.perf_counter() - started) / 60:.1f} min, "
          f"{jax.devices()[0].platform}): held-out frame error {held:.1f} % (best seen {min(best, held):.1f} %), "
          f"training frame error {frame_error(params, train[:n_eval]):.1f} %; "
          f"majority class ({phone!r}) {majority:.1f} %")


def main(argv):
    del argv
    if _STATS.value:
        _print_stats()
    if _TRAIN_UTTERANCES.value > 0:
        _train()


if __name__ == "__main__":
    app.run(main)
