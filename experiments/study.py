"""Runs or resumes a random-search study, then writes its report.

    python -m experiments.study --config=configs/jsb.py:quick --workdir=runs/jsb_quick

The workdir gets config.json, trials.sqlite (every trial and every epoch), study.log and the report, and
while trials train, checkpoints/ (their states, saved every --checkpoint_seconds; removed as groups end).
Started again on the same workdir, the study goes on where it stopped: finished trials are kept, trials
that were running resume from their last checkpoint with the numbers they would have had (or from their
first epoch where none was saved). A config that would draw or train other trials is refused, before
anything in the workdir is touched.
"""

import contextlib
import datetime
import fcntl
import importlib.util
import itertools
import json
import math
import os
import pathlib
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from odyssey import checkpoints, search, store
from odyssey.data import splits as data_splits

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/<task>.py file, e.g. configs/jsb.py:quick.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The study's directory: config.json, trials.sqlite, study.log, report.")
_PROGRESS_SECONDS = flags.DEFINE_float("progress_seconds", 30.0, "A progress line at the end of the first epoch "
                                        "after this many seconds, and after each epoch that ends trials.")
_REPORT = flags.DEFINE_bool("report", True, "Write the report (odyssey.analysis.report) once every trial is finished.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "JAX CPU devices to shard the trials over where no accelerator is used (0: one per core "
    "this process may use; 1: one device, one core). Speed only: the numbers agree to float round-off.")
_CHECKPOINT_SECONDS = flags.DEFINE_float(
    "checkpoint_seconds", checkpoints.DEFAULT_SECONDS, "Save the states of the trials in training at most this "
    "often (at the end of an epoch; 0: after every epoch), so a stopped study resumes them where they were. "
    "Speed only: the numbers do not change.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "Where JAX keeps the study's compiled programs, so that a resumed or repeated study "
    "loads them instead of compiling again (default: <workdir>/jax_cache; '' for none). A cache that the "
    "environment names (JAX_COMPILATION_CACHE_DIR) is used instead.")
flags.mark_flags_as_required(["config", "workdir"])

_LOG_NAME = "study.log"
_LOCK_NAME = "study.lock"
_CHECKPOINTS = "checkpoints"


class WorkdirBusy(store.StoreError):
    """Another study process holds the workdir."""


def prepare(config, workdir):
    """Checks a study before it touches anything: the config, the data path, and a store already in workdir.

    Args:
      config: the study's ConfigDict.
      workdir: the study's directory (it need not exist).

    Returns:
      (config, fingerprint, identity): a resolved copy of the config (data.source set), its fingerprint
      and its `search.study_identity`.

    Raises:
      ValueError (search.ConfigError) or FileNotFoundError: a bad config or a missing data path.
      store.StoreError: workdir holds a study of another config, or a file that is not a trial store.
    """
    config = config.copy_and_resolve_references()
    search.validate_config(config)
    config.data.source = data_splits.resolve_source(config.data)
    identity, fp = search.study_identity(config), search.fingerprint(config)
    _check_workdir(pathlib.Path(workdir), fp, identity)
    return config, fp, identity


def _check_workdir(workdir, fp, identity):
    if workdir.exists() and not workdir.is_dir():
        raise store.StoreError(f"--workdir={workdir} is a file, not a directory")
    meta = store.read_meta(workdir / store.FILENAME)
    if meta is None or meta.get("fingerprint") == fp:
        return
    diff = search.identity_diff(json.loads(meta.get("identity", "{}")), identity)
    raise store.StoreError(
        f"{workdir} holds a study of another config (fingerprint {meta.get('fingerprint')}, this config's is {fp}); "
        f"it differs in: {'; '.join(diff) or 'the config format'}. Use another --workdir, or the config of that "
        f"study (its config.json) to resume it.")


@contextlib.contextmanager
def _workdir_lock(workdir):
    # flock is released by the kernel when the process dies, so a killed study never leaves a stale lock.
    with open(workdir / _LOCK_NAME, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"another study is running in {workdir}; wait for it or stop it") from None
        yield


def _log_to_file(workdir):
    handler = logging.logging.FileHandler(workdir / _LOG_NAME)
    handler.setFormatter(logging.PythonFormatter())
    logging.get_absl_logger().addHandler(handler)
    return handler


def _write_json(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _open_store(path, config, fp, identity, ckpts):
    """Creates the store, or reopens it and puts its interrupted trials back to 'pending'.

    An interrupted trial with a checkpoint keeps its epoch rows up to the checkpoint's epoch, where it will
    resume; one whose rows stop short of its checkpoint (the store lost its last commits) loses the
    checkpoint and its rows and trains from its first epoch, as does one without a checkpoint."""
    drawn = search.draw_trials(config)
    if store.read_meta(path) is None:
        logging.info("New study: %d trials (%d variants x %d)", len(drawn), len(config.search.variants),
                     config.search.num_trials)
        ckpts.clear()  # left by a first start killed before its store was made: nothing can resume from them
        # "products": a store made before the trainer fixed its matrix products at float32 lacks the key.
        return store.TrialStore.create(path, config.task, drawn,
                                       {"fingerprint": fp, "identity": json.dumps(identity, sort_keys=True),
                                        "products": "fixed"})
    st = store.TrialStore.open(path)
    stored = [{k: row[k] for k in store.TRIAL_FIELDS} for row in st.trials()]
    norm = [{**t, "nesterov": int(t["nesterov"]), "clip": int(t["clip"])} for t in drawn]
    if stored != norm:
        st.close()
        raise store.StoreError(f"{path}: the stored trials differ from those this config draws, though the "
                               f"fingerprints agree (did the sampling code change?); use another --workdir")
    try:
        saved = ckpts.epochs()
    except checkpoints.CheckpointError as e:
        st.close()
        raise store.StoreError(str(e)) from None
    resumable = st.resumable(saved)
    ckpts.discard(set(saved) - set(resumable))
    reset = st.reset_unfinished(keep_epochs=resumable)
    counts = st.counts()
    logging.info("Resuming: %d done, %d diverged kept; %d interrupted trials run again (%d from their checkpoints), "
                 "%d pending in all", counts["done"], counts["diverged"], reset, len(resumable), counts["pending"])
    if "products" not in st.meta() and counts["done"] + counts["diverged"]:
        logging.warning("This study was started before the trainer fixed its float32 matrix products at its "
                        "config's precision: trials it finished on a GPU with TF32 (NVIDIA Ampere or later) ran at "
                        "JAX's default, TF32, whatever the config says; the rest run at %s. On a CPU nothing "
                        "differs. For uniform numbers, run the config again in a new --workdir.",
                        config.train.get("matmul_precision", "float32"))
    return st


def _epochs_survival(finished, live, max_epochs):
    """P(a trial trains more than e epochs), e = 0..max_epochs, estimated from the trials so far.

    The Kaplan-Meier estimate: `finished` holds the epochs of the trials that ended, `live` those so far of the
    trials still training, each of which is known to last longer (a mean over the finished trials alone would
    count the early stops first). Past the last epoch any trial reached, the estimate holds; at max_epochs it
    is 0, where every trial ends.
    """
    reached = [0] * (max_epochs + 1)  # trials that trained at least e epochs
    ended = [0] * (max_epochs + 1)
    for epochs in finished:
        if epochs >= 1:
            reached[min(epochs, max_epochs)] += 1
            ended[min(epochs, max_epochs)] += 1
    for epochs in live:
        if epochs >= 1:
            reached[min(epochs, max_epochs)] += 1
    for e in range(max_epochs - 1, 0, -1):
        reached[e] += reached[e + 1]
    survival = [1.0] * (max_epochs + 1)
    for e in range(1, max_epochs + 1):
        survival[e] = survival[e - 1] * (1.0 - ended[e] / reached[e]) if reached[e] else survival[e - 1]
    survival[max_epochs] = 0.0
    return survival


class _Progress:
    """Trials done/running/pending, the best validation metric per variant, updates/s and an ETA, logged.

    A line is logged only between two epochs of a group, never in the middle of an epoch's callbacks (where
    its counts and rate would miss the epoch's other trials): after an epoch that ended trials, or when
    `every_s` seconds have passed since the last line.

    The ETA prices each trial's epochs left at the seconds a trial epoch took in its own group (program and
    hidden bucket) after the group's first epoch, which holds its compiling. A group not yet so measured is
    priced from the nearest one that is, of the same program where there is one, scaled by the square of the
    bucket ratio (the recurrent weights' size); each group yet to start adds the compiling time the started
    ones took on average. Groups run smallest bucket first, so one rate for the whole run would price the large
    buckets at the small ones' speed: on an H100 it read 2 minutes for a JSB study estimated at 16-19.
    The epochs each unfinished trial has left follow from how long the trials so far lasted
    (`_epochs_survival`); before any has ended, every trial is expected to run to `max_epochs`. There is no
    ETA ("?") until some group has trained its second epoch.
    """

    def __init__(self, st, variants, n_train, max_epochs, every_s, groups=None):
        """groups: (program, bucket) -> the trials left to train (`odyssey.train.group_trials`); None: no ETA."""
        self._counts = st.counts()
        self._best = st.best_by_variant()
        finished = [r["epochs"] for r in st.trials() if r["status"] in ("done", "diverged") and r["epochs"]]
        self._finished_epochs = finished
        self._variants, self._n_train, self._max_epochs, self._every = variants, n_train, max_epochs, every_s
        self._variant_of = {r["trial_id"]: r["variant"] for r in st.trials()}
        self._group_of = {t.trial_id: key for key, members in (groups or {}).items() for t in members}
        self._pending_in = {key: len(members) for key, members in (groups or {}).items()}
        self._priced = groups is not None
        self._first, self._later, self._open = {}, {}, {}  # group -> [seconds, trial epochs]
        self._live = {}
        self._trial_epochs = 0
        self._ended_since_line = self._epochs_since_line = 0
        self._start = self._last = time.monotonic()

    def started(self, trial_ids):
        for i in trial_ids:
            self._live[i] = 0
            if i in self._group_of:
                self._pending_in[self._group_of[i]] -= 1
        self._counts["pending"] -= len(trial_ids)
        self._counts["running"] += len(trial_ids)

    def epoch(self, trial_id, epoch, seconds=0.0):
        """seconds: the trial's share of the epoch's time (the trainer's on_epoch gives it)."""
        self._live[trial_id] = epoch
        self._trial_epochs += 1
        self._epochs_since_line += 1
        if trial_id in self._group_of:
            spent = self._open.setdefault(self._group_of[trial_id], [0.0, 0])
            spent[0] += seconds
            spent[1] += 1

    def finished(self, result):
        self._live.pop(result.trial_id, None)
        self._counts["running"] -= 1
        self._counts[result.status] += 1
        self._finished_epochs.append(result.epochs or 0)
        self._ended_since_line += 1
        variant = self._variant_of[result.trial_id]
        if result.status == "done" and result.val_metric < self._best.get(variant, float("inf")):
            self._best[variant] = result.val_metric

    def group_epoch(self):
        """A group's epoch is over, with its trials' epochs and results counted."""
        for key, (seconds, count) in self._open.items():
            table = self._later if key in self._first else self._first
            spent = table.setdefault(key, [0.0, 0])
            spent[0] += seconds
            spent[1] += count
        self._open = {}
        if self._ended_since_line or time.monotonic() - self._last >= self._every:
            self.log()

    def flush(self):
        """Logs a last line unless the last one already holds every epoch and result."""
        if self._epochs_since_line or self._ended_since_line:
            self.log()

    @staticmethod
    def _price(key, steady):
        """Seconds per trial epoch of group `key`: its own epochs after the first, else the nearest group's,
        scaled; None before any group has trained a second epoch."""
        if key in steady or not steady:
            return steady.get(key)
        program, bucket = key
        near = min(steady, key=lambda k: (k[0] != program, abs(math.log(k[1] / bucket)), k))
        return steady[near] * (bucket / near[1]) ** 2

    def eta_seconds(self):
        """The seconds the unfinished trials are expected to take, or None before a group's second epoch."""
        if not self._priced:
            return None
        steady = {k: seconds / count for k, (seconds, count) in self._later.items() if count}
        survival = _epochs_survival(self._finished_epochs, self._live.values(), self._max_epochs)
        beyond = list(itertools.accumulate(reversed(survival)))[::-1]  # beyond[e] = sum of survival[e:]
        epochs_left = {key: n * beyond[0] for key, n in self._pending_in.items()}
        for trial_id, epoch in self._live.items():
            key, epoch = self._group_of[trial_id], min(epoch, self._max_epochs)
            left = beyond[epoch] / survival[epoch] if survival[epoch] > 0 else 1.0  # more epochs, given this many
            epochs_left[key] = epochs_left.get(key, 0) + max(left, 1.0)
        left = 0.0
        for key, epochs in epochs_left.items():
            if epochs:
                price = self._price(key, steady)
                if price is None:
                    return None
                left += epochs * price
        # A group's first epoch took longer than its later ones by its compiling (none where the trainer compiled
        # it ahead): each group yet to start is expected to take as much more as the measured ones did on average.
        extra = [max(self._first[k][0] - self._first[k][1] * steady[k], 0.0) for k in steady if k in self._first]
        to_start = [k for k, n in self._pending_in.items() if n and k not in self._first and k not in self._open]
        if extra:
            left += len(to_start) * sum(extra) / len(extra)
        return left

    def line(self):
        c = self._counts
        total = sum(c.values())
        ended = c["done"] + c["diverged"]
        bar = "#" * round(20 * ended / max(total, 1))
        best = " ".join(f"{v} {self._best[v]:.4g}" if v in self._best else f"{v} -" for v in self._variants)
        elapsed = time.monotonic() - self._start
        rate = self._trial_epochs / elapsed if elapsed > 0 else 0.0
        left = self.eta_seconds()
        eta = "?" if left is None else str(datetime.timedelta(seconds=round(left)))
        return (f"[{bar:<20}] {ended}/{total} finished ({c['done']} done, {c['diverged']} diverged), "
                f"{c['running']} running, {c['pending']} pending | best val: {best} | "
                f"{rate * self._n_train:.0f} updates/s | ETA {eta}")

    def log(self):
        self._last = time.monotonic()
        self._ended_since_line = self._epochs_since_line = 0
        logging.info("%s", self.line())


def _train_pending(st, config, splits, every_s, ckpts):
    import jax
    from odyssey import train  # the trainer pulls in the whole JAX stack; import it only to train

    trials = [train.Trial(**{k: (bool(r[k]) if k in ("nesterov", "clip") else r[k]) for k in store.TRIAL_FIELDS})
              for r in st.trials("pending")]
    groups = search.schedule(trials, tuple(config.search.hidden_buckets))
    mix = config.search.get("mix_variants", True)
    programs = train.group_trials([t for g in groups for t in g], tuple(config.search.hidden_buckets), mix)
    progress = _Progress(st, tuple(config.search.variants), len(splits["train"]), config.train.max_epochs, every_s,
                         programs)
    progress.log()
    started = set()

    def start(trial_id):
        # A trial counts as running from its first epoch: the trainer fills its slots from the queue itself.
        if trial_id not in started:
            st.mark_running([trial_id])
            started.add(trial_id)
            progress.started([trial_id])

    def on_epoch(trial_id, epoch, train_loss, val_metric, seconds):
        start(trial_id)
        st.add_epoch(trial_id, epoch, train_loss, val_metric, seconds)
        progress.epoch(trial_id, epoch, seconds)

    def on_result(result):
        start(result.trial_id)
        st.finish(result)
        progress.finished(result)

    if trials:
        devices = jax.devices()
        recurrent = config.train.get("recurrent_dtype", "float32")
        order_seed = search.order_seed(config)
        precision = config.train.get("matmul_precision", "float32")
        loops = config.train.get("lstm_loops", "xla")
        logging.info("Training %d trials in %d groups (program x hidden bucket), at most %d trials at once per group, "
                     "sharded over %d %s device(s)%s%s%s%s", len(trials), len(programs), config.search.trials_per_batch,
                     len(devices), devices[0].platform,
                     "" if recurrent == "float32" else f", recurrent products in {recurrent}",
                     "" if order_seed is None else f", one data order for all trials (seed {order_seed})",
                     "" if precision == "float32" else f", matrix products at {precision} precision",
                     "" if loops == "xla" else f", LSTM loops as {loops} kernels")
        train.train_trials(config.task, splits, [t for g in groups for t in g], max_epochs=config.train.max_epochs,
                           patience=config.train.patience, trials_per_batch=config.search.trials_per_batch,
                           hidden_buckets=tuple(config.search.hidden_buckets),
                           trials_per_chunk=config.search.get("trials_per_chunk"), mix_variants=mix, on_epoch=on_epoch,
                           on_result=on_result, on_group_epoch=progress.group_epoch, recurrent_dtype=recurrent,
                           order_seed=order_seed, matmul_precision=precision, checkpoints=ckpts, lstm_loops=loops)
    unfinished = [r["trial_id"] for r in st.trials() if r["status"] in ("pending", "running")]
    if unfinished:
        raise RuntimeError(f"the trainer returned without a result for trials {unfinished}")
    progress.flush()


def run_study(config, workdir, *, progress_seconds=30.0, report=True,
              checkpoint_seconds=checkpoints.DEFAULT_SECONDS):
    """Runs or resumes the study of `config` in `workdir`, then writes its report.

    Args:
      config: the study's ConfigDict (configs/<task>.py).
      workdir: the study's directory; created if needed.
      progress_seconds: a progress line is logged at the end of the first group epoch this many seconds after
        the last one, and after each epoch that ends trials (never inside an epoch's bookkeeping).
      report: whether to write the report at the end (when odyssey.analysis.report exists).
      checkpoint_seconds: the most seconds between two saves of the trials in training (`odyssey.checkpoints`,
        in workdir/checkpoints; 0: after every epoch).

    Raises:
      as `prepare`, before anything in workdir is touched.
    """
    workdir = pathlib.Path(workdir)
    config, fp, identity = prepare(config, workdir)
    ckpts = checkpoints.Checkpoints(workdir / _CHECKPOINTS, checkpoint_seconds)
    workdir.mkdir(parents=True, exist_ok=True)
    with _workdir_lock(workdir):
        handler = _log_to_file(workdir)
        try:
            # Checked again under the lock: another study may have started here since `prepare`.
            _check_workdir(workdir, fp, identity)
            logging.info("Study %s of %s in %s", fp, config.task, workdir)
            splits = data_splits.load_splits(config.data)
            with _open_store(workdir / store.FILENAME, config, fp, identity, ckpts) as st:
                _write_json(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))
                _train_pending(st, config, splits, progress_seconds, ckpts)
                counts = st.counts()
            ckpts.clear()  # every trial has finished: its checkpoints are gone, and so goes the empty directory
            logging.info("Study finished: %d done, %d diverged", counts["done"], counts["diverged"])
            if report:
                _write_report(workdir)
        finally:
            logging.get_absl_logger().removeHandler(handler)
            handler.close()


def _write_report(workdir):
    if importlib.util.find_spec("odyssey.analysis.report") is None:
        logging.warning("odyssey.analysis.report is missing: no report written")
        return
    from odyssey.analysis import report
    path = report.write_report(workdir)
    logging.info("Report: %s", path)


def _use_compilation_cache(flag, workdir):
    """Points JAX's persistent compilation cache at `flag` (None: workdir/jax_cache; '': none), unless the
    environment or the caller has set one. A group's programs take 12-25 s to compile on an H100 (the first
    group of a study waits for its own), a few seconds each on a CPU; a resumed study finds them there."""
    import jax
    if flag == "" or os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", os.fspath(pathlib.Path(workdir) / "jax_cache") if flag is None
                      else flag)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CPU_DEVICES.value < 0:
        sys.exit(f"study: error: --cpu_devices={_CPU_DEVICES.value}: give a positive count, or 0 for one per core")
    if not _CHECKPOINT_SECONDS.value >= 0:
        sys.exit(f"study: error: --checkpoint_seconds={_CHECKPOINT_SECONDS.value}: give seconds >= 0 (0: after "
                 f"every epoch)")
    try:
        prepare(_CONFIG.value, _WORKDIR.value)
    except (ValueError, FileNotFoundError, store.StoreError) as e:
        # A config or workdir problem: the message says what to change; a traceback would only hide it.
        sys.exit(f"study: error: {e}")
    from odyssey import train
    train.use_cpu_cores(_CPU_DEVICES.value or None)
    _use_compilation_cache(_COMPILATION_CACHE.value, _WORKDIR.value)
    try:
        run_study(_CONFIG.value, _WORKDIR.value, progress_seconds=_PROGRESS_SECONDS.value, report=_REPORT.value,
                  checkpoint_seconds=_CHECKPOINT_SECONDS.value)
    except WorkdirBusy as e:
        sys.exit(f"study: error: {e}")


if __name__ == "__main__":
    app.run(main)
