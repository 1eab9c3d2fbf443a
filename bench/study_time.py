"""Benchmark: the trainer's throughput per task shape, hidden bucket and trial count, and the full study's wall time.

Run (from the repository root):

    python bench/study_time.py --quick --epochs_estimate=60 --out=/tmp/study_time.json    # CPU: a few minutes
    python bench/study_time.py --device=gpu --store=runs/jsb/trials.sqlite --out=study_time_gpu.json

1. Measures, on the device JAX sees, the trainer's own group program (`bench/trainer_speed.TrainerTimer`) for
   each task's network at each hidden bucket and trial count K: the median time of a training epoch on
   synthetic sequences of the task's mean length, the validation pass (host-side metric included) and the
   first call (compile). Variant V stands for all nine unless --variants names more.
2. Projects the full study: 27 x 200 trials (the task configs' own draws, `odyssey.search.draw_trials`:
   hidden sizes log-uniform integers in [20, 200]), grouped as the trainer groups them (one program per
   hidden bucket for the eight variants other than FGR, one for FGR; --nomix_variants: one per variant and
   bucket; min(trials_per_batch, trials) slots rounded up to whole chunks, a finished trial's slot refilled
   by the next pending one, a group running until its last trial ends, and once none is pending the live
   trials packed into the fewest chunks), each lock-step epoch costing a training epoch and a validation
   pass at the group's K (of the busy chunks' slots once packed), a test pass whenever a trial ends, one
   compile per group.
   Epochs per trial: the bound (every trial runs --max_epochs), and the estimate: --epochs_estimate for
   every trial, or the epochs of the finished trials of --store (their mean for every trial, and their
   distribution drawn per trial, which shows the cost of groups waiting on their longest trial).

Assumptions, stated in the output: costs at K between measured trial counts are interpolated linearly
(beyond the largest, time grows in proportion to K; below the smallest, it is the smallest's, or with
--below_smallest_k=proportional in proportion to K); with --measurements, buckets between measured ones cost
what is linear in N^2 between them (a + b N^2); with --quick
(--step_scale=4), tasks of more than 100 steps are trained at 1/4 and 2/4 of their mean length and the
epoch's cost extrapolated along the line through the two (a scan's cost is a + b T; the per-update part a
is large on CPU, so scaling one short length in proportion would overstate the cost 2-4x); evaluation is
measured at 2/4 and scaled in proportion to length.
Sequence lengths: every timed sequence has the task's mean length. In the trainer an update's loops run to
the longest sequence its trials present: with one data order for all trials (config.train.data_order =
"shared") that is the one sequence they all present, so the mean-length figures are its cost; with each
trial's own order (the default) it is the longest of K random sequences, 2.0-2.15x the mean on the
standard JSB file for K = 64-512 (bench/data_order_check.py), close to the longest sequence of the split.
The "padded" column scales training and evaluation by --padded_steps / mean steps (the split's longest: an
upper bound, and near the own-order cost for groups of hundreds of trials) where a task's longest is given.

3. With --bound_bandwidth=B (bytes/s), nothing is measured: every group's epoch costs what streaming its trials'
   recurrent weights at B would take (`trainer_speed.weight_stream_bound`: each time step of the forward and
   backward loops reads every trial's R, and FGR's Rg, once; evaluation one forward pass per --eval_chunk
   sequences, which a step of it reads the weights for together), in the operand
   size of --recurrent_dtype, no compile. The projection then says how long the study takes on a device of
   that bandwidth for any code that streams the weights at every step, whatever its launches or kernels:
   the floor that only weights kept on chip across steps, or fewer bytes, go below.
"""

import bisect
import collections
import heapq
import importlib.util
import json
import math
import os
import pathlib
import warnings

from absl import app
from absl import flags
import numpy as np

from odyssey import search, train
from odyssey.analysis import stats
from odyssey.data import splits as data_splits

import trainer_speed  # bench/ is the script's folder, so on sys.path

FLAGS = flags.FLAGS
_ROOT = pathlib.Path(__file__).resolve().parents[1]


# Each task's sizes: mean steps per sequence, sequences per split (DESIGN §7), CTC labels per line.
TaskShape = collections.namedtuple("TaskShape", "steps train valid test labels")
TASK_SHAPES = {
    "jsb": TaskShape(60, 229, 76, 77, 0),
    "timit": TaskShape(304, 3696, 400, 192, 0),
    # 40 characters per line is this benchmark's assumption; CTC's cost is small beside the LSTM's.
    "iam_online": TaskShape(334, 5355, 2956, 3859, 40),
}
# Sequences up to this many steps are always measured whole (JSB's are).
_WHOLE_STEPS = 100
# The longest training input of the standard JSB file (129 rows, so 128 inputs); TIMIT's and IAM-OnDB's are
# not known here and can be given with --padded_steps.
_PADDED_STEPS = {"jsb": 128}


def _define_flags():
    flags.DEFINE_enum("device", "cpu", ["cpu", "gpu", "tpu"], "Where JAX runs.")
    flags.DEFINE_bool("quick", False, "CPU-sized: TIMIT/IAM sequences measured 4x and 2x shorter, buckets "
                      "40,120,200 measured (the configs' projected, those between interpolated), K = 8.")
    flags.DEFINE_list("tasks", list(TASK_SHAPES), "Tasks to measure and project.")
    flags.DEFINE_list("buckets", None, "Hidden buckets (default: the configs' 40,80,120,160,200; --quick: "
                      "40,120,200 measured, the configs' projected). The projection pads each trial to these.")
    flags.DEFINE_list("trials", None, "Trial counts K to measure (default 1,16,64; --quick 8).")
    flags.DEFINE_list("variants", ["V"], "Variants to measure (or 'mixed', the program of the eight variants "
                      "other than FGR); the others take V's cost.")
    flags.DEFINE_bool("mix_variants", True, "Project the trainer's grouping with the eight variants other than "
                      "FGR in one program per bucket (train_trials' default); false: one program per variant.")
    flags.DEFINE_integer("trials_per_batch", None, "Slots per group in the projection (default: the configs').")
    flags.DEFINE_integer("max_epochs", 150, "The epoch bound of every trial.")
    flags.DEFINE_float("epochs_estimate", None, "Mean epochs per trial under early stopping.")
    flags.DEFINE_string("store", None, "A study store (trials.sqlite) whose finished trials' epochs give the "
                        "estimate (for every task).")
    flags.DEFINE_list("padded_steps", [f"{t}:{s}" for t, s in _PADDED_STEPS.items()],
                      "task:steps, the longest sequence the trainer pads a task's split to.")
    flags.DEFINE_integer("step_scale", None, "Above 1: measure each program at 1/step_scale and 2/step_scale of "
                         "the task's mean length and extrapolate (default 1; --quick 4).")
    flags.DEFINE_integer("sequences", None, "Synthetic training sequences per timed epoch (default 8; --quick 2).")
    flags.DEFINE_integer("eval_chunk", 16, "Sequences per evaluation step, as the trainer's eval_chunk.")
    flags.DEFINE_integer("eval_chunks", None, "Evaluation steps per timed validation pass (default 2; --quick 1).")
    flags.DEFINE_integer("repeats", 3, "Timed measurements per program; the median is used.")
    flags.DEFINE_float("min_time", 0.3, "Seconds of whole calls each measurement runs at least.")
    flags.DEFINE_list("measurements", None, "JSON files this script wrote (e.g. one per task): project from "
                      "their measurements instead of measuring again.")
    flags.DEFINE_integer("unroll", 0, "Time steps per iteration of the LSTM loops (0: "
                         "odyssey.fast_lstm.DEFAULT_UNROLL for the device's platform).")
    flags.DEFINE_enum("recurrent_dtype", "float32", ["float32", "bfloat16"], "Operand dtype of the LSTM loops' "
                      "recurrent products in the measured programs (config.train.recurrent_dtype).")
    flags.DEFINE_enum("lstm_loops", "xla", ["xla", "pallas"], "How the measured programs' LSTM loops run "
                      "(config.train.lstm_loops; pallas: odyssey.pallas_loops' kernels, interpreted on a CPU).")
    flags.DEFINE_enum("below_smallest_k", "flat", ["flat", "proportional"], "A group of fewer slots than the "
                      "smallest measured K costs that K's time (flat: an upper bound) or its time in proportion to "
                      "its slots (a lower bound, right where that K is bandwidth-bound already); compiles stay flat.")
    flags.DEFINE_float("bound_bandwidth", None, "Measure nothing: project at the streamed-weight bound of this "
                       "memory bandwidth in bytes/s (e.g. 3.35e12, an H100 SXM), in the operand size of "
                       "--recurrent_dtype.")
    flags.DEFINE_string("out", None, "Where to write the results as JSON (rewritten after each measured bucket, "
                        "with complete: false and no projections until the run ends).")
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic data and of the store resampling.")


def load_config(task: str):
    """The task's study config (configs/<task>.py, `get_config()`), as the study command reads it."""
    path = _ROOT / "configs" / f"{task}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the task config that draws the study's trials is missing")
    spec = importlib.util.spec_from_file_location(f"_config_{task}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# The standard JSB Chorales file where ../shared/data (beside the repository) holds it.
JSB_FILE = _ROOT.parent / "shared" / "data" / "jsb_chorales" / "jsb_chorales.pickle"


def load_jsb(path):
    """The JSB splits and their source: the standard file at `path`, or the offline stand-in where it is missing."""
    data = load_config("jsb").data
    if path and os.path.exists(path):
        data.path = os.path.abspath(path)
    data.source = data_splits.resolve_source(data)
    return data_splits.load_splits(data), data.source


def store_epochs(path) -> np.ndarray:
    """Epochs used by the finished trials of a study store (table trials, column epochs), read as the report
    reads the store (`odyssey.analysis.stats.load_trials`: a plain connection, so a measured study's directory
    keeps no -wal or -shm side files afterwards)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--store={path}: no such file; give a run's trials.sqlite")
    try:
        epochs = stats.load_trials(path)["epochs"]
    except ValueError as err:
        raise ValueError(f"--store={path}: cannot read table trials, column epochs ({err})") from None
    epochs = epochs[np.isfinite(epochs) & (epochs > 0)]
    if not epochs.size:
        raise ValueError(f"--store={path}: no finished trial has its epochs recorded yet")
    return epochs


def interpolate(measured: dict, k: int, below: str = "flat") -> float:
    """Seconds at K slots from {K: seconds}: linear between measured K, above the largest in proportion to K;
    below the smallest, with `below="flat"` the smallest's time (time never falls as K grows: an upper bound),
    with "proportional" in proportion to K (a lower bound for a cost a + b K with a >= 0: the right one where
    the work is bandwidth-bound at the smallest K already)."""
    ks = sorted(measured)
    if k >= ks[-1]:
        return measured[ks[-1]] * k / ks[-1]
    if k <= ks[0]:
        return measured[ks[0]] * (k / ks[0] if below == "proportional" else 1.0)
    j = bisect.bisect_left(ks, k)
    lo, hi = ks[j - 1], ks[j]
    w = (k - lo) / (hi - lo)
    return (1 - w) * measured[lo] + w * measured[hi]


def simulate_group(epochs, k):
    """The trainer's schedule of one group: k slots, trials in order, a slot refilled the epoch after its
    trial ends, lock-step epochs until the last trial ends.

    Args:
      epochs: epochs each trial of the group runs, in the order the trials start.
      k: slots.

    Returns:
      (lock-step epochs, the lock-step epochs (1-based, increasing) at whose end at least one trial ended,
      slot-epochs of live trials, the lock-step epoch at which the last trial started, live trials in each
      lock-step epoch int[lock-step epochs]).
    """
    free = [0] * k  # the last lock-step epoch each slot is busy until
    ends = set()
    spans = []
    for e in epochs:
        start = heapq.heappop(free)
        end = start + int(e)
        ends.add(end)
        spans.append((start, end))
        heapq.heappush(free, end)
    lockstep = max(free)
    live = np.zeros(lockstep + 1, int)
    for start, end in spans:
        live[start] += 1
        live[end] -= 1
    last_start = max((start for start, _ in spans), default=0)
    return lockstep, sorted(ends), int(sum(int(e) for e in epochs)), last_start, np.cumsum(live)[:lockstep]


def _chunk(task, program, bucket, k, device_kind):
    """Trials per chunk of a group of k slots of `program` at `bucket` on one device, as the trainer lays it out
    by default (FGR's larger weights make its chunks smaller on a CPU)."""
    platform = "cpu" if device_kind.startswith("cpu") else "gpu"
    return train.group_layout(task, program, bucket, k, trainer_speed.N_INPUTS[task], [platform])[1]


def _extrapolate(short, long, steps_short, steps_long, steps):
    """Seconds at `steps` from seconds at two lengths: the longer one plus the measured cost per step
    (never negative) for the remaining steps; exact for a cost a + b T, and a scan's is one."""
    if steps_long == steps:
        return long
    slope = max(0.0, (long - short) / (steps_long - steps_short))
    return long + slope * (steps - steps_long)


def _measure(task, buckets, trial_counts, variants, device, scale, on_rows=None):
    """Per (variant, bucket, K): seconds of a training epoch over the task's whole training split, of a
    validation and a test pass over the task's splits, and of the first calls (compile), at the task's mean
    length. With scale > 1, training is measured at two shorter lengths (1/scale and 2/scale of the task's)
    and extrapolated along the line through them; evaluation, a forward pass, at the longer of the two and
    scaled in proportion to length (which overstates it a little). `on_rows(rows)`, if given, is called with
    each (variant, bucket)'s rows as soon as they are measured, before they are printed."""
    shape = TASK_SHAPES[task]
    short = max(2, round(shape.steps / scale))
    whole = scale == 1 or shape.steps <= _WHOLE_STEPS or 2 * short >= shape.steps
    lengths = [shape.steps] if whole else [short, 2 * short]
    n_eval = FLAGS.eval_chunks * FLAGS.eval_chunk
    chunks = {name: math.ceil(getattr(shape, name) / FLAGS.eval_chunk) for name in ("valid", "test")}
    rows = []
    for variant in variants:
        for bucket in buckets:
            at = {}  # steps -> measure()'s output
            for steps in lengths:
                labels = max(1, round(shape.labels * steps / shape.steps)) if shape.labels else 0
                splits = trainer_speed.synthetic_splits(
                    task, steps, {"train": FLAGS.sequences, "valid": n_eval, "test": 1}, labels=labels,
                    seed=FLAGS.seed)
                timers = {k: trainer_speed.TrainerTimer(task, variant, bucket, k, splits, device,
                                                        eval_chunk=FLAGS.eval_chunk, seed=FLAGS.seed,
                                                        recurrent_dtype=FLAGS.recurrent_dtype,
                                                        lstm_loops=FLAGS.lstm_loops)
                          for k in trial_counts}
                fns = {("train", k): timer.train_epoch for k, timer in timers.items()}
                if steps == lengths[-1]:
                    fns.update({("eval", k): timer.evaluate for k, timer in timers.items()})
                at[steps] = trainer_speed.measure(fns, FLAGS.repeats, FLAGS.min_time)
                del timers
            last = at[lengths[-1]]
            block = []
            for k in trial_counts:
                train_s = [at[steps][("train", k)]["median"] for steps in lengths]
                train_s = train_s[0] if len(lengths) == 1 else _extrapolate(*train_s, *lengths, shape.steps)
                per_seq = train_s / FLAGS.sequences
                per_chunk = last[("eval", k)]["median"] / FLAGS.eval_chunks * shape.steps / lengths[-1]
                compile_s = sum(last[(part, k)]["first"] - last[(part, k)]["median"] for part in ("train", "eval"))
                row = {"task": task, "variant": variant, "bucket": bucket, "K": k, "measured_steps": lengths,
                       "updates_per_s": k / per_seq, "train_epoch_s": per_seq * shape.train,
                       "valid_s": per_chunk * chunks["valid"], "test_s": per_chunk * chunks["test"],
                       "compile_s": max(compile_s, 0.0)}
                block.append(row)
            rows += block
            if on_rows is not None:
                on_rows(block)
            for row in block:
                print(f"{task:>10} {variant:>5} N={bucket:<4} K={row['K']:<4} {row['updates_per_s']:10.1f} updates/s  "
                      f"epoch {row['train_epoch_s']:9.1f}s  valid {row['valid_s']:8.2f}s  "
                      f"compile {row['compile_s']:6.1f}s", flush=True)
    return rows


def _bound_rows(task, buckets, bandwidth, itemsize, variants=("V", "FGR")):
    """Rows in `_measure`'s format at the streamed-weight bound: per bucket and variant (V's cell stands for
    the mixed program), at K = 1; the projection scales them in proportion to K (bandwidth-bound work grows
    with K)."""
    shape = TASK_SHAPES[task]
    rows = []
    for variant in variants:
        for bucket in buckets:
            rate = trainer_speed.weight_stream_bound(task, shape.steps, bucket, variant, itemsize, bandwidth)
            # Evaluation runs --eval_chunk sequences per step of one forward pass, which reads the weights
            # once: half of an update's two passes, per chunk of sequences.
            chunks = {name: math.ceil(getattr(shape, name) / FLAGS.eval_chunk) for name in ("valid", "test")}
            rows.append({"task": task, "variant": variant, "bucket": bucket, "K": 1, "measured_steps": [],
                         "updates_per_s": rate, "train_epoch_s": shape.train / rate,
                         "valid_s": chunks["valid"] / (2 * rate), "test_s": chunks["test"] / (2 * rate),
                         "compile_s": 0.0})
    return rows


def _group_cost(rows, task, variant, bucket, k, below="flat"):
    """Seconds of one lock-step epoch's parts at K slots, from the measured rows (V's where not measured).

    A bucket that was not measured costs what `between_buckets` makes of the measured buckets around it."""
    task_rows = [r for r in rows if r["task"] == task]
    for mine in ([r for r in task_rows if r["variant"] == variant], [r for r in task_rows if r["variant"] == "V"],
                 task_rows):
        if mine and min(r["bucket"] for r in mine) <= bucket <= max(r["bucket"] for r in mine):
            break  # the first of these whose buckets hold this one
    parts = ("train_epoch_s", "valid_s", "test_s", "compile_s")

    def part_at(b, part):
        series = {r["K"]: r[part] for r in mine if r["bucket"] == b}
        if part == "compile_s":  # hardly depends on K (H100, JSB N = 40: 8.6 s at K = 64, 8.4 s at 512): flat
            return interpolate(series, min(k, max(series)), "flat")
        return interpolate(series, k, below)

    at = {b: {part: part_at(b, part) for part in parts} for b in {r["bucket"] for r in mine}}
    return {part: between_buckets({b: cost[part] for b, cost in at.items()}, bucket) for part in parts}


def between_buckets(measured: dict, bucket: int) -> float:
    """Seconds at hidden size `bucket` from {measured bucket: seconds}: the measured value, or linear in N^2
    between the measured buckets on either side (a cost a + b N^2: a step's fixed part and its weights' bytes
    or products). Outside the measured buckets is an error: the fixed part below and N^2 growth above would be
    guesses."""
    ns = sorted(measured)
    if bucket in measured:
        return measured[bucket]
    if not ns[0] < bucket < ns[-1]:
        raise ValueError(f"bucket {bucket} is outside the measured buckets {ns}")
    j = bisect.bisect_left(ns, bucket)
    lo, hi = ns[j - 1], ns[j]
    w = (bucket ** 2 - lo ** 2) / (hi ** 2 - lo ** 2)
    return (1 - w) * measured[lo] + w * measured[hi]


def project(rows, task, trials, buckets, tpb, epochs_of, balanced=False, compile_ahead=False, mix_variants=True,
            device_kind="cpu", below="flat"):
    """Projected seconds of one task's study under one rule for each trial's epochs.

    Args:
      rows: the measurements of `_measure`.
      task: the task.
      trials: `odyssey.train.Trial`s of the task's study.
      buckets: hidden buckets.
      tpb: slots per group at most.
      epochs_of: function (group index, trials) -> epochs of each trial.
      balanced: give a group of m trials ceil(m / waves) slots, waves = ceil(m / tpb), instead of
        min(tpb, m): as many waves, fewer idle slots in the last one.
      compile_ahead: the trainer compiles a group while the one before it runs (`odyssey.train.train_trials`
        does on accelerators): a group after the first waits only for the part of its compile that outlasts
        the group before it.
      mix_variants: group as `train_trials(mix_variants=...)` does (the eight variants other than FGR in one
        program per bucket).
      device_kind: the measured device (its chunk size; "cpu..." or another): once a group has no pending
        trials, its live trials are packed into the first chunks and an epoch costs what a group of the
        busy chunks' slots costs.
      below: what a group smaller than the smallest measured K costs (`interpolate`'s rule).

    Returns:
      dict of totals: seconds of training, evaluation, compilation and all; lock-step and live slot-epochs.
    """
    total = collections.Counter()
    previous_run = None
    ordered = [t for group in search.schedule(trials, buckets) for t in group]
    for g, ((program, bucket), members) in enumerate(train.group_trials(ordered, buckets, mix_variants).items()):
        k = min(tpb, len(members))
        if balanced:
            k = math.ceil(len(members) / math.ceil(len(members) / tpb))
        chunk = _chunk(task, program, bucket, k, device_kind)
        k = math.ceil(k / chunk) * chunk
        cost = _group_cost(rows, task, program, bucket, k, below)
        lockstep, test_epochs, live, last_start, live_at = simulate_group(epochs_of(g, members), k)
        # epochs after the last start: the live trials packed into ceil(live / chunk) chunks
        busy = np.where(np.arange(lockstep) >= last_start, np.ceil(live_at / chunk) * chunk, k)
        per_k = {int(b): _group_cost(rows, task, program, bucket, int(b), below) for b in np.unique(busy)}
        train_s = float(sum(per_k[int(b)]["train_epoch_s"] for b in busy))
        # a test pass runs at the end of an epoch in which trials ended, still in their slots: over that
        # epoch's busy chunks (evaluation skips the empty ones)
        eval_s = float(sum(per_k[int(b)]["valid_s"] for b in busy)
                       + sum(per_k[int(busy[e - 1])]["test_s"] for e in test_epochs))
        total["train_s"] += train_s
        total["eval_s"] += eval_s
        overlap = previous_run if compile_ahead and previous_run is not None else 0.0
        total["compile_s"] += max(0.0, cost["compile_s"] - overlap)
        previous_run = train_s + eval_s
        total["lockstep_epochs"] += lockstep
        total["slot_epochs"] += int(busy.sum())
        total["live_slot_epochs"] += live
        total["groups"] += 1
    total["total_s"] = total["train_s"] + total["eval_s"] + total["compile_s"]
    return dict(total)


def _load_measurements(paths):
    """The measurements and machine of JSON files this script wrote, merged (the first file's machine)."""
    rows, machines = [], []
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
            rows += list(data["measurements"])
            machines.append(data["machine"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise app.UsageError(f"--measurements: {path} is not a JSON written by this script ({err!r})") from None
        if data.get("complete") is False:
            print(f"--measurements: {path} holds the {len(data['measurements'])} rows of a run that stopped "
                  "before its end")
    kinds = {m["jax_device"] for m in machines}
    if len(kinds) > 1:
        raise app.UsageError(f"--measurements: the files were measured on different devices: {sorted(kinds)}")
    return {"measurements": rows, "machine": machines[0]}


def _epoch_rules(max_epochs, seed):
    """Name -> (description, function (group index, trials) -> epochs per trial) of each projection."""
    rules = {"bound": (f"every trial runs {max_epochs} epochs", lambda g, m: [max_epochs] * len(m))}
    if FLAGS.epochs_estimate is not None:
        if not 1 <= FLAGS.epochs_estimate <= max_epochs:
            raise app.UsageError(f"--epochs_estimate={FLAGS.epochs_estimate}: need 1 <= it <= {max_epochs}")
        mean = int(round(FLAGS.epochs_estimate))
        rules["estimate"] = (f"every trial runs {mean} epochs (--epochs_estimate)",
                             lambda g, m, e=mean: [e] * len(m))
    if FLAGS.store:
        used = np.minimum(store_epochs(FLAGS.store), max_epochs)
        mean = int(round(used.mean()))
        rules["store_mean"] = (f"every trial runs {mean} epochs, the mean of {used.size} finished trials of "
                               f"{FLAGS.store} (max {int(used.max())})", lambda g, m, e=mean: [e] * len(m))
        rules["store_draws"] = (
            f"each trial's epochs drawn from those {used.size} trials",
            lambda g, m: np.random.default_rng((seed, g)).choice(used, len(m)).astype(int).tolist())
    return rules


def _settings():
    quick = FLAGS.quick
    for task in FLAGS.tasks:
        if task not in TASK_SHAPES:
            raise app.UsageError(f"--tasks: unknown task {task!r}; known: {', '.join(TASK_SHAPES)}")
    buckets = [int(b) for b in FLAGS.buckets] if FLAGS.buckets else ([40, 120, 200] if quick else None)
    trial_counts = [int(k) for k in FLAGS.trials] if FLAGS.trials else ([8] if quick else [1, 16, 64])
    padded = {}
    for item in FLAGS.padded_steps:
        task, _, steps = item.partition(":")
        if task not in TASK_SHAPES or not steps.isdigit() or int(steps) < TASK_SHAPES[task].steps:
            raise app.UsageError(f"--padded_steps: {item!r} is not task:steps with steps >= the task's mean length")
        padded[task] = int(steps)
    return {"buckets": buckets, "trials": trial_counts, "padded_steps": padded,
            "step_scale": FLAGS.step_scale or (4 if quick else 1), "sequences": FLAGS.sequences or (2 if quick else 8),
            "eval_chunks": FLAGS.eval_chunks or (1 if quick else 2), "below_smallest_k": FLAGS.below_smallest_k}


def main(argv):
    del argv
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    settings = _settings()
    FLAGS.sequences = settings["sequences"]
    FLAGS.eval_chunks = settings["eval_chunks"]
    device = trainer_speed.jax_device(FLAGS.device)
    trainer_speed.set_unroll(device, FLAGS.unroll)
    info = trainer_speed.machine_info(device)
    info["load_before"] = trainer_speed.load_average()
    bound = FLAGS.bound_bandwidth
    if bound is not None and (FLAGS.measurements or not bound > 0):
        raise app.UsageError("--bound_bandwidth: give a bandwidth > 0 in bytes/s, without --measurements")
    if FLAGS.measurements:
        info = _load_measurements(FLAGS.measurements)["machine"]
    if not FLAGS.measurements:
        info["recurrent_dtype"] = FLAGS.recurrent_dtype
        if bound is None:
            info["lstm_loops"] = FLAGS.lstm_loops
    if bound is not None:
        # What is projected is a device of that bandwidth, not this one: no chunks, compiles or CPU.
        info["jax_device"] = f"bound: {bound:.3g} bytes/s, recurrent weights streamed at every step"
        info["bound_bandwidth"] = bound
    print(f"device {info['jax_device']}; host {info.get('cpu', info['host'])}, {info['cores']} cores; "
          f"jax {info['jax']}; LSTM loops {info.get('lstm_loops', 'xla')}, unrolled {info.get('unroll', 1)}; "
          f"recurrent products in {info.get('recurrent_dtype', 'float32')}\nbefore: {info['load_before']}")
    rules = _epoch_rules(FLAGS.max_epochs, FLAGS.seed)
    measured = _load_measurements(FLAGS.measurements) if FLAGS.measurements else None

    # As the trainer does on the measured device (with --measurements, that device may not be this one).
    ahead = settings["compile_ahead"] = (not info["jax_device"].startswith("cpu") if FLAGS.measurements or bound
                                         else train.default_compile_ahead(device))
    mix = settings["mix_variants"] = FLAGS.mix_variants
    rows, projections, studies = [], [], {}
    measured_so_far = []

    def keep(block):  # a run cut at its limit keeps what it measured, loadable with --measurements
        measured_so_far.extend(block)
        if FLAGS.out:
            trainer_speed.write_json(FLAGS.out, {"machine": info, "settings": settings,
                                                 "measurements": measured_so_far, "complete": False})

    for task in FLAGS.tasks:
        config = load_config(task)
        configured = [int(b) for b in config.search.hidden_buckets]
        buckets = settings["buckets"] or configured
        # --quick measures three buckets; the study it projects is the configs', between them
        measure_at = buckets
        if FLAGS.quick and not FLAGS.buckets and measured is None and min(buckets) <= min(configured) \
                and max(configured) <= max(buckets):
            buckets = configured
        tpb = FLAGS.trials_per_batch or int(config.search.trials_per_batch)
        trials = [train.Trial(**t) for t in search.draw_trials(config)]
        too_big = max(t.hidden_size for t in trials)
        if too_big > max(buckets):
            raise app.UsageError(f"--buckets: {task}'s trials reach N={too_big}, beyond the largest bucket")
        padded = [train.bucket_of(t.hidden_size, buckets) for t in trials]
        studies[task] = {"trials": len(trials), "variants": len(config.search.variants), "buckets": buckets,
                         "trials_per_batch": tpb,
                         "hidden_fill": sum(t.hidden_size ** 2 for t in trials) / sum(b * b for b in padded)}
        if bound is not None:
            # one program per variant without the mixed one: each streams its own cell's weights (three-gate
            # cells 3 N^2 of R, not V's 4 N^2)
            variants = ("V", "FGR") if FLAGS.mix_variants else tuple(config.search.variants)
            rows += _bound_rows(task, buckets, bound, 2 if FLAGS.recurrent_dtype == "bfloat16" else 4, variants)
        elif measured is None:
            rows += _measure(task, measure_at, settings["trials"], FLAGS.variants, device, settings["step_scale"],
                             on_rows=keep)
            unmeasured = sorted(set(buckets) - set(measure_at))
            if unmeasured:
                studies[task]["interpolated_buckets"] = unmeasured
        else:
            mine = [r for r in measured["measurements"] if r["task"] == task]
            have = sorted({r["bucket"] for r in mine})
            if not have or not have[0] <= min(buckets) <= max(buckets) <= have[-1]:
                raise app.UsageError(f"--measurements: {task} is measured at buckets {have}; projecting buckets "
                                     f"{sorted(buckets)} needs measured ones at or below {min(buckets)} and at or "
                                     f"above {max(buckets)} (buckets between are interpolated)")
            unmeasured = sorted(set(buckets) - set(have))
            if unmeasured:
                studies[task]["interpolated_buckets"] = unmeasured
            rows += mine
        mean_steps = TASK_SHAPES[task].steps
        for rule, (_, epochs_of) in rules.items():
            kwargs = dict(compile_ahead=ahead, mix_variants=mix, device_kind=info["jax_device"],
                          below=settings["below_smallest_k"])
            result = project(rows, task, trials, buckets, tpb, epochs_of, **kwargs)
            result.update(task=task, rule=rule,
                          balanced_total_s=project(rows, task, trials, buckets, tpb, epochs_of, True,
                                                   **kwargs)["total_s"])
            if task in settings["padded_steps"]:
                factor = settings["padded_steps"][task] / mean_steps
                result["padded_total_s"] = result["total_s"] + (factor - 1) * (result["train_s"] + result["eval_s"])
            projections.append(result)

    if not FLAGS.measurements:
        info["load_after"] = trainer_speed.load_average()
    _print_tables(rows, projections, studies, rules, settings, info)
    if FLAGS.out:
        trainer_speed.write_json(FLAGS.out, {"machine": info, "settings": settings, "studies": studies,
                                             "rules": {name: text for name, (text, _) in rules.items()},
                                             "measurements": rows, "projections": projections, "complete": True})
        print(f"wrote {FLAGS.out}")


def _hours(seconds):
    return f"{seconds / 3600:.2f}"


def _print_tables(rows, projections, studies, rules, settings, info):
    print("\nmeasured (per epoch over the task's whole splits, at its mean length):")
    header = (f"{'task':<10} {'var':>5} {'N':>4} {'K':>4} {'updates/s':>10} {'train s':>9} {'valid s':>8} "
              f"{'test s':>8} {'compile s':>9}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['task']:<10} {r['variant']:>5} {r['bucket']:>4} {r['K']:>4} {r['updates_per_s']:>10.1f} "
              f"{r['train_epoch_s']:>9.1f} {r['valid_s']:>8.2f} {r['test_s']:>8.2f} {r['compile_s']:>9.1f}")

    print("\nprojected study (hours on this device):")
    header = (f"{'task':<10} {'epochs':<12} {'groups':>6} {'trials':>6} {'N^2 fill':>8} {'slot use':>8} "
              f"{'train h':>8} {'eval h':>7} {'compile h':>9} {'total h':>8} {'padded h':>8} {'balanced h':>10}")
    print(header + "\n" + "-" * len(header))
    totals = collections.defaultdict(lambda: [0.0, 0.0, True, 0.0])
    for p in projections:
        s = studies[p["task"]]
        padded = p.get("padded_total_s")
        print(f"{p['task']:<10} {p['rule']:<12} {p['groups']:>6} {s['trials']:>6} {s['hidden_fill']:>8.2f} "
              f"{p['live_slot_epochs'] / p['slot_epochs']:>8.2f} {_hours(p['train_s']):>8} {_hours(p['eval_s']):>7} "
              f"{_hours(p['compile_s']):>9} {_hours(p['total_s']):>8} {_hours(padded) if padded else '-':>8} "
              f"{_hours(p['balanced_total_s']):>10}")
        totals[p["rule"]][0] += p["total_s"]
        totals[p["rule"]][1] += padded if padded else p["total_s"]
        totals[p["rule"]][2] &= padded is not None
        totals[p["rule"]][3] += p["balanced_total_s"]
    print("-" * len(header))
    for rule, (total, padded, all_padded, balanced) in totals.items():
        note = "" if all_padded else " (tasks without a known longest length at their mean)"
        print(f"{'all':<10} {rule:<12} total {total / 3600:.2f} h, padded {padded / 3600:.2f} h{note}, "
              f"balanced {balanced / 3600:.2f} h")

    print("\nepochs rules:")
    for name, (text, _) in rules.items():
        print(f"  {name}: {text}")
    below = "in proportion to K" if settings["below_smallest_k"] == "proportional" else "the smallest K's time"
    print(f"assumptions: recurrent products in {info.get('recurrent_dtype', 'float32')}, LSTM loops "
          f"{info.get('lstm_loops', 'xla')}; "
          f"variants {', '.join(sorted({r['variant'] for r in rows}))} measured, others at V's cost (where V was "
          f"not: the task's rows'); trial counts "
          f"{sorted({r['K'] for r in rows})} measured, other K interpolated (beyond the largest: time in proportion "
          f"to K; below the smallest: {below});")
    for task, s in studies.items():
        if s.get("interpolated_buckets"):
            measured_buckets = sorted({r["bucket"] for r in rows if r["task"] == task})
            print(f"  {task}: buckets {s['interpolated_buckets']} not measured, their costs linear in N^2 between "
                  f"the measured buckets {measured_buckets} around them;")
    print(f"  tasks over {_WHOLE_STEPS} steps trained at 1/{settings['step_scale']} and 2/{settings['step_scale']} "
          "of their mean length, the cost extrapolated along the line through the two; evaluation at the longer, "
          "scaled in proportion;"
          if settings["step_scale"] > 1 else "  sequences at the task's mean length;")
    print("  'N^2 fill' = sum of N^2 / sum of padded N^2 over the trials; 'slot use' = live slot-epochs / "
          "slot-epochs (of the busy chunks once a group is packed);")
    grouping = ("the eight variants other than FGR in one program per bucket" if settings["mix_variants"]
                else "one program per variant and bucket")
    print(f"  groups: {grouping}; chunks sized as the trainer sizes them on the measured device;")
    print("  'balanced': a group of m trials given ceil(m / waves) slots, waves = ceil(m / trials_per_batch), "
          "instead of min(trials_per_batch, m);")
    print(f"  a mean-length sequence per update is the cost with one data order for all trials "
          f"(data_order=shared; data_order=strata: ~1.025x on JSB); 'padded' scales training and evaluation to "
          f"the split's longest sequence "
          f"({settings['padded_steps'] or 'none given'}), near the cost of each trial's own order for groups of "
          f"hundreds;")
    print("  compile: every group's measured compile time" if not settings["compile_ahead"] else
          "  compile: the first group's, then the part of each group's compile that outlasts the group before it "
          "(compiled ahead, as the trainer does on accelerators).")
    trainer_speed.print_machine(info)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
