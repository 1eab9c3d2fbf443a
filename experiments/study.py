"""Runs or resumes a random-search study, then writes its report.

    python -m experiments.study --config=configs/jsb.py:quick --workdir=runs/jsb_quick

The workdir gets config.json, trials.sqlite (every trial and every epoch), study.log, study.lock (held while
a study runs there) and the report, and while trials train, checkpoints/ (their states, saved every
--checkpoint_seconds; removed as groups end). Started again on the same workdir, the study goes on where it
stopped: finished trials are kept, interrupted ones (running, or put back to pending by a run stopped before
their next epoch) resume from their last checkpoint with the numbers they would have had (or from their
first epoch where none was saved). A config that would draw or train other trials is refused, before
anything in the workdir is touched.

SIGTERM (a time limit's, a scheduler's preemption) or Ctrl-C stops the study at the end of the epoch in
training: it saves the trials in training whatever --checkpoint_seconds says, logs "Study stopped" and exits
with status 128 + the signal's number (143, 130), so that the next run loses nothing but that epoch's rest.
A second signal a second or more later stops it at once, as a kill does (the next run then goes on from the
last checkpoint).
"""

import contextlib
import fcntl
import importlib.util
import json
import os
import pathlib
import signal
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from odyssey import checkpoints, progress as study_progress, search, store
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


class DataUnreadable(ValueError):
    """The study's data could not be read (a reader's error, its type and message kept)."""


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
    _check_workdir(workdir, fp, identity)
    return config, fp, identity


def _check_workdir(workdir, fp, identity):
    if not str(workdir).strip():
        raise store.StoreError("--workdir is empty: give the study's directory")
    workdir = pathlib.Path(workdir)
    for path in (workdir, *workdir.parents):  # the nearest that exists must be a directory
        if path.exists():
            if not path.is_dir():
                raise store.StoreError(f"--workdir={workdir}: {path} is a file, not a directory")
            break
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
        except OSError as e:  # e.g. a network filesystem without flock (ENOLCK, EOPNOTSUPP)
            raise store.StoreError(f"cannot lock {workdir / _LOCK_NAME} ({e.strerror or e}): a study needs a "
                                   "local filesystem with file locks (its store, SQLite in WAL mode, does too); "
                                   "put --workdir on one") from None
        yield


def _log_to_file(workdir):
    handler = logging.logging.FileHandler(workdir / _LOG_NAME)
    handler.setFormatter(logging.PythonFormatter())
    logging.get_absl_logger().addHandler(handler)
    return handler


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


def _train_pending(st, config, splits, every_s, ckpts, stop=None):
    import jax
    from odyssey import layout, nets, tasks, train  # the trainer pulls in the whole JAX stack; import it only to train

    trials = [train.Trial(**{k: (bool(r[k]) if k in ("nesterov", "clip") else r[k]) for k in store.TRIAL_FIELDS})
              for r in st.trials("pending")]
    groups = search.schedule(trials, tuple(config.search.hidden_buckets))
    mix = config.search.get("mix_variants", True)
    programs = train.group_trials([t for g in groups for t in g], tuple(config.search.hidden_buckets), mix)
    devices = jax.devices()
    spec = tasks.get_task(config.task)
    n_in = tasks.to_arrays(spec, splits["train"][:1]).xs.shape[-1]
    layouts = {}
    for (program, bucket), members in programs.items():  # as the trainer will lay the groups out (for the ETA)
        k = min(config.search.trials_per_batch, len(members))
        slots, chunk = train.group_layout(spec, program, bucket, k, n_in, devices,
                                          config.search.get("trials_per_chunk"))
        params = nets.count_params(layout.cell_of(program), spec.kind, n_in, bucket, spec.n_out)
        layouts[program, bucket] = study_progress.GroupLayout(slots, chunk * len(devices), params)
    progress = study_progress.Progress(st, tuple(config.search.variants), len(splits["train"]),
                                       config.train.max_epochs, every_s, programs, layouts)
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
        recurrent = config.train.get("recurrent_dtype", "float32")
        order_seed, stratum = search.order_seed(config), search.order_stratum(config)
        precision = config.train.get("matmul_precision", "float32")
        loops = config.train.get("lstm_loops", "xla")
        order_note = ("" if order_seed is None else f", one data order for all trials (seed {order_seed})"
                      if stratum is None else f", each trial's own data order within strata of {stratum} sequences "
                      f"of similar length that one shared order picks (seed {order_seed})")
        # A group's slots are min(trials_per_batch, its trials) rounded up to whole chunks on every device.
        most = max(lay.slots for lay in layouts.values())
        logging.info("Training %d trials in %d groups (program x hidden bucket), at most %d trials at once per group "
                     "(trials_per_batch %d%s), sharded over %d %s device(s)%s%s%s%s", len(trials), len(programs), most,
                     config.search.trials_per_batch,
                     "" if most <= config.search.trials_per_batch else ", rounded up to whole chunks on each device",
                     len(devices), devices[0].platform,
                     "" if recurrent == "float32" else f", recurrent products in {recurrent}",
                     order_note,
                     "" if precision == "float32" else f", matrix products at {precision} precision",
                     "" if loops == "xla" else f", LSTM loops as {loops} kernels")
        try:
            train.train_trials(config.task, splits, [t for g in groups for t in g],
                               max_epochs=config.train.max_epochs, patience=config.train.patience,
                               trials_per_batch=config.search.trials_per_batch,
                               hidden_buckets=tuple(config.search.hidden_buckets),
                               trials_per_chunk=config.search.get("trials_per_chunk"), mix_variants=mix,
                               on_epoch=on_epoch, on_result=on_result, on_group_epoch=progress.group_epoch,
                               recurrent_dtype=recurrent, order_seed=order_seed, order_stratum=stratum,
                               matmul_precision=precision, checkpoints=ckpts, lstm_loops=loops, stop=stop)
        except train.Stopped as e:
            progress.flush()
            counts = st.counts()
            held = len(ckpts.epochs())  # the stopped group's and any interrupted earlier that wait to resume
            logging.info("Study stopped on request: %d of %d trials finished, %d in training saved to %s (which "
                         "holds the states of %d trials to resume); run the same command to go on",
                         counts["done"] + counts["diverged"], sum(counts.values()), e.saved, ckpts.directory, held)
            raise
    unfinished = [r["trial_id"] for r in st.trials() if r["status"] in ("pending", "running")]
    if unfinished:
        raise RuntimeError(f"the trainer returned without a result for trials {unfinished}")
    progress.flush()


def run_study(config, workdir, *, progress_seconds=30.0, report=True,
              checkpoint_seconds=checkpoints.DEFAULT_SECONDS, stop=None):
    """Runs or resumes the study of `config` in `workdir`, then writes its report.

    Args:
      config: the study's ConfigDict (configs/<task>.py).
      workdir: the study's directory; created if needed.
      progress_seconds: a progress line is logged at the end of the first group epoch this many seconds after
        the last one, and after each epoch that ends trials (never inside an epoch's bookkeeping).
      report: whether to write the report at the end (when odyssey.analysis.report exists).
      checkpoint_seconds: the most seconds between two saves of the trials in training (`odyssey.checkpoints`,
        in workdir/checkpoints; 0: after every epoch).
      stop: None, or a callable with no arguments: once it returns True, the study saves its trials in
        training at the end of their epoch and stops (`odyssey.train.train_trials`' stop).

    Raises:
      as `prepare`, before anything in workdir is touched.
      WorkdirBusy: another study process holds workdir.
      DataUnreadable: the data's reader failed (workdir then holds study.lock and study.log, which says so).
      odyssey.store.StoreError: the store or a checkpoint file in workdir cannot be read or used.
      odyssey.train.Stopped: `stop` asked to stop; run again to go on.
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
            try:
                splits = data_splits.load_splits(config.data)
            except Exception as e:  # a broken corpus fails in its reader, with any error a file can give
                where = f", config.data.path = {config.data.path!r}" if config.data.get("path") else ""
                raise DataUnreadable(f"the {config.task} data (source {config.data.source}{where}) could not be "
                                     f"read: {type(e).__name__}: {e}") from e
            with _open_store(workdir / store.FILENAME, config, fp, identity, ckpts) as st:
                ckpts.before_save = st.sync  # a checkpoint on disk is never ahead of the store's rows
                store.write_whole(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))
                _train_pending(st, config, splits, progress_seconds, ckpts, stop)
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


class StopOnSignal:
    """The study's stop request: the first SIGTERM or SIGINT (Ctrl-C) while `installed` sets it (the study then
    stops at the end of the epoch in training, its trials saved); one that comes `SAME_REQUEST_SECONDS` or more
    after it acts as it would without this (SIGTERM's default ends the process, SIGINT raises
    KeyboardInterrupt). Signals closer together are one request: coreutils' `timeout` sends its SIGTERM to the
    process and then to its process group, which holds the process too. Called, it says whether a stop was
    asked for; `signum` is the first signal's number."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    SAME_REQUEST_SECONDS = 1.0

    def __init__(self):
        self.signum = None
        self._first = None
        self._previous = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            if time.monotonic() - self._first >= self.SAME_REQUEST_SECONDS:
                signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
                signal.raise_signal(signum)
            return
        self.signum, self._first = signum, time.monotonic()
        # Straight to stderr: a handler runs between two bytecodes of the main thread, which may hold the log's lock.
        os.write(2, f"study: {signal.Signals(signum).name}: stopping at the end of the epoch in training, once its "
                    f"trials are saved (again, a second or more later, to stop at once)\n".encode())

    @contextlib.contextmanager
    def installed(self):
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


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
    stop = StopOnSignal()
    try:
        with stop.installed():
            run_study(_CONFIG.value, _WORKDIR.value, progress_seconds=_PROGRESS_SECONDS.value, report=_REPORT.value,
                      checkpoint_seconds=_CHECKPOINT_SECONDS.value, stop=stop)
    except (store.StoreError, DataUnreadable) as e:  # the workdir busy, a store or checkpoint unreadable, bad data
        sys.exit(f"study: error: {e}")
    except train.Stopped:
        # Leave at once: the next group's program may be compiling in a background thread, which a normal exit
        # waits for (12-25 s on an H100, past a time limit's grace before its SIGKILL). Everything is saved.
        logging.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + stop.signum)


def parse_flags(argv):
    """absl's flag parsing, with a --config.<field> override that names no field of the config as one line of
    error (ml_collections raises a KeyError or AttributeError from inside the parser, a traceback otherwise)."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        inner = e
        while isinstance(inner, BaseException) and inner.args:
            inner = inner.args[0]
        lines = str(inner).splitlines() or [""]
        missing = lines[0].strip("'\"")
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        named = [o for o in overrides if missing and missing in o.split(".")] or overrides
        hint = " ".join(line.strip() for line in lines[1:])
        sys.exit(f"study: error: {', '.join(named)}: the config has no field {missing!r}" + (f". {hint}" if hint
                                                                                             else ""))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
