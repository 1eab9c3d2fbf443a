"""Tests of the SQLite trial store: schema, the life of a trial, resume, and a kill at any moment."""

import dataclasses
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from odyssey import store

TRIALS_COLUMNS = [("trial_id", "INTEGER"), ("task", "TEXT"), ("variant", "TEXT"), ("hidden_size", "INTEGER"),
                  ("learning_rate", "REAL"), ("momentum", "REAL"), ("input_noise", "REAL"), ("nesterov", "INTEGER"),
                  ("clip", "INTEGER"), ("seed", "INTEGER"), ("status", "TEXT"), ("epochs", "INTEGER"),
                  ("best_epoch", "INTEGER"), ("val_metric", "REAL"), ("test_metric", "REAL"), ("n_params", "INTEGER"),
                  ("train_seconds", "REAL")]
EPOCHS_COLUMNS = [("trial_id", "INTEGER"), ("epoch", "INTEGER"), ("train_loss", "REAL"), ("val_metric", "REAL"),
                  ("seconds", "REAL")]


@dataclasses.dataclass(frozen=True)
class Result:
    trial_id: int
    status: str
    epochs: int
    best_epoch: int
    val_metric: float
    test_metric: float
    n_params: int
    train_seconds: float


def make_trials(n, seed=0):
    rng = np.random.default_rng(seed)
    return [dict(trial_id=i, variant=("V", "NIG", "FGR")[i % 3], hidden_size=int(rng.integers(20, 201)),
                 learning_rate=float(10 ** rng.uniform(-6, -2)), momentum=float(1 - 10 ** rng.uniform(-2, 0)),
                 input_noise=float(rng.uniform()), nesterov=bool(rng.integers(2)), clip=bool(rng.integers(2)),
                 seed=int(rng.integers(2**31 - 1))) for i in range(n)]


@pytest.fixture
def st(tmp_path):
    with store.TrialStore.create(tmp_path / store.FILENAME, "timit", make_trials(6), {"fingerprint": "f00d"}) as s:
        yield s


def test_schema_is_the_contract(st):
    conn = sqlite3.connect(st.path)
    info = lambda table: [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({table})")]  # noqa: E731
    assert info("trials") == TRIALS_COLUMNS
    assert info("epochs") == EPOCHS_COLUMNS
    assert info("meta") == [("key", "TEXT"), ("value", "TEXT")]
    assert [r[1] for r in conn.execute("PRAGMA table_info(epochs)") if r[5]] == ["trial_id", "epoch"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_created_trials_read_back_exactly_and_pending(st):
    rows = st.trials()
    assert [{k: r[k] for k in store.TRIAL_FIELDS} for r in rows] == [
        {**t, "nesterov": int(t["nesterov"]), "clip": int(t["clip"])} for t in make_trials(6)]
    assert all(r["status"] == "pending" and r["task"] == "timit" and r["epochs"] is None for r in rows)
    assert st.counts() == {"pending": 6, "running": 0, "done": 0, "diverged": 0}
    assert st.meta() == {"fingerprint": "f00d"} == store.read_meta(st.path)


def test_read_meta_tells_no_study_from_a_foreign_file(tmp_path):
    assert store.read_meta(tmp_path / "absent.sqlite") is None
    (tmp_path / "empty.sqlite").write_bytes(b"")
    assert store.read_meta(tmp_path / "empty.sqlite") is None
    (tmp_path / "text.sqlite").write_text("not a database at all, just some text that is long enough" * 20)
    with pytest.raises(store.StoreError, match="text.sqlite is not a readable SQLite trial store"):
        store.read_meta(tmp_path / "text.sqlite")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE runs (x)")
    other.commit()
    other.close()
    with pytest.raises(store.StoreError, match=r"other.sqlite is not a trial store: it holds the tables \['runs'\]"):
        store.read_meta(tmp_path / "other.sqlite")


def test_a_second_create_is_refused(st):
    with pytest.raises(store.StoreError, match="already holds a study"):
        store.TrialStore.create(st.path, "timit", make_trials(2), {})
    assert st.counts()["pending"] == 6


def test_life_of_a_trial(st):
    st.mark_running([1, 2])
    st.add_epoch(1, 1, 120.5, 9.5, 0.25)
    st.add_epoch(1, 2, 110.0, 9.25, 0.5)
    st.add_epoch(2, 1, float("nan"), float("inf"), 0.25)
    assert st.counts() == {"pending": 4, "running": 2, "done": 0, "diverged": 0}
    st.finish(Result(1, "done", 2, 2, 9.25, 9.75, 1234, 0.75))
    st.finish(Result(2, "diverged", 1, 0, float("nan"), float("nan"), 99, 0.25))
    rows = {r["trial_id"]: r for r in st.trials()}
    assert (rows[1]["status"], rows[1]["epochs"], rows[1]["best_epoch"], rows[1]["val_metric"], rows[1]["test_metric"],
            rows[1]["n_params"], rows[1]["train_seconds"]) == ("done", 2, 2, 9.25, 9.75, 1234, 0.75)
    assert rows[2]["status"] == "diverged" and rows[2]["val_metric"] is None and rows[2]["test_metric"] is None
    assert [(e["trial_id"], e["epoch"], e["train_loss"], e["val_metric"]) for e in st.epochs()] == [
        (1, 1, 120.5, 9.5), (1, 2, 110.0, 9.25), (2, 1, None, None)]
    assert st.best_by_variant() == {rows[1]["variant"]: 9.25}
    assert [e["epoch"] for e in st.epochs(1)] == [1, 2]


class _FailingCommit:
    """A connection whose next COMMIT fails (as a disk-full or I/O error would), everything else passed through."""

    def __init__(self, conn):
        self.conn, self.fail = conn, True

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_a_failed_commit_rolls_back_and_leaves_the_store_usable(st):
    """A COMMIT that fails raises, and its transaction's writes are rolled back; the next write works (before,
    the connection stayed inside the failed transaction and every later BEGIN failed)."""
    st._conn = _FailingCommit(st._conn)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        st.mark_running([1, 2])
    assert st.counts() == {"pending": 6, "running": 0, "done": 0, "diverged": 0}
    st.mark_running([3])
    st.add_epoch(3, 1, 1.5, 2.5, 0.1)
    assert st.counts()["running"] == 1 and [e["epoch"] for e in st.epochs(3)] == [1]


def test_a_trial_that_diverged_after_its_best_epoch_keeps_its_metrics_and_counts_among_the_best(st):
    """Trial 0 (V) diverged in epoch 3 after its best, epoch 2 (train.TrialResult keeps that epoch's metrics);
    trial 3 (V) is done and worse; trial 2 (FGR) diverged with no metric."""
    st.mark_running([0, 2, 3])
    st.finish(Result(0, "diverged", 3, 2, 8.5, 8.75, 99, 0.5))
    st.finish(Result(2, "diverged", 1, 0, float("nan"), float("nan"), 99, 0.25))
    st.finish(Result(3, "done", 4, 4, 9.0, 9.5, 99, 0.5))
    rows = {r["trial_id"]: r for r in st.trials()}
    assert (rows[0]["status"], rows[0]["best_epoch"], rows[0]["val_metric"], rows[0]["test_metric"]) == (
        "diverged", 2, 8.5, 8.75)
    assert [rows[i]["variant"] for i in (0, 2, 3)] == ["V", "FGR", "V"]
    assert st.best_by_variant() == {"V": 8.5}  # FGR's only finished trial has no metric


@pytest.mark.parametrize("bad,message", [
    (Result(0, "done", 3, 2, float("nan"), 1.0, 10, 1.0), r"needs every number; \['val_metric'\]"),
    (Result(0, "done", 3, 2, 1.0, 1.0, None, 1.0), r"needs every number; \['n_params'\]"),
    (Result(0, "done", 3, 5, 1.0, 1.0, 10, 1.0), "best epoch 5 is not within its 3 epochs"),
    (Result(0, "finished", 3, 2, 1.0, 1.0, 10, 1.0), "must be 'done' or 'diverged'"),
])
def test_a_done_trial_needs_all_its_numbers(st, bad, message):
    st.mark_running([0])
    with pytest.raises(store.StoreError, match=message):
        st.finish(bad)
    row = st.trials()[0]
    assert row["status"] == "running" and row["epochs"] is None and row["val_metric"] is None


def test_transitions_out_of_order_are_refused_all_or_nothing(st):
    with pytest.raises(store.StoreError, match="trial 0 is not running, so it cannot finish .status 'pending'"):
        st.finish(Result(0, "done", 1, 1, 1.0, 1.0, 1, 1.0))
    with pytest.raises(store.StoreError, match="epoch 1 of trial 0: the trial is not running"):
        st.add_epoch(0, 1, 1.0, 1.0, 1.0)
    st.mark_running([0])
    st.finish(Result(0, "done", 1, 1, 1.0, 1.0, 1, 1.0))
    with pytest.raises(store.StoreError, match="trial 0 is not pending, so it cannot start .status 'done'"):
        st.mark_running([3, 0])
    assert st.counts() == {"pending": 5, "running": 0, "done": 1, "diverged": 0}, "trial 3 must not have started"
    with pytest.raises(store.StoreError, match="trial 17 is not pending.*no such trial"):
        st.mark_running([17])
    st.mark_running([3])
    st.add_epoch(3, 1, 1.0, 1.0, 1.0)
    with pytest.raises(sqlite3.IntegrityError):
        st.add_epoch(3, 1, 2.0, 2.0, 2.0)
    assert [e["train_loss"] for e in st.epochs(3)] == [1.0]


def test_reset_unfinished_reruns_running_trials_from_scratch(st):
    st.mark_running([0, 1, 2])
    for i in (0, 1, 2):
        st.add_epoch(i, 1, 5.0, 4.0, 0.1)
    st.finish(Result(1, "done", 1, 1, 4.0, 4.5, 7, 0.1))
    assert st.reset_unfinished() == 2
    assert st.counts() == {"pending": 5, "running": 0, "done": 1, "diverged": 0}
    assert [(e["trial_id"], e["epoch"]) for e in st.epochs()] == [(1, 1)]
    assert st.trials("done")[0]["test_metric"] == 4.5
    assert st.reset_unfinished() == 0


def test_trials_resume_from_checkpoints_only_with_every_epoch_row_up_to_them(st):
    st.mark_running([0, 1, 2, 3])
    for i, last in ((0, 5), (1, 5), (2, 2), (3, 4)):
        for epoch in range(1, last + 1):
            if (i, epoch) != (1, 3):  # trial 1 lost its third row
                st.add_epoch(i, epoch, 5.0 - epoch, 4.0 - epoch / 10, 0.1)
    st.finish(Result(3, "done", 4, 4, 3.6, 3.7, 7, 0.4))
    # Checkpoints at: trial 0 epoch 3 (rows beyond it), 1 at 4 (a row missing), 2 at 3 (rows stop at 2),
    # 3 at 2 (finished since), 4 at 1 (never ran here), 9 (no such trial).
    saved = {0: 3, 1: 4, 2: 3, 3: 2, 4: 1, 9: 1}
    assert st.resumable(saved) == {0: 3}
    assert st.reset_unfinished(keep_epochs={0: 3}) == 3
    assert [(e["trial_id"], e["epoch"]) for e in st.epochs()] == [(0, 1), (0, 2), (0, 3), (3, 1), (3, 2), (3, 3),
                                                                  (3, 4)]
    assert st.counts() == {"pending": 5, "running": 0, "done": 1, "diverged": 0}


def test_a_trial_put_back_to_resume_and_stopped_again_still_resumes_or_starts_clean(st):
    """A run puts its interrupted trials back to 'pending' (rows kept up to their checkpoints) and is stopped
    before they train an epoch: the next run still resumes them from the same checkpoints, and a trial whose
    checkpoint is gone starts again from its first epoch without rows of its own left (before, such a trial
    kept its rows and its first epoch's row could not be written: every later run failed)."""
    st.mark_running([0, 1])
    for i in (0, 1):
        for epoch in (1, 2, 3):
            st.add_epoch(i, epoch, 5.0 - epoch, 4.0 - epoch / 10, 0.1)
    keep = st.resumable({0: 2, 1: 3})
    assert keep == {0: 2, 1: 3} and st.reset_unfinished(keep_epochs=keep) == 2
    # stopped here: both pending, with rows up to their checkpoints
    assert st.counts()["pending"] == 6 and len(st.epochs(0)) == 2 and len(st.epochs(1)) == 3
    # the next run: trial 0's checkpoint is still there, trial 1's is not
    keep = st.resumable({0: 2})
    assert keep == {0: 2} and st.reset_unfinished(keep_epochs=keep) == 2
    assert [e["epoch"] for e in st.epochs(0)] == [1, 2] and st.epochs(1) == []
    st.mark_running([0, 1])
    st.add_epoch(0, 3, 1.0, 1.0, 0.1)
    st.add_epoch(1, 1, 1.0, 1.0, 0.1)  # raised sqlite3.IntegrityError (UNIQUE) before
    assert st.reset_unfinished() == 2 and st.epochs() == []


def test_sync_flushes_the_database_and_its_log_to_disk(st, monkeypatch):
    st.mark_running([0])
    st.add_epoch(0, 1, 5.0, 4.0, 0.1)  # a commit in the write-ahead log
    wal = st.path.with_name(st.path.name + "-wal")
    assert wal.stat().st_size > 0
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    st.sync()
    assert sorted(synced) == sorted([st.path.stat().st_ino, wal.stat().st_ino])


_WRITER = textwrap.dedent("""
    import dataclasses, sys
    from odyssey import store

    @dataclasses.dataclass
    class R:
        trial_id: int; status: str; epochs: int; best_epoch: int; val_metric: float; test_metric: float
        n_params: int; train_seconds: float

    st = store.TrialStore.open(sys.argv[1])
    st.reset_unfinished()
    for row in st.trials("pending"):
        i = row["trial_id"]
        st.mark_running([i])
        print("running", i, flush=True)
        for epoch in range(1, 31):
            st.add_epoch(i, epoch, 1000.0 / epoch, 100.0 + i + 1.0 / epoch, 0.01)
        st.finish(R(i, "done", 30, 30, 100.0 + i + 1.0 / 30, 200.0 + i, 10 * i + 1, 0.3))
""")


def test_a_killed_writer_leaves_a_consistent_store_and_resumes(tmp_path):
    path = tmp_path / store.FILENAME
    store.TrialStore.create(path, "jsb", make_trials(200), {"fingerprint": "x"}).close()
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(100):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        # Kill it at a random moment of its writing: a random number of trials in (counted by its lines, so that
        # a fast disk cannot let it finish before the kill), then a random moment inside the next trial's rows.
        for _ in range(int(rng.integers(1, 30))):
            if not proc.stdout.readline():
                break
        time.sleep(rng.uniform(0.0, 0.005))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        with store.TrialStore.open(path) as st:
            for row in st.trials():
                n = len(st.epochs(row["trial_id"]))
                if row["status"] == "done":
                    assert n == 30 and row["val_metric"] == 100.0 + row["trial_id"] + 1.0 / 30
                    assert row["test_metric"] == 200.0 + row["trial_id"] and row["n_params"] is not None
                elif row["status"] == "pending":
                    assert n == 0 and row["val_metric"] is None
            if st.counts()["done"] == 200:
                break
    assert kills >= 5, "the writer should have been killed mid-write several times"
    subprocess.run([sys.executable, "-c", _WRITER, str(path)], check=True, stdout=subprocess.DEVNULL)
    with store.TrialStore.open(path) as st:
        assert st.counts() == {"pending": 0, "running": 0, "done": 200, "diverged": 0}
        epochs = st.epochs()
        assert len(epochs) == 200 * 30
        assert all(math.isclose(e["train_loss"], 1000.0 / e["epoch"], rel_tol=0, abs_tol=0) for e in epochs)
