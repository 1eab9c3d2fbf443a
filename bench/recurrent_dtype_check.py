"""Does bfloat16 in the recurrent products change what a study finds? Trials trained three ways, paired.

    python bench/recurrent_dtype_check.py --out=bench/results/recurrent_dtype_check.json

The same random-search trials of the JSB study (configs/jsb.py's search space, every variant of
--variants, --trials each) are trained three times with the trainer (odyssey.train.train_trials):

    float32    the paper's numerics
    bfloat16   recurrent_dtype=bfloat16: the LSTM loops' recurrent products take bfloat16 operands
    reseeded   float32 again, each trial with another training seed (initial weights, order, input noise)

and each trial's best validation NLL is compared. The reseeded arm is the noise floor: how much a
trial's outcome moves for reasons the study treats as chance. bfloat16 is "unchanged within noise" when
its paired differences from float32 are no larger than the reseeded arm's: the table prints, per
variant and over all trials, the median of |bfloat16 - float32| and of |reseeded - float32| (relative to
float32), the median signed difference, and a Wilcoxon signed-rank test of bfloat16 against float32. It
also compares the arms the way the study reports them: each variant's best trial and the median of its
trials. Diverged trials are counted, not compared.

The data: the standard JSB Chorales file at --data when it exists, else the offline stand-in. It runs
on any device; on 2 CPU cores the defaults take about half an hour.
"""

import dataclasses
import json
import statistics
import time

from absl import app, flags
import numpy as np
from scipy import stats as scipy_stats

from odyssey import search, train

import study_time  # bench/ is the script's folder, so on sys.path

_DATA = flags.DEFINE_string("data", str(study_time.JSB_FILE), "The standard JSB Chorales file; the stand-in where it is missing.")
_VARIANTS = flags.DEFINE_list("variants", list(train.cells.VARIANTS), "Variants whose trials are trained.")
_TRIALS = flags.DEFINE_integer("trials", 4, "Random-search trials per variant.")
_SEED = flags.DEFINE_integer("seed", 0, "The search seed the trials are drawn from.")
_MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 30, "Epoch bound of every trial (the paper: 150).")
_PATIENCE = flags.DEFINE_integer("patience", 6, "Early-stopping patience (the paper: 15).")
_RESEED = flags.DEFINE_integer("reseed", 1, "Added to each trial's training seed in the reseeded arm.")
_OUT = flags.DEFINE_string("out", None, "Where to write the per-trial results as JSON (after every arm).")

# arm -> (recurrent_dtype, whether each trial's training seed is changed)
ARMS = {"float32": ("float32", False), "bfloat16": ("bfloat16", False), "reseeded": ("float32", True)}


def draw(variants, trials, seed):
    """The study's trials (configs/jsb.py's search space) for `variants`, `trials` each."""
    config = study_time.load_config("jsb")
    config.search.variants = tuple(variants)
    config.search.num_trials = trials
    config.search.seed = seed
    search.validate_config(config)
    return [train.Trial(**t) for t in search.draw_trials(config)]


def summarize(results, trials, variants):
    """Rows of the table: per variant and over all, the paired comparisons of bfloat16 and reseeded with float32."""
    by_id = {t.trial_id: t for t in trials}
    rows = []
    for name in list(variants) + ["all"]:
        ids = [i for i in by_id if name == "all" or by_id[i].variant == name]
        ok = [i for i in ids if all(np.isfinite(results[arm][i]) for arm in ARMS)]
        row = {"variant": name, "trials": len(ids), "compared": len(ok),
               "diverged": {arm: sum(not np.isfinite(results[arm][i]) for i in ids) for arm in ARMS}}
        if ok:
            f32 = np.array([results["float32"][i] for i in ok])
            for arm in ("bfloat16", "reseeded"):
                other = np.array([results[arm][i] for i in ok])
                row[arm] = {"median_abs_rel": float(np.median(np.abs(other - f32) / np.abs(f32))),
                            "median_diff": float(np.median(other - f32)),
                            "best": float(other.min()), "median": float(np.median(other))}
            row["float32"] = {"best": float(f32.min()), "median": float(np.median(f32))}
            diff = np.array([results["bfloat16"][i] - results["float32"][i] for i in ok])
            row["wilcoxon_p"] = (float(scipy_stats.wilcoxon(diff).pvalue) if len(ok) >= 6 and np.any(diff != 0)
                                 else None)
        rows.append(row)
    return rows


def print_table(rows):
    header = (f"{'variant':<8} {'n':>3} {'div f/b/r':>9} {'|b-f|/f':>9} {'|r-f|/f':>9} {'med b-f':>9} "
              f"{'med r-f':>9} {'p(b=f)':>7} {'best f':>7} {'best b':>7} {'best r':>7} {'med f':>7} "
              f"{'med b':>7} {'med r':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        div = "/".join(str(r["diverged"][arm]) for arm in ARMS)
        if not r["compared"]:
            print(f"{r['variant']:<8} {r['compared']:>3} {div:>9}  (no trial finished in every arm)")
            continue
        b, s, f = r["bfloat16"], r["reseeded"], r["float32"]
        p = "-" if r["wilcoxon_p"] is None else f"{r['wilcoxon_p']:.2f}"
        print(f"{r['variant']:<8} {r['compared']:>3} {div:>9} {b['median_abs_rel']:>9.2e} {s['median_abs_rel']:>9.2e} "
              f"{b['median_diff']:>9.4f} {s['median_diff']:>9.4f} {p:>7} {f['best']:>7.3f} {b['best']:>7.3f} "
              f"{s['best']:>7.3f} {f['median']:>7.3f} {b['median']:>7.3f} {s['median']:>7.3f}")
    print("-" * len(header))
    print("Validation NLL per time step (nats) of each trial's best epoch. f: float32, b: bfloat16 recurrent products,")
    print("r: float32 with another training seed (the noise floor). |b-f|/f, |r-f|/f: medians over the trials of the")
    print("relative paired difference; med b-f, med r-f: medians of the signed difference; p(b=f): Wilcoxon signed-rank")
    print("test of b against f (- with under 6 pairs); best/med: the variant's best trial and its median trial.")


def main(argv):
    del argv
    trials = draw(_VARIANTS.value, _TRIALS.value, _SEED.value)
    splits, source = study_time.load_jsb(_DATA.value)
    print(f"{len(trials)} trials ({', '.join(_VARIANTS.value)} x {_TRIALS.value}), JSB {source} data, "
          f"{_MAX_EPOCHS.value} epochs at most, patience {_PATIENCE.value}", flush=True)
    results, seconds = {}, {}
    for arm, (dtype, reseed) in ARMS.items():
        arm_trials = [dataclasses.replace(t, seed=t.seed + _RESEED.value) for t in trials] if reseed else trials
        start = time.perf_counter()
        out = train.train_trials("jsb", splits, arm_trials, max_epochs=_MAX_EPOCHS.value, patience=_PATIENCE.value,
                                 recurrent_dtype=dtype)
        seconds[arm] = time.perf_counter() - start
        results[arm] = {r.trial_id: r.val_metric for r in out}
        epochs = statistics.median(r.epochs for r in out)
        print(f"{arm}: {len(out)} trials in {seconds[arm]:.0f} s (median {epochs:g} epochs)", flush=True)
        if _OUT.value:
            _write(_OUT.value, trials, results, seconds, source, None)
    rows = summarize(results, trials, _VARIANTS.value)
    print()
    print_table(rows)
    if _OUT.value:
        _write(_OUT.value, trials, results, seconds, source, rows)
        print(f"wrote {_OUT.value}")


def _write(path, trials, results, seconds, source, rows):
    config = {"variants": _VARIANTS.value, "trials": _TRIALS.value, "seed": _SEED.value,
              "max_epochs": _MAX_EPOCHS.value, "patience": _PATIENCE.value, "reseed": _RESEED.value,
              "data": source}
    per_trial = [{**dataclasses.asdict(t), **{arm: results[arm].get(t.trial_id) for arm in results}} for t in trials]
    with open(path, "w") as f:
        json.dump({"config": config, "seconds": seconds, "trials": per_trial, "summary": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
