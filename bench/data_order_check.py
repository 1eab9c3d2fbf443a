"""What one shared data order per epoch saves: loop steps counted, and epochs timed side by side.

    python bench/data_order_check.py                      # counts, then 16 trials at N = 40
    python bench/data_order_check.py --trials=487 --hidden=40 --repeats=3 --device=gpu   # a GPU

The trainer presents one sequence per trial per update, and the K trials of an update run the LSTM loops
together, up to the longest of the K sequences they present (the rest is padding, masked). With each trial
shuffling the training set by its own seed (the default), an update's loops run to the longest of K random
sequences; with `train_trials(order_seed=...)` (`config.train.data_order = "shared"`) every trial visits
the sequences in the same order in its epoch e, so trials at the same epoch present the same sequence and
the loops run to its length. Each trial still sees a uniformly shuffled training set every epoch.

First the counts: the loop steps of one epoch summed over its updates, from the training split's lengths,
for K trials with their own orders (the mean over --draws sets of K permutations) against one shared order
(the sum of the lengths). That ratio holds on any device where a loop step costs the same whatever K
sequences it runs: a GPU's launch- or bandwidth-bound steps.

Then the trainer itself: the training epoch of the trainer's program (bench/trainer_speed.py's timer: the
mixed program, --trials slots of the eight mixable variants in turn, all at hidden --hidden, in one vmap,
on the training split) with each trial's own order and with one shared order, built side by side and timed
alternately, --repeats measurements of at least --min_time seconds each (the first epoch of each compiles
and is left out). Validation is the same in both and is not timed.

The data: the standard JSB Chorales file at --data when it exists, else the offline stand-in.
"""

from absl import app, flags
import jax
import numpy as np

from odyssey import tasks, train

import study_time  # bench/ is the script's folder, so on sys.path
import trainer_speed

_DATA = flags.DEFINE_string("data", str(study_time.JSB_FILE),
                            "The standard JSB Chorales file; the stand-in where it is missing.")
_COUNT_K = flags.DEFINE_list("count_trials", ["1", "2", "4", "8", "16", "64", "256", "512"],
                             "Trial counts K of the loop-step counts.")
_DRAWS = flags.DEFINE_integer("draws", 20, "Sets of K permutations the per-trial count averages over.")
_TRIALS = flags.DEFINE_list("trials", ["16"], "Trial counts of the timed program (none: counts only).")
_HIDDEN = flags.DEFINE_integer("hidden", 40, "Their hidden size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Measurements per arm, alternating.")
_MIN_TIME = flags.DEFINE_float("min_time", 2.0, "Seconds each measurement lasts at least (whole epochs).")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu", "tpu"], "Where JAX runs.")
_OUT = flags.DEFINE_string("out", None, "Where to write the counts and timings as JSON.")

ORDER_SEED = 12345  # any seed: the shared order's


def loop_steps(lengths, k, draws, rng):
    """Loop steps of one epoch of K trials with their own orders (mean over `draws`), and with one order."""
    n = lengths.size
    own = [lengths[np.stack([rng.permutation(n) for _ in range(k)])].max(axis=0).sum() for _ in range(draws)]
    return float(np.mean(own)), int(lengths.sum())


def main(argv):
    del argv
    device = jax.devices(_DEVICE.value)[0]
    splits, source = study_time.load_jsb(_DATA.value)
    spec = tasks.get_task("jsb")
    lengths = np.asarray(tasks.to_arrays(spec, splits["train"], np.float32).mask.sum(axis=1), np.int64)
    print(f"JSB {source} data: {lengths.size} training sequences, {lengths.mean():.1f} steps on average, "
          f"longest {lengths.max()}; {device.device_kind}", flush=True)
    rng = np.random.default_rng(0)
    counts = []
    print(f"\n{'K':>5} {'own orders':>11} {'shared':>8} {'own / shared':>12}")
    for k in (int(v) for v in _COUNT_K.value):
        own, shared = loop_steps(lengths, k, _DRAWS.value, rng)
        counts.append({"K": k, "own": own, "shared": shared, "ratio": own / shared})
        print(f"{k:>5} {own:>11.0f} {shared:>8d} {own / shared:>12.3f}")
    print("(loop steps of one training epoch, summed over its updates; own orders: the mean over "
          f"{_DRAWS.value} draws)", flush=True)
    settings = {"repeats": _REPEATS.value, "min_time": _MIN_TIME.value, "draws": _DRAWS.value}

    def save(timing, complete):  # rewritten after each timed row: a run cut at its limit keeps its rows
        if _OUT.value:
            trainer_speed.write_json(_OUT.value, {"data": source, "device": device.device_kind,
                                                  "order_seed": ORDER_SEED, "counts": counts, "timing": timing,
                                                  "settings": settings, "complete": complete})

    save([], False)
    timing = []
    for k in (int(v) for v in _TRIALS.value):
        if not timing:
            print(f"\n{'trials':>6} {'N':>4} {'own orders s':>12} {'shared s':>9} {'own / shared':>12} "
                  f"{'shared upd/s':>12}", flush=True)
        timers = {arm: trainer_speed.TrainerTimer("jsb", train.MIXED, _HIDDEN.value, k, splits, device,
                                                  chunk=k, order_seed=seed)
                  for arm, seed in (("own", None), ("shared", ORDER_SEED))}
        out = trainer_speed.measure({arm: t.train_epoch for arm, t in timers.items()}, _REPEATS.value,
                                    _MIN_TIME.value)
        row = {"trials": k, "hidden": _HIDDEN.value, **{arm: out[arm] for arm in timers},
               "ratio": out["own"]["median"] / out["shared"]["median"]}
        timing.append(row)
        save(timing, False)
        rate = row["trials"] * lengths.size / row["shared"]["median"]
        print(f"{row['trials']:>6} {row['hidden']:>4} {row['own']['median']:>12.3f} "
              f"{row['shared']['median']:>9.3f} {row['ratio']:>12.2f} {rate:>12,.0f}", flush=True)
    if timing:
        print(f"(median seconds of a training epoch of the trainer's mixed program, the two arms measured "
              f"alternately, {_REPEATS.value} measurements each; upd/s: sequence-updates per second)")
    save(timing, True)
    if _OUT.value:
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
