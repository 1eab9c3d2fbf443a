"""What one shared data order per epoch saves: loop steps counted, and epochs timed side by side.

    python bench/data_order_check.py                      # counts, then 16 trials at N = 40
    python bench/data_order_check.py --trials=487 --hidden=40 --repeats=3 --device=gpu   # a GPU

The trainer presents one sequence per trial per update, and the K trials of an update run the LSTM loops
together, up to the longest of the K sequences they present (the rest is padding, masked). With each trial
shuffling the training set by its own seed (the default), an update's loops run to the longest of K random
sequences; with `train_trials(order_seed=...)` (`config.train.data_order = "shared"`) every trial visits
the sequences in the same order in its epoch e, so trials at the same epoch present the same sequence and
the loops run to its length. Each trial still sees a uniformly shuffled training set every epoch. With
`train_trials(order_seed=..., order_stratum=m)` (`config.train.data_order = "strata"`, m = 8) each trial
visits them in an order of its own within strata of m sequences of similar length that the shared order
picks (`odyssey.programs.epoch_order`), so the loops run to the longest of m similar lengths.

First the counts: the loop steps of one epoch summed over its updates, from the training split's lengths,
for K trials with their own orders (the mean over --draws sets of K permutations) and in strata of each
--strata size (the mean over --draws epochs of K trials' `epoch_order`s) against one shared order (the sum
of the lengths). That ratio holds on any device where a loop step costs the same whatever K
sequences it runs: a GPU's launch- or bandwidth-bound steps.

Then the trainer itself: the training epoch of the trainer's program (bench/trainer_speed.py's timer: the
mixed program, --trials slots of the eight mixable variants in turn, all at hidden --hidden, in one vmap,
on the training split) with each trial's own order, with one shared order and in strata of the first
--strata size, built side by side and timed in turn, --repeats measurements of at least --min_time seconds
each (the first epoch of each compiles and is left out). Validation is the same in all and is not timed.

The data: the standard JSB Chorales file at --data when it exists, else the offline stand-in.
"""

import functools

from absl import app, flags
import jax
import numpy as np

from odyssey import programs, search, tasks, train

import study_time  # bench/ is the script's folder, so on sys.path
import trainer_speed

_DATA = flags.DEFINE_string("data", str(study_time.JSB_FILE),
                            "The standard JSB Chorales file; the stand-in where it is missing.")
_COUNT_K = flags.DEFINE_list("count_trials", ["1", "2", "4", "8", "16", "64", "256", "512"],
                             "Trial counts K of the loop-step counts.")
_DRAWS = flags.DEFINE_integer("draws", 20, "Sets of K permutations the per-trial count averages over.")
_STRATA = flags.DEFINE_list("strata", [str(search.ORDER_STRATUM), "1", "4", "16", "32"],
                            "Sequences per stratum of the strata orders counted; the first is timed.")
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


def strata_steps(lengths, k, stratum, draws):
    """Loop steps of one epoch of K trials in strata orders (`programs.epoch_order`; one shared key, each trial its
    own), the mean over `draws` epochs."""
    orders = jax.jit(jax.vmap(jax.vmap(functools.partial(programs.epoch_order, lengths=lengths, stratum=stratum),
                                       in_axes=(None, 0, None)), in_axes=(None, None, 0)))
    keys = jax.vmap(jax.random.PRNGKey)(np.arange(k))
    drawn = np.asarray(orders(jax.random.PRNGKey(ORDER_SEED), keys, np.arange(draws)))  # [draws, K, n]
    return float(lengths[drawn].max(axis=1).sum(axis=1).mean())


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
    strata = [int(v) for v in _STRATA.value]
    print(f"\n{'K':>5} {'own orders':>11} {'shared':>8} {'own / shared':>12}"
          + "".join(f" {f'strata {m}':>9}" for m in strata))
    for k in (int(v) for v in _COUNT_K.value):
        own, shared = loop_steps(lengths, k, _DRAWS.value, rng)
        by_stratum = {m: strata_steps(lengths, k, m, _DRAWS.value) / shared for m in strata}
        counts.append({"K": k, "own": own, "shared": shared, "ratio": own / shared,
                       "strata": {str(m): r for m, r in by_stratum.items()}})
        print(f"{k:>5} {own:>11.0f} {shared:>8d} {own / shared:>12.3f}"
              + "".join(f" {by_stratum[m]:>9.3f}" for m in strata))
    print("(loop steps of one training epoch, summed over its updates; own orders and strata: the mean over "
          f"{_DRAWS.value} draws; strata m: in strata of m sequences, over shared)", flush=True)
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
            print(f"\n{'trials':>6} {'N':>4} {'own orders s':>12} {'shared s':>9} {'strata s':>9} "
                  f"{'own / shared':>12} {'strata / shared':>15} {'shared upd/s':>12}", flush=True)
        arms = (("own", None, None), ("shared", ORDER_SEED, None), ("strata", ORDER_SEED, strata[0]))
        timers = {arm: trainer_speed.TrainerTimer("jsb", train.MIXED, _HIDDEN.value, k, splits, device,
                                                  chunk=k, order_seed=seed, order_stratum=stratum)
                  for arm, seed, stratum in arms}
        out = trainer_speed.measure({arm: t.train_epoch for arm, t in timers.items()}, _REPEATS.value,
                                    _MIN_TIME.value)
        row = {"trials": k, "hidden": _HIDDEN.value, "stratum": strata[0], **{arm: out[arm] for arm in timers},
               "ratio": out["own"]["median"] / out["shared"]["median"],
               "strata_ratio": out["strata"]["median"] / out["shared"]["median"]}
        timing.append(row)
        save(timing, False)
        rate = row["trials"] * lengths.size / row["shared"]["median"]
        print(f"{row['trials']:>6} {row['hidden']:>4} {row['own']['median']:>12.3f} "
              f"{row['shared']['median']:>9.3f} {row['strata']['median']:>9.3f} {row['ratio']:>12.2f} "
              f"{row['strata_ratio']:>15.2f} {rate:>12,.0f}", flush=True)
    if timing:
        print(f"(median seconds of a training epoch of the trainer's mixed program, the three arms measured "
              f"in turn, {_REPEATS.value} measurements each, strata of {strata[0]}; upd/s: sequence-updates per "
              "second)")
    save(timing, True)
    if _OUT.value:
        print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
