"""Do bfloat16 recurrent products, or one shared data order, change what a study finds? Trials trained several
ways, paired.

    python bench/recurrent_dtype_check.py --out=bench/results/recurrent_dtype_check.json
    python bench/recurrent_dtype_check.py --trials=6 --arms=shared_order --previous=earlier.json --out=later.json

The same random-search trials of the JSB study (configs/jsb.py's search space, every variant of
--variants, --trials each) are trained with the trainer (odyssey.train.train_trials) in the arms of --arms:

    float32       the paper's numerics
    bfloat16      recurrent_dtype=bfloat16: the LSTM loops' recurrent products take bfloat16 operands
    reseeded      float32 again, each trial with another training seed (initial weights, order, input noise)
    shared_order  float32, every trial visiting the sequences in one order (order_seed), not its own

and each trial's best validation NLL is compared. The reseeded arm is the noise floor: how much a
trial's outcome moves for reasons the study treats as chance. An arm is "unchanged within noise" when
its paired differences from float32 are no larger than the reseeded arm's: a table per arm prints, per
variant and over all trials, the median of |arm - float32| and of |reseeded - float32| (relative to
float32), the median signed difference, and a Wilcoxon signed-rank test of the arm against float32. It
also compares the arms the way the study reports them: each variant's best trial and the median of its
trials. Diverged trials are counted, not compared. (A shared order is another order for every trial, so
its paired differences are of the size of a new seed's by construction; what its table can show is that
the variants' best and median trials, and so the study's comparisons, stay within that noise.)

--previous takes arms from an earlier run's JSON of the same settings instead of training them again (the
trainer's numbers on CPU are deterministic for the same trials trained together). The data: the standard
JSB Chorales file at --data when it exists, else the offline stand-in. It runs on any device; on 2 CPU
cores each arm of the defaults takes about 10 minutes, of --trials=6 about 20.
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
import trainer_speed

_DATA = flags.DEFINE_string("data", str(study_time.JSB_FILE), "The standard JSB Chorales file; the stand-in where it is missing.")
_VARIANTS = flags.DEFINE_list("variants", list(train.cells.VARIANTS), "Variants whose trials are trained.")
_TRIALS = flags.DEFINE_integer("trials", 4, "Random-search trials per variant.")
_SEED = flags.DEFINE_integer("seed", 0, "The search seed the trials are drawn from.")
_MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 30, "Epoch bound of every trial (the paper: 150).")
_PATIENCE = flags.DEFINE_integer("patience", 6, "Early-stopping patience (the paper: 15).")
_RESEED = flags.DEFINE_integer("reseed", 1, "Added to each trial's training seed in the reseeded arm.")
_ARMS = flags.DEFINE_list("arms", ["float32", "bfloat16", "reseeded"], "Arms to train (see ARMS).")
_PREVIOUS = flags.DEFINE_string("previous", None, "The JSON of an earlier run of the same trials and settings: "
                                "its arms are taken from it instead of trained again.")
_OUT = flags.DEFINE_string("out", None, "Where to write the per-trial results as JSON (after every arm).")

ORDER_SEED = 12345  # the shared_order arm's (any seed)
# arm -> (recurrent_dtype, whether each trial's training seed is changed, order_seed)
ARMS = {"float32": ("float32", False, None), "bfloat16": ("bfloat16", False, None), "reseeded": ("float32", True, None),
        "shared_order": ("float32", False, ORDER_SEED)}
# The two arms every comparison needs: the reference and the noise floor.
BASE = ("float32", "reseeded")


def draw(variants, trials, seed):
    """The study's trials (configs/jsb.py's search space) for `variants`, `trials` each."""
    config = study_time.load_config("jsb")
    config.search.variants = tuple(variants)
    config.search.num_trials = trials
    config.search.seed = seed
    search.validate_config(config)
    return [train.Trial(**t) for t in search.draw_trials(config)]


def summarize(results, trials, variants):
    """Rows of the tables: per variant and over all, the paired comparisons of every arm with float32."""
    by_id = {t.trial_id: t for t in trials}
    arms = list(results)
    rows = []
    for name in list(variants) + ["all"]:
        ids = [i for i in by_id if name == "all" or by_id[i].variant == name]
        ok = [i for i in ids if all(np.isfinite(results[arm][i]) for arm in arms)]
        row = {"variant": name, "trials": len(ids), "compared": len(ok),
               "diverged": {arm: sum(not np.isfinite(results[arm][i]) for i in ids) for arm in arms}}
        if ok:
            f32 = np.array([results["float32"][i] for i in ok])
            for arm in arms:
                if arm == "float32":
                    continue
                other = np.array([results[arm][i] for i in ok])
                diff = other - f32
                row[arm] = {"median_abs_rel": float(np.median(np.abs(diff) / np.abs(f32))),
                            "median_diff": float(np.median(diff)),
                            "best": float(other.min()), "median": float(np.median(other)),
                            "wilcoxon_p": (float(scipy_stats.wilcoxon(diff).pvalue)
                                           if len(ok) >= 6 and np.any(diff != 0) else None)}
            row["float32"] = {"best": float(f32.min()), "median": float(np.median(f32))}
        rows.append(row)
    return rows


def print_table(rows, arm):
    """The comparison of `arm` (x) with float32 (f), beside the reseeded arm (r)."""
    print(f"{arm} (x) against float32 (f), beside float32 with new training seeds (r):")
    header = (f"{'variant':<8} {'n':>3} {'div f/x/r':>9} {'|x-f|/f':>9} {'|r-f|/f':>9} {'med x-f':>9} "
              f"{'med r-f':>9} {'p(x=f)':>7} {'best f':>7} {'best x':>7} {'best r':>7} {'med f':>7} "
              f"{'med x':>7} {'med r':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        div = "/".join(str(r["diverged"][a]) for a in ("float32", arm, "reseeded"))
        if not r["compared"]:
            print(f"{r['variant']:<8} {r['compared']:>3} {div:>9}  (no trial finished in every arm)")
            continue
        x, s, f = r[arm], r["reseeded"], r["float32"]
        p = "-" if x["wilcoxon_p"] is None else f"{x['wilcoxon_p']:.2f}"
        print(f"{r['variant']:<8} {r['compared']:>3} {div:>9} {x['median_abs_rel']:>9.2e} {s['median_abs_rel']:>9.2e} "
              f"{x['median_diff']:>9.4f} {s['median_diff']:>9.4f} {p:>7} {f['best']:>7.3f} {x['best']:>7.3f} "
              f"{s['best']:>7.3f} {f['median']:>7.3f} {x['median']:>7.3f} {s['median']:>7.3f}")
    print("-" * len(header))


def print_legend():
    print("Validation NLL per time step (nats) of each trial's best epoch. |x-f|/f, |r-f|/f: medians over the trials")
    print("of the relative paired difference; med x-f, med r-f: medians of the signed difference; p(x=f): Wilcoxon")
    print("signed-rank test of x against f (- with under 6 pairs); best/med: the variant's best trial and its median")
    print("trial. A trial without a metric in any arm (diverged before its first finite validation; div f/x/r counts")
    print("them) is left out of every comparison of its row; one that diverged later has its best epoch's.")


def _settings(source):
    return {"variants": _VARIANTS.value, "trials": _TRIALS.value, "seed": _SEED.value,
            "max_epochs": _MAX_EPOCHS.value, "patience": _PATIENCE.value, "reseed": _RESEED.value,
            "data": source}


def _previous(path, settings):
    """The arms of an earlier run of the same settings: arm -> {trial_id: val metric}, and their seconds."""
    with open(path) as f:
        earlier = json.load(f)
    if earlier["config"] != settings:
        raise app.UsageError(f"--previous={path} ran other settings: {earlier['config']} against {settings}")
    arms = [a for a in ARMS if all(a in t for t in earlier["trials"])]
    results = {a: {t["trial_id"]: (np.nan if t[a] is None else t[a]) for t in earlier["trials"]} for a in arms}
    return results, {a: earlier["seconds"][a] for a in arms}


def main(argv):
    del argv
    unknown = [a for a in _ARMS.value if a not in ARMS]
    if unknown:
        raise app.UsageError(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    trials = draw(_VARIANTS.value, _TRIALS.value, _SEED.value)
    splits, source = study_time.load_jsb(_DATA.value)
    settings = _settings(source)
    results, seconds = _previous(_PREVIOUS.value, settings) if _PREVIOUS.value else ({}, {})
    missing = [a for a in BASE if a not in results and a not in _ARMS.value]
    if missing:
        raise app.UsageError(f"every comparison needs the arms {', '.join(BASE)}: train {missing} or take them "
                             "from --previous")
    print(f"{len(trials)} trials ({', '.join(_VARIANTS.value)} x {_TRIALS.value}), JSB {source} data, "
          f"{_MAX_EPOCHS.value} epochs at most, patience {_PATIENCE.value}"
          + (f"; arms {', '.join(results)} from {_PREVIOUS.value}" if results else ""), flush=True)
    for arm in _ARMS.value:
        if arm in results:
            continue
        dtype, reseed, order_seed = ARMS[arm]
        arm_trials = [dataclasses.replace(t, seed=t.seed + _RESEED.value) for t in trials] if reseed else trials
        start = time.perf_counter()
        out = train.train_trials("jsb", splits, arm_trials, max_epochs=_MAX_EPOCHS.value, patience=_PATIENCE.value,
                                 recurrent_dtype=dtype, order_seed=order_seed)
        seconds[arm] = time.perf_counter() - start
        results[arm] = {r.trial_id: r.val_metric for r in out}
        epochs = statistics.median(r.epochs for r in out)
        print(f"{arm}: {len(out)} trials in {seconds[arm]:.0f} s (median {epochs:g} epochs)", flush=True)
        if _OUT.value:
            _write(_OUT.value, trials, results, seconds, settings, None)
    rows = summarize(results, trials, _VARIANTS.value)
    for arm in results:
        if arm not in BASE:
            print()
            print_table(rows, arm)
    print_legend()
    if _OUT.value:
        _write(_OUT.value, trials, results, seconds, settings, rows)
        print(f"wrote {_OUT.value}")


def _write(path, trials, results, seconds, settings, rows):
    per_trial = [{**dataclasses.asdict(t), **{arm: results[arm].get(t.trial_id) for arm in results}} for t in trials]
    trainer_speed.write_json(path, {"config": settings, "seconds": seconds, "trials": per_trial, "summary": rows,
                                    "complete": rows is not None})


if __name__ == "__main__":
    app.run(main)
