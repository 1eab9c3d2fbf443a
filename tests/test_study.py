"""End-to-end tests of the study command on configs/test.py: the pipeline, batch invariance, kills, bad input."""

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import signal
import sqlite3
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from odyssey import checkpoints, search, store

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import study_log_time  # noqa: E402  (bench/, not a package)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Trials of one config differ between runs only by float round-off: other batch neighbours, other padding.
RTOL = 1e-5
METRICS = ("val_metric", "test_metric")
EXACT = ("trial_id", "task", "variant", "hidden_size", "learning_rate", "momentum", "input_noise", "nesterov", "clip",
         "seed", "status", "epochs", "best_epoch", "n_params")

needs_trainer = pytest.mark.skipif(importlib.util.find_spec("odyssey.train") is None,
                                   reason="odyssey.train (the multi-trial trainer) is not there yet")


def load_config(name="test"):
    spec = importlib.util.spec_from_file_location(f"_config_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every study subprocess: the repository importable, one shared compilation cache."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # Restarted studies load their programs from this cache instead of compiling them again.
    out["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return out


def study_command(workdir, *flags):
    return [sys.executable, "-m", "experiments.study", "--config=configs/test.py", f"--workdir={workdir}",
            "--progress_seconds=0", *flags]


def run_study(env, workdir, *flags, timeout=300):
    return subprocess.run(study_command(workdir, *flags), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read(workdir, table="trials"):
    conn = sqlite3.connect(f"{(pathlib.Path(workdir) / store.FILENAME).as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    order = "trial_id" + (", epoch" if table == "epochs" else "")
    rows = [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    conn.close()
    return rows


def assert_same_results(rows, reference):
    """Same trials, each finished once with the same numbers (metrics to RTOL; times may differ)."""
    assert [r["trial_id"] for r in rows] == [r["trial_id"] for r in reference]
    for r, ref in zip(rows, reference):
        assert {k: r[k] for k in EXACT} == {k: ref[k] for k in EXACT}
        for k in METRICS:
            if ref[k] is None:
                assert r[k] is None, (r["trial_id"], k)
            else:
                assert r[k] == pytest.approx(ref[k], rel=RTOL), (r["trial_id"], k)


def assert_same_epochs(epochs, reference):
    assert [(e["trial_id"], e["epoch"]) for e in epochs] == [(e["trial_id"], e["epoch"]) for e in reference]
    for e, ref in zip(epochs, reference):
        for k in ("train_loss", "val_metric"):
            assert (e[k] is None) == (ref[k] is None) and (e[k] is None or e[k] == pytest.approx(ref[k], rel=RTOL))


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """One uninterrupted study on configs/test.py with the report: the run the other tests compare with."""
    workdir = tmp_path_factory.mktemp("reference")
    start = time.monotonic()
    proc = run_study(env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, time.monotonic() - start, proc


_EPOCH = re.compile(r"N<=\d+: (\d+) live trials, epoch took ")
_PROGRESS = re.compile(r"\] (\d+)/(\d+) finished \((\d+) done, (\d+) diverged\), (\d+) running, (\d+) pending "
                       r"\| best val: .* \| (\d+) updates/s \| ETA ")


def assert_progress_lines_count_whole_epochs(log, n_trials, n_train):
    """With --progress_seconds=0, one progress line after each group epoch (the trainer's "epoch took" line),
    none inside one: each line's counts follow from the epoch lines alone. Groups train one after another, so
    after an epoch of L live trials that ended E of them, L - E run and E more have finished; the rate is the
    trial epochs so far times the training sequences over the time since the first line (log stamps)."""
    events = []
    for line in log.splitlines():
        parsed = study_log_time.parse_line(line)  # absl's prefix, read as the study-time script reads it
        if parsed is None:
            continue
        when = parsed[0]
        if (m := _EPOCH.search(line)) is not None:
            events.append(("epoch", when, int(m.group(1))))
        elif (m := _PROGRESS.search(line)) is not None:
            events.append(("progress", when, tuple(int(g) for g in m.groups())))
    kinds = [e[0] for e in events]
    assert len(kinds) >= 3 and kinds == ["progress"] + ["epoch", "progress"] * ((len(kinds) - 1) // 2), kinds
    start, (ended, total, _, _, running, pending, _) = events[0][1], events[0][2]
    assert (ended, total, running, pending) == (0, n_trials, 0, n_trials)
    trial_epochs = 0
    for (_, _, live), (_, when, counts) in zip(events[1::2], events[2::2]):
        now_ended, total, done, diverged, running, pending, rate = counts
        assert total == n_trials and now_ended == done + diverged and now_ended + running + pending == n_trials
        assert running + (now_ended - ended) == live, (live, counts)
        ended, trial_epochs = now_ended, trial_epochs + live
        want = trial_epochs * n_train / (when - start).total_seconds()
        assert abs(rate - want) <= 1 + 0.05 * want, (rate, want)
    assert ended == n_trials


@needs_trainer
def test_pipeline_end_to_end(reference):
    workdir, _, proc = reference
    config = load_config()
    rows = read(workdir)
    drawn = search.draw_trials(config)
    assert [{k: r[k] for k in store.TRIAL_FIELDS} for r in rows] == [
        {**t, "nesterov": int(t["nesterov"]), "clip": int(t["clip"])} for t in drawn]
    assert {r["status"] for r in rows} <= {"done", "diverged"}
    assert sum(r["status"] == "done" for r in rows) >= len(rows) // 2, "the tiny trials should mostly train"
    epochs = read(workdir, "epochs")
    max_epochs, patience = config.train.max_epochs, config.train.patience
    for r in rows:
        mine = [e for e in epochs if e["trial_id"] == r["trial_id"]]
        assert [e["epoch"] for e in mine] == list(range(1, len(mine) + 1))
        if r["status"] != "done":
            continue
        assert len(mine) == r["epochs"] <= max_epochs
        vals = [e["val_metric"] for e in mine]
        # Early stopping from the epoch rows alone: the first best epoch, then `patience` epochs, or max_epochs.
        best = int(np.argmin(vals)) + 1
        assert r["best_epoch"] == best and r["val_metric"] == vals[best - 1]
        assert r["epochs"] == min(best + patience, max_epochs)
        assert np.isfinite(r["test_metric"]) and r["n_params"] > 0 and r["train_seconds"] > 0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["task"] == "jsb" and saved["data"]["source"] == "synthetic" and saved["data"]["path"] is None
    assert saved["search"]["variants"] == list(config.search.variants)
    assert saved["search"]["num_trials"] == config.search.num_trials
    log = (workdir / "study.log").read_text()
    assert f"[{'#' * 20}] {len(rows)}/{len(rows)} finished" in log and "updates/s | ETA" in log
    assert "best val: V " in log
    assert_progress_lines_count_whole_epochs(log, len(rows), config.data.sizes[0])
    # No ETA until a group's second epoch is timed (the third line), one from then on; nothing left at the end.
    etas = [line.rsplit("| ETA ", 1)[1] for line in log.splitlines() if "updates/s | ETA " in line]
    assert etas[:2] == ["?", "?"] and etas[-1] == "0:00:00", etas
    assert all(re.fullmatch(r"\d+:\d\d:\d\d", eta) for eta in etas[2:]), etas
    if importlib.util.find_spec("odyssey.analysis.report") is not None:
        assert (workdir / "report.md").is_file() and (workdir / "report.html").is_file()
    # A finished study started again changes nothing.
    again = run_study(os.environ | {"PYTHONPATH": str(ROOT)}, workdir, "--report=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert read(workdir) == rows and read(workdir, "epochs") == epochs


@needs_trainer
def test_one_trial_per_batch_on_one_cpu_device_gives_the_same_numbers(env, reference, tmp_path):
    """The reference shards its trials over one CPU device per core (the default); here one trial at a time
    on one device."""
    cores = len(os.sched_getaffinity(0))
    assert f"sharded over {cores} cpu device(s)" in reference[2].stderr
    proc = run_study(env, tmp_path, "--config.search.trials_per_batch=1", "--cpu_devices=1", "--report=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 trials at once per group" in proc.stderr and "sharded over 1 cpu device(s)" in proc.stderr
    assert_same_results(read(tmp_path), read(reference[0]))
    assert_same_epochs(read(tmp_path, "epochs"), read(reference[0], "epochs"))


@needs_trainer
def test_bfloat16_recurrent_products_reach_the_study(env, reference, tmp_path):
    """config.train.recurrent_dtype=bfloat16 is a study of its own (its fingerprint, its log line) whose numbers
    move from the float32 reference by bfloat16's rounding: not at all would mean the setting never reached the
    trainer, much more a broken path."""
    proc = run_study(env, tmp_path, "--config.train.recurrent_dtype=bfloat16", "--report=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "recurrent products in bfloat16" in proc.stderr
    assert "recurrent products in" not in reference[2].stderr
    assert json.loads((tmp_path / "config.json").read_text())["train"]["recurrent_dtype"] == "bfloat16"
    rows, ref = read(tmp_path), read(reference[0])
    assert [r["trial_id"] for r in rows] == [r["trial_id"] for r in ref]
    gaps = [abs(r["val_metric"] - f["val_metric"]) / f["val_metric"] for r, f in zip(rows, ref)
            if r["status"] == f["status"] == "done"]
    assert len(gaps) >= len(ref) // 2
    assert 1e-6 < max(gaps) < 5e-2, gaps


def _moved(rows, ref):
    """Whether most trials finished in both runs moved their validation metric (rows of the same trials)."""
    assert [{k: r[k] for k in store.TRIAL_FIELDS} for r in rows] == [{k: r[k] for k in store.TRIAL_FIELDS} for r in ref]
    done = [(r["val_metric"], f["val_metric"]) for r, f in zip(rows, ref) if r["status"] == f["status"] == "done"]
    assert len(done) >= len(ref) // 2
    return sum(abs(a - b) > 1e-4 * abs(b) for a, b in done) > len(done) // 2


@needs_trainer
def test_shared_and_stratified_data_orders_and_tf32_products_reach_the_study(env, reference, tmp_path):
    """config.train.data_order=shared and =strata are studies of their own (their log lines, their config.json)
    whose trials train on other data orders than the reference's and than each other's: the same trials, the
    metrics of most of them moved. The TF32 setting rides along with shared: logged and recorded (a CPU
    computes float32 products whatever the setting; the trainer's tests check that its programs carry it)."""
    shared, strata = tmp_path / "shared", tmp_path / "strata"
    proc = run_study(env, shared, "--config.train.data_order=shared", "--config.train.matmul_precision=tensorfloat32",
                     "--report=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = load_config()
    config.train.data_order = "shared"
    assert f"one data order for all trials (seed {search.order_seed(config)}), matrix products at tensorfloat32 " \
           "precision" in proc.stderr
    assert "one data order" not in reference[2].stderr and "matrix products at" not in reference[2].stderr
    recorded = json.loads((shared / "config.json").read_text())["train"]
    assert recorded["data_order"] == "shared" and recorded["matmul_precision"] == "tensorfloat32"
    proc = run_study(env, strata, "--config.train.data_order=strata", "--config.train.order_stratum=2",
                     "--report=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"each trial's own data order within strata of 2 sequences of similar length that one shared order "
            f"picks (seed {search.order_seed(config)})") in proc.stderr
    recorded = json.loads((strata / "config.json").read_text())["train"]
    assert recorded["data_order"] == "strata" and recorded["order_stratum"] == 2
    assert _moved(read(shared), read(reference[0])) and _moved(read(strata), read(reference[0]))
    assert _moved(read(strata), read(shared))  # the strata reached the trainer: not the shared order itself


def _count(workdir, query):
    try:
        conn = sqlite3.connect(f"{(pathlib.Path(workdir) / store.FILENAME).as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute(query).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # no store yet, or no tables yet
        return 0


def _count_after_kill(workdir, query):
    """`query`'s answer from a copy of a killed study's store (the file and its log), opened read-write in a
    temporary folder, so that the copy recovers the killed writer's log and the store itself stays as the kill
    left it for the study's own recovery; an unreadable copy raises instead of counting 0."""
    with tempfile.TemporaryDirectory() as folder:
        for suffix in ("", "-wal"):
            source = pathlib.Path(workdir) / (store.FILENAME + suffix)
            if source.exists():
                shutil.copyfile(source, pathlib.Path(folder) / source.name)
        if not (pathlib.Path(folder) / store.FILENAME).exists():
            return 0  # killed before it made its store
        conn = sqlite3.connect(pathlib.Path(folder) / store.FILENAME)
        try:
            if not conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'trials'").fetchone()[0]:
                return 0  # or before its first commit
            return conn.execute(query).fetchone()[0]
        finally:
            conn.close()


def _stopped(pid):
    """Whether every thread of process `pid` has stopped, or it has exited (Linux's /proc; elsewhere a pause
    stands in)."""
    tasks = pathlib.Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        time.sleep(0.1)
        return True
    try:
        # The state follows the name in parentheses, which may itself hold spaces or parentheses.
        return all((t / "stat").read_text().rpartition(")")[2].split()[0] in "tTZX" for t in tasks.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return True  # gone: nothing will write


def _stop_when(proc, workdir, query, timeout=120):
    """Stops `proc` (SIGSTOP) at a moment its store answers `query` true: polls until it does, stops the process,
    and asks again of the frozen store, for the study may have moved on between the answer and the stop (a 2-core
    machine under load: all running trials finished in that gap once). Where it has, the process goes on and the
    polling with it. Returns whether the process is stopped with the query true."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _count(workdir, query):
            proc.send_signal(signal.SIGSTOP)
            while not _stopped(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.001)
            if _count(workdir, query):
                return True
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    return False


def _log_count(workdir, pattern):
    """How many times `pattern` is in the study's log in `workdir` (0 before there is one)."""
    try:
        return len(re.findall(pattern, (pathlib.Path(workdir) / "study.log").read_text()))
    except FileNotFoundError:
        return 0


def _opened(workdir):
    """How many of the study's runs in `workdir` have opened (or created) its store, from its log."""
    return _log_count(workdir, r"\] (?:New study|Resuming): ")


@needs_trainer
def test_killed_study_resumes_to_the_uninterrupted_result(env, reference, tmp_path):
    """SIGKILLed four times at random moments while it saves checkpoints after every epoch, the study resumes
    its interrupted trials from their checkpoints (or from their first epoch where a kill came before one, or
    between a checkpoint and the store's rows) and ends with the uninterrupted study's trials and epoch rows."""
    rng = np.random.default_rng(0)
    total = len(read(reference[0], "epochs"))
    interrupted = 0
    for kill in range(4):
        opened = _opened(tmp_path)
        proc = subprocess.Popen(study_command(tmp_path, "--report=false", "--checkpoint_seconds=0"), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill == 0:
            # Anywhere in the start: imports, data, creating the store, compiling, the first epochs (with the
            # compilation cache warm, the whole study takes ~1.5 s after ~1 s of imports on 2 cores).
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            # Once this run has opened the store (and dropped the rows of the trials the last kill interrupted
            # that it cannot resume, which count until then: a target below them killed a run in its imports),
            # the moment it has written a random number of the epoch rows it still owes, give or take the
            # polling delay: between two epochs, inside a write, between trials.
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and _opened(tmp_path) == opened:
                time.sleep(0.002)
            low = _count(tmp_path, "SELECT COUNT(*) FROM epochs") + 1
            if low >= total:  # finished before a kill could land: the assertion below counts the kills that did
                break
            target = int(rng.integers(low, total))
            while (proc.poll() is None and time.monotonic() < deadline
                   and _count(tmp_path, "SELECT COUNT(*) FROM epochs") < target):
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        unfinished = _count_after_kill(tmp_path, "SELECT COUNT(*) FROM trials WHERE status IN ('pending', 'running')")
        interrupted += proc.returncode == -signal.SIGKILL and unfinished > 0
    assert interrupted >= 3, "the kills should land in the middle of the study"
    final = run_study(env, tmp_path, "--report=false", "--checkpoint_seconds=0")
    assert final.returncode == 0, final.stderr[-3000:]
    log = (tmp_path / "study.log").read_text()
    resumed = [int(n) for n in re.findall(r"interrupted trials run again \((\d+) from their checkpoints\)", log)]
    assert len(resumed) >= 3 and sum(resumed) > 0, resumed
    assert "resume from their checkpoints" in log
    assert not (tmp_path / "checkpoints").exists(), "a finished study leaves no checkpoints"
    rows = read(tmp_path)
    assert {r["status"] for r in rows} <= {"done", "diverged"}
    epochs = read(tmp_path, "epochs")
    assert len(epochs) == len({(e["trial_id"], e["epoch"]) for e in epochs}), "an epoch recorded twice"
    assert_same_results(rows, read(reference[0]))
    assert_same_epochs(epochs, read(reference[0], "epochs"))


@needs_trainer
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_study_at_an_epoch_end_with_nothing_lost(env, reference, tmp_path, signum):
    """SIGTERM or Ctrl-C's SIGINT while trials train, with checkpoints that would never save on their schedule:
    the study ends the epoch, saves its trials in training at the epoch each reached, logs its stop and exits
    with 128 + the signal's number. Run again, it ends with the uninterrupted study's trials and epoch rows,
    none trained twice (a resumed trial's first new row follows its last one)."""
    proc = subprocess.Popen(study_command(tmp_path, "--report=false", "--checkpoint_seconds=1e9"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _stop_when(proc, tmp_path, "SELECT COUNT(*) FROM trials WHERE status = 'running'"), "no trial ran"
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"study: {signal.Signals(signum).name}: stopping at the end of the epoch" in stderr
    log = (tmp_path / "study.log").read_text()
    stops = re.findall(r"\] Study stopped on request: (\d+) of (\d+) trials finished, (\d+) in training saved "
                       r"to .* \(which holds the states of (\d+) trials to resume\)", log)
    assert len(stops) == 1 and "Study finished" not in log, stops
    finished, total, saved, held = (int(g) for g in stops[0])
    assert held == saved  # a first stop: the stopped group's trials are all the files hold
    rows = read(tmp_path)
    assert total == len(rows) and finished == sum(r["status"] in ("done", "diverged") for r in rows) < total
    at = checkpoints.Checkpoints(tmp_path / "checkpoints").epochs()
    last = {}
    for e in read(tmp_path, "epochs"):
        last[e["trial_id"]] = max(last.get(e["trial_id"], 0), e["epoch"])
    running = {r["trial_id"] for r in rows if r["status"] == "running"}
    assert len(at) == saved and set(at) == running and all(at[t] == last[t] for t in running), (at, last, running)
    final = run_study(env, tmp_path, "--report=false")
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same_results(read(tmp_path), read(reference[0]))
    epochs = read(tmp_path, "epochs")
    assert len(epochs) == len({(e["trial_id"], e["epoch"]) for e in epochs}), "an epoch recorded twice"
    assert_same_epochs(epochs, read(reference[0], "epochs"))


@needs_trainer
def test_resumed_trials_keep_their_checkpoints_through_more_stops_and_fewer_slots(env, tmp_path):
    """Stopped with two trials in training, then (1) stopped again before the run that put them back trained an
    epoch, then (2) resumed with one slot, so one of them waits for it, and killed after that run's first
    checkpoint: both still resume from their checkpoints and the study ends with the uninterrupted numbers.
    Before, (1) left pending trials with epoch rows, whose first new row could not be written in any later run,
    and (2) wrote the group's file without the waiting trial's saved state. (8 epochs and a patience of 8, so
    that a resumed trial cannot end in its first epoch and free the slot before the group's first save.)"""
    longer = ("--report=false", "--config.train.max_epochs=8", "--config.train.patience=8")
    one_slot = ("--config.search.trials_per_batch=1", "--cpu_devices=1", "--checkpoint_seconds=0")
    reference = tmp_path / "reference"
    done = run_study(env, reference, *longer)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "work"
    proc = subprocess.Popen(study_command(work, *longer, "--checkpoint_seconds=1e9"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_epoch = ("SELECT COUNT(*) >= 2 AND (SELECT MAX(epoch) FROM epochs) = 1 FROM trials WHERE status = 'running' "
                   "AND trial_id IN (SELECT trial_id FROM epochs)")
    assert _stop_when(proc, work, first_epoch), "two trials should be in training"
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    saved = checkpoints.Checkpoints(work / "checkpoints").epochs()
    assert len(saved) == 2 and max(saved.values()) <= 2, saved

    # (1) put back to 'pending' with their rows, then killed before an epoch
    proc = subprocess.Popen(study_command(work, *longer, *one_slot), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    put_back = "SELECT COUNT(*) = 2 FROM trials WHERE status = 'pending' AND trial_id IN (SELECT trial_id FROM epochs)"
    assert _stop_when(proc, work, put_back), "the run should put both trials back"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoints.Checkpoints(work / "checkpoints").epochs() == saved

    # (2) one slot: one trial resumes, the other waits; killed once the group's file is written
    opened = _log_count(work, r"\] Resuming: ")
    proc = subprocess.Popen(study_command(work, *longer, *one_slot), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    first = None
    while proc.poll() is None and time.monotonic() < deadline and first is None:
        runs = re.split(r"\] Resuming: ", (work / "study.log").read_text())
        if len(runs) > opened + 1:
            found = re.search(r"checkpoint of 1 live trials .*", runs[-1])
            first = found and found.group(0)
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first and "with the saved states of 1 trials waiting to resume" in first, first
    now = checkpoints.Checkpoints(work / "checkpoints").epochs()
    assert set(now) == set(saved) and all(now[t] >= saved[t] for t in saved), (now, saved)

    final = run_study(env, work, *longer)
    assert final.returncode == 0, final.stderr[-3000:]
    resumed = re.findall(r"interrupted trials run again \((\d+) from their checkpoints\)",
                         (work / "study.log").read_text())
    # runs (1), (2) and the last; (1) may be killed between putting the trials back and logging that line
    assert len(resumed) in (2, 3) and set(resumed) == {"2"}, resumed
    assert_same_results(read(work), read(reference))
    epochs = read(work, "epochs")
    assert len(epochs) == len({(e["trial_id"], e["epoch"]) for e in epochs}), "an epoch recorded twice"
    assert_same_epochs(epochs, read(reference, "epochs"))


_SECOND_SIGNAL = """
import signal, sys, time
from experiments.study import StopOnSignal
signum = getattr(signal, sys.argv[1])
before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
stop = StopOnSignal()
try:
    with stop.installed():
        assert not stop()
        signal.raise_signal(signum)
        assert stop() and stop.signum == signum
        signal.raise_signal(signum)  # as timeout sends it: to the process, then to its process group
        print("asked", flush=True)
        time.sleep(StopOnSignal.SAME_REQUEST_SECONDS)
        signal.raise_signal(signum)
        print("survived", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
print("restored", flush=True)
"""


@pytest.mark.parametrize("name, out, code", [("SIGINT", "asked KeyboardInterrupt restored", 0),
                                             ("SIGTERM", "asked", -signal.SIGTERM)])
def test_a_second_signal_acts_as_without_the_handler(env, name, out, code):
    """StopOnSignal: the first signal only sets the request (and says so on stderr), and so does one right after
    it; one a second later does what it would without the handler: SIGINT raises KeyboardInterrupt, SIGTERM ends
    the process; the handlers before it are back afterwards."""
    proc = subprocess.run([sys.executable, "-c", _SECOND_SIGNAL, name], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == code and proc.stdout.split() == out.split(), (proc.stdout, proc.stderr[-2000:])
    assert proc.stderr.count(f"study: {name}: stopping at the end of the epoch") == 1, proc.stderr[-2000:]


@needs_trainer
def test_a_store_alone_goes_on_in_a_new_workdir(env, reference, tmp_path):
    """What a later machine does with the store an earlier one copied back (bench/gpu_check.sh, STUDY_STORE): the
    study killed while it trains, its log folded into the store file, that file alone copied to a new workdir
    (no checkpoints, no compiled programs, no log) ends there with the uninterrupted study's trials and epoch
    rows, the trials it had finished kept as they were and the interrupted ones trained from their first
    epochs."""
    first, second = tmp_path / "first", tmp_path / "second"
    finished = "SELECT COUNT(*) FROM trials WHERE status IN ('done', 'diverged')"
    running = "SELECT COUNT(*) FROM trials WHERE status = 'running'"
    both = f"SELECT ({finished}) > 0 AND ({running}) > 0"
    proc = subprocess.Popen(study_command(first, "--report=false", "--checkpoint_seconds=0"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped = _stop_when(proc, first, both)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert stopped, "the study should stop while some trials had finished and others ran"
    # Folded first, as gpu_session.sh does before it copies the store, by a read-write connection, which recovers
    # the log of a killed writer. Counted read-only right after the kill, the store once showed 2 trials finished
    # and none running where the frozen one had shown trials running (once in ~20 runs, under load; 12 tries
    # alone did not repeat it): the reader's error counts 0, or it read the main file without the log.
    conn = sqlite3.connect(first / store.FILENAME)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    kept, interrupted = _count(first, finished), _count(first, running)
    assert kept > 0 and interrupted > 0, "the kill should land while some trials had finished and others ran"
    before = {r["trial_id"]: r for r in read(first) if r["status"] in ("done", "diverged")}
    before_epochs = [e for e in read(first, "epochs") if e["trial_id"] in before]
    second.mkdir()
    (second / store.FILENAME).write_bytes((first / store.FILENAME).read_bytes())
    final = run_study(env, second, "--report=false")
    assert final.returncode == 0, final.stderr[-3000:]
    log = (second / "study.log").read_text()
    assert re.search(rf"Resuming: \d+ done, \d+ diverged kept; {interrupted} interrupted trials run again \(0 from "
                     rf"their checkpoints\)", log), log[-2000:]
    rows, epochs = read(second), read(second, "epochs")
    assert {r["trial_id"]: r for r in rows if r["trial_id"] in before} == before  # times and all
    assert [e for e in epochs if e["trial_id"] in before] == before_epochs
    assert_same_results(rows, read(reference[0]))
    assert_same_epochs(epochs, read(reference[0], "epochs"))


@needs_trainer
def test_a_study_keeps_its_compiled_programs_in_its_workdir(reference, tmp_path):
    """Without a cache named by the environment, the study command points JAX's compilation cache at
    workdir/jax_cache, so a resumed study loads its programs; the numbers are the reference's."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # JAX caches only programs that took a second or more to compile; the suite's compile in less.
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    proc = run_study(env, tmp_path, "--report=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cached = sorted(p.name for p in (tmp_path / "jax_cache").iterdir())
    assert any(name.startswith("jit_local_epoch-") for name in cached), cached
    assert_same_results(read(tmp_path), read(reference[0]))
    assert not (reference[0] / "jax_cache").exists(), "a cache the environment names is used instead"


@needs_trainer
def test_resuming_a_store_from_before_fixed_float32_products_warns(env, reference, tmp_path):
    """A store made before the trainer fixed its products at float32 (no 'products' row in its meta) may hold
    trials a GPU ran at TF32: resuming it says so; a store made now carries the row and resumes quietly."""
    assert store.read_meta(reference[0] / store.FILENAME)["products"] == "fixed"
    assert "fixed its float32 matrix products" not in reference[2].stderr
    for name in ("config.json", store.FILENAME):
        (tmp_path / name).write_bytes((reference[0] / name).read_bytes())
    conn = sqlite3.connect(tmp_path / store.FILENAME)
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'products'")
    conn.close()
    proc = run_study(env, tmp_path, "--report=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming:" in proc.stderr
    assert "started before the trainer fixed its float32 matrix products" in proc.stderr
    assert "the rest run at float32" in proc.stderr
    assert_same_results(read(tmp_path), read(reference[0]))  # nothing retrained, nothing lost


def _snapshot(workdir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(pathlib.Path(workdir).iterdir())}


@pytest.fixture
def foreign_study(tmp_path):
    """A workdir holding the store of configs/test.py with 5 trials per variant (made without training)."""
    config = load_config()
    config.search.num_trials = 5
    config.data.source = "synthetic"
    identity = search.study_identity(config)
    meta = {"fingerprint": search.fingerprint(config), "identity": json.dumps(identity, sort_keys=True)}
    with store.TrialStore.create(tmp_path / store.FILENAME, "jsb", search.draw_trials(config), meta) as st:
        st.mark_running([0])
        st.add_epoch(0, 1, 50.0, 10.0, 0.1)
    return tmp_path


@pytest.mark.parametrize("flags,message", [
    ((), "holds a study of another config (fingerprint"),
    (("--config.search.variants=('V','LSTM2')",), "config.search.variants: unknown variant 'LSTM2'; known: V, NIG"),
    (("--config.search.space.learning_rate=('log_uniform', -1e-6, 1e-2)",),
     "log_uniform needs 0 < low < high, got low=-1e-06"),
    (("--config.search.space.learning_rate=('log_uniform', 1e-2, 1e-6)",), "needs low < high, got low=0.01"),
    (("--config.data.source=standard", "--config.data.path=/nonexistent/jsb.pickle"),
     "config.data.path = '/nonexistent/jsb.pickle': nothing there"),
    (("--cpu_devices=-1",), "--cpu_devices=-1: give a positive count, or 0 for one per core"),
    (("--config.train.max_epochz=3",),
     "--config.train.max_epochz: the config has no field 'max_epochz'. Did you mean \"max_epochs\""),
    (("--config.train.patience=2", "--config.search.space.foo=1"),
     "--config.search.space.foo: the config has no field 'foo'"),
])
def test_bad_input_is_a_clear_error_that_leaves_the_store_alone(foreign_study, flags, message):
    before = _snapshot(foreign_study)
    proc = run_study(os.environ | {"PYTHONPATH": str(ROOT)}, foreign_study, *flags)
    assert proc.returncode == 1
    assert proc.stderr.startswith("study: error: ") and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if not flags:
        assert "config.search.num_trials: 5 -> 3" in proc.stderr
    assert _snapshot(foreign_study) == before


@pytest.mark.parametrize("case", ["data_is_a_directory", "data_is_empty", "workdir_under_a_file", "workdir_empty"])
def test_unreadable_data_and_impossible_workdirs_are_clear_errors(tmp_path, case):
    """The data's reader failing (a directory or an empty file where the corpus should be) and a workdir that
    cannot be made are one line of error, not a traceback; an empty --workdir does not run in the current
    directory."""
    (tmp_path / "empty.pickle").write_bytes(b"")
    (tmp_path / "a_file").write_text("x")
    workdir, flags, message = {
        "data_is_a_directory": (tmp_path / "w", ("--config.data.source=standard", f"--config.data.path={tmp_path}"),
                                "the jsb data (source standard, config.data.path = "),
        "data_is_empty": (tmp_path / "w", ("--config.data.source=standard",
                                           f"--config.data.path={tmp_path / 'empty.pickle'}"),
                          "could not be read: "),
        "workdir_under_a_file": (tmp_path / "a_file" / "w", (), f"{tmp_path / 'a_file'} is a file, not a directory"),
        "workdir_empty": ("", (), "--workdir is empty"),
    }[case]
    command = [f"--config={ROOT / 'configs' / 'test.py'}" if a == "--config=configs/test.py" else a
               for a in study_command(workdir, *flags)]  # run from tmp_path: what an empty workdir would fill
    proc = subprocess.run(command, cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("study: error: ") and message in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("empty.pickle", "a_file", "w")) == []


def test_a_second_study_on_a_busy_workdir_is_refused(tmp_path):
    import fcntl

    with open(tmp_path / "study.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running study holds it
        proc = run_study(os.environ | {"PYTHONPATH": str(ROOT)}, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"study: error: another study is running in {tmp_path}"), proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.lock"]


def test_a_workdir_that_cannot_be_locked_is_a_clear_error(tmp_path, monkeypatch):
    import errno
    import fcntl

    monkeypatch.syspath_prepend(str(ROOT))  # experiments/ is the repository's, not an installed package
    from experiments import study

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(store.StoreError, match=r"cannot lock .*study.lock \(No locks available\): a study needs a "
                                               r"local filesystem with file locks"):
        with study._workdir_lock(tmp_path):
            pass


# The data entry of the study (odyssey.data.splits).

SHARED_JSB = ROOT.parents[0] / "shared" / "data" / "jsb_chorales" / "jsb_chorales.pickle"


def test_synthetic_rolls_are_chorale_like_and_reproducible():
    from odyssey.data import splits as data_splits

    config = load_config()
    got = data_splits.load_splits(config.data)
    assert [len(got[s]) for s in data_splits.SPLITS] == list(config.data.sizes)
    for roll in [r for s in data_splits.SPLITS for r in got[s]]:
        assert roll.dtype == np.float32 and roll.shape[1] == 88
        assert config.data.lengths[0] <= roll.shape[0] <= config.data.lengths[1]
        assert set(np.unique(roll)) == {0.0, 1.0}
        assert set(roll.sum(axis=1)) <= {3.0, 4.0}
        assert not roll[:, :22].any() and not roll[:, 76:].any()
    again = data_splits.load_splits(config.data)
    assert all(np.array_equal(a, b) for s in data_splits.SPLITS for a, b in zip(got[s], again[s]))
    config.data.seed = 1
    other = data_splits.load_splits(config.data)
    assert not np.array_equal(got["train"][0][:5], other["train"][0][:5])


def test_max_sequences_keeps_the_first_n_of_each_split():
    from odyssey.data import splits as data_splits

    config = load_config()
    config.data.sizes = (7, 5, 4)
    full = data_splits.load_splits(config.data)
    config.data.max_sequences.train, config.data.max_sequences.test = 3, 1
    cut = data_splits.load_splits(config.data)
    for split, n in (("train", 3), ("valid", 5), ("test", 1)):
        assert len(cut[split]) == n
        assert all(np.array_equal(a, b) for a, b in zip(cut[split], full[split][:n]))


@pytest.mark.skipif(not SHARED_JSB.is_file(), reason=f"the standard JSB file is not at {SHARED_JSB}")
def test_a_data_path_reads_the_standard_file():
    from odyssey.data import jsb
    from odyssey.data import splits as data_splits

    config = load_config("jsb")
    config.data.path = str(SHARED_JSB)
    assert data_splits.resolve_source(config.data) == "standard"
    got = data_splits.load_splits(config.data)
    assert [len(got[s]) for s in data_splits.SPLITS] == [229, 76, 77]
    want = jsb.load(SHARED_JSB)
    assert all(np.array_equal(a, b) for s in data_splits.SPLITS for a, b in zip(got[s], want[s]))


@pytest.mark.parametrize("field,value,error,message", [
    ("source", "synthetic", ValueError, "config.data.source = 'synthetic': timit reads one of standard, standin"),
    ("source", "wav", ValueError, "config.data.source = 'wav'"),
    ("path", "/nonexistent/TIMIT", FileNotFoundError, "nothing there; it should be the root of a TIMIT copy"),
    ("sizes", (10, 0, 5), ValueError, "config.data.sizes = (10, 0, 5): expected three positive integers"),
    ("max_sequences.valid", 0, ValueError, "config.data.max_sequences.valid = 0"),
])
def test_bad_data_sections_are_refused(field, value, error, message):
    from odyssey.data import splits as data_splits

    config = load_config("timit")
    node = config.data
    *parents, last = field.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(error) as info:
        data_splits.check_data_config(config.data)
    assert message in str(info.value)


def test_a_path_with_a_source_that_ignores_it_is_refused(tmp_path):
    from odyssey.data import splits as data_splits

    config = load_config("jsb")
    config.data.source, config.data.path = "standin", str(tmp_path)
    with pytest.raises(ValueError, match="data.path = .* is set but config.data.source = 'standin' does not read it"):
        data_splits.check_data_config(config.data)
