"""The trial store: one SQLite file per study, a row per trial and a row per (trial, epoch), safe to kill."""

import contextlib
import math
import os
import pathlib
import sqlite3

FILENAME = "trials.sqlite"
STATUSES = ("pending", "running", "done", "diverged")
TRIAL_FIELDS = ("trial_id", "variant", "hidden_size", "learning_rate", "momentum", "input_noise", "nesterov",
                "clip", "seed")
RESULT_FIELDS = ("epochs", "best_epoch", "val_metric", "test_metric", "n_params", "train_seconds")

_SCHEMA = """
CREATE TABLE trials (
    trial_id INTEGER PRIMARY KEY, task TEXT NOT NULL, variant TEXT NOT NULL, hidden_size INTEGER NOT NULL,
    learning_rate REAL NOT NULL, momentum REAL NOT NULL, input_noise REAL NOT NULL, nesterov INTEGER NOT NULL,
    clip INTEGER NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'diverged')),
    epochs INTEGER, best_epoch INTEGER, val_metric REAL, test_metric REAL, n_params INTEGER, train_seconds REAL);
CREATE TABLE epochs (
    trial_id INTEGER NOT NULL, epoch INTEGER NOT NULL, train_loss REAL, val_metric REAL, seconds REAL,
    PRIMARY KEY (trial_id, epoch));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""
_TABLES = {"trials", "epochs", "meta"}


class StoreError(RuntimeError):
    """A store that is not a trial store, or a write that would break its invariants."""


def _tables(conn):
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def read_meta(path):
    """The meta table of the store at `path`; None if there is no study there. Reads only.

    A file that exists but holds no tables (a first start killed before its first commit) counts as no study.
    The connection is a plain one, not `mode=ro`: a read-only connection to a WAL file leaves the -wal and
    -shm side files behind, a plain one removes them again when it closes.

    Args:
      path: the `trials.sqlite` file.

    Returns:
      dict str -> str, or None.

    Raises:
      StoreError: the file is not SQLite, or holds tables of something else.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(os.fspath(path))
        try:
            tables = _tables(conn)
            if not tables:
                return None
            if tables != _TABLES:
                raise StoreError(f"{path} is not a trial store: it holds the tables {sorted(tables)}")
            return dict(conn.execute("SELECT key, value FROM meta"))
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is not a readable SQLite trial store ({e})") from e


def _real(x):
    """Python float for SQLite; NaN and infinities become NULL (SQLite has no NaN)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def write_whole(path, text):
    """Writes `text` to `path` through a temporary file beside it and a rename: a reader, or a kill at any
    moment, finds the previous whole file or the new one, never a part of one (config.json, the report, the
    benchmarks' JSON)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class TrialStore:
    """An open trial store. Every write is one transaction, so a kill at any moment leaves a consistent file.

    The file is in WAL mode with synchronous=NORMAL: a kill of the process loses no commit; a power cut may
    lose the commits since the last `sync`, never consistency, and a lost result is simply trained again on
    resume (a trial's numbers depend on its own seed only).
    """

    def __init__(self, path, conn):
        self.path = pathlib.Path(path)
        self._conn = conn

    @classmethod
    def _connect(cls, path):
        conn = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return cls(path, conn)

    @classmethod
    def create(cls, path, task, trials, meta):
        """Creates the store with every trial 'pending', in one transaction.

        Args:
          path: the `trials.sqlite` file; it may exist only as an empty file left by a killed first start.
          task: "jsb" | "timit" | "iam_online".
          trials: list of dicts (or objects) with the fields `TRIAL_FIELDS`.
          meta: dict str -> str (the config fingerprint and identity).

        Returns:
          TrialStore.
        """
        if read_meta(path) is not None:
            raise StoreError(f"{path} already holds a study; open it instead of creating it")
        store = cls._connect(path)
        rows = []
        for t in trials:
            get = t.get if isinstance(t, dict) else lambda k, t=t: getattr(t, k)
            rows.append((int(get("trial_id")), task, str(get("variant")), int(get("hidden_size")),
                         float(get("learning_rate")), float(get("momentum")), float(get("input_noise")),
                         int(bool(get("nesterov"))), int(bool(get("clip"))), int(get("seed"))))
        with store._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
            conn.executemany(
                "INSERT INTO trials (trial_id, task, variant, hidden_size, learning_rate, momentum, input_noise, "
                "nesterov, clip, seed, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')", rows)
        return store

    @classmethod
    def open(cls, path):
        """Opens an existing store for reading and writing."""
        if read_meta(path) is None:
            raise StoreError(f"{path} holds no study")
        return cls._connect(path)

    def sync(self):
        """Makes every commit so far durable: flushes the database file and its write-ahead log to disk.
        (synchronous=NORMAL leaves the last commits in the operating system's cache until SQLite checkpoints
        its log; the study calls this before each checkpoint file, which must never be ahead of the rows it
        resumes with.)"""
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _transaction(self):
        # IMMEDIATE takes the write lock at the start, so a transaction never fails half way for a lock.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except BaseException:  # e.g. disk full: the transaction may still be open, and would hold every later one
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def meta(self):
        """The meta table, dict str -> str."""
        return dict(self._conn.execute("SELECT key, value FROM meta"))

    def trials(self, status=None):
        """Trial rows in trial-id order, all or those with one status; each a dict of the table's columns."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; known: {', '.join(STATUSES)}")
        query = "SELECT * FROM trials" + (" WHERE status = ?" if status else "") + " ORDER BY trial_id"
        return [dict(row) for row in self._conn.execute(query, (status,) if status else ())]

    def epochs(self, trial_id=None):
        """Epoch rows ordered by (trial_id, epoch), all or one trial's; each a dict of the table's columns."""
        query = "SELECT * FROM epochs" + (" WHERE trial_id = ?" if trial_id is not None else "")
        args = (trial_id,) if trial_id is not None else ()
        return [dict(row) for row in self._conn.execute(query + " ORDER BY trial_id, epoch", args)]

    def counts(self):
        """Number of trials per status, dict with every key of `STATUSES`."""
        out = dict.fromkeys(STATUSES, 0)
        out.update(self._conn.execute("SELECT status, COUNT(*) FROM trials GROUP BY status"))
        return out

    def best_by_variant(self):
        """The lowest validation metric of each variant's finished trials (a diverged one's best epoch before it
        diverged included), dict variant -> float; a variant without one is absent."""
        return dict(self._conn.execute(
            "SELECT variant, MIN(val_metric) FROM trials WHERE status IN ('done', 'diverged') "
            "AND val_metric IS NOT NULL GROUP BY variant"))

    def resumable(self, saved_epochs):
        """The interrupted trials that can resume from a checkpoint: trial_id -> epoch, for the entries of
        `saved_epochs` (trial_id -> the epoch a checkpoint holds, `odyssey.checkpoints`) whose trial is unfinished
        (running, or pending again: a run that put it back and was stopped before it trained an epoch) and has
        every epoch row from 1 to that epoch (rows can be missing if the store lost its last commits).
        """
        out = {}
        for trial_id, epoch in saved_epochs.items():
            row = self._conn.execute("SELECT status FROM trials WHERE trial_id = ?", (int(trial_id),)).fetchone()
            if row is None or row[0] not in ("running", "pending") or int(epoch) < 1:
                continue
            have = self._conn.execute("SELECT COUNT(DISTINCT epoch) FROM epochs WHERE trial_id = ? AND epoch BETWEEN 1 "
                                      "AND ?", (int(trial_id), int(epoch))).fetchone()[0]
            if have == int(epoch):
                out[int(trial_id)] = int(epoch)
        return out

    def reset_unfinished(self, keep_epochs=None):
        """Puts every interrupted trial back to 'pending', with no epoch rows past where it resumes; returns
        how many trials that touched.

        An interrupted trial is a 'running' one, or a 'pending' one with epoch rows (a run put it back to
        resume it from its checkpoint and was stopped before it trained an epoch). It is trained again from
        its first epoch, so its epoch rows are deleted (its numbers depend on its own seed only, so the rerun
        gives the same), unless `keep_epochs` (trial_id -> epoch, as `resumable` returns) says it resumes from a
        checkpoint of that epoch: then its rows up to that epoch stay and the later ones go.
        """
        keep = {int(k): int(v) for k, v in (keep_epochs or {}).items()}
        with self._transaction() as conn:
            interrupted = [r[0] for r in conn.execute(
                "SELECT trial_id FROM trials WHERE status = 'running' OR (status = 'pending' AND EXISTS "
                "(SELECT 1 FROM epochs WHERE epochs.trial_id = trials.trial_id))")]
            for trial_id in interrupted:
                conn.execute("DELETE FROM epochs WHERE trial_id = ? AND epoch > ?", (trial_id, keep.get(trial_id, 0)))
            conn.execute("UPDATE trials SET status = 'pending' WHERE status = 'running'")
            return len(interrupted)

    def mark_running(self, trial_ids):
        """Moves pending trials to 'running' (all or none)."""
        trial_ids = [int(i) for i in trial_ids]
        with self._transaction() as conn:
            for i in trial_ids:
                if conn.execute("UPDATE trials SET status = 'running' WHERE trial_id = ? AND status = 'pending'",
                                (i,)).rowcount != 1:
                    raise StoreError(f"trial {i} is not pending, so it cannot start ({self._status(i)})")

    def _status(self, trial_id):
        row = self._conn.execute("SELECT status FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        return f"status {row[0]!r}" if row else "no such trial"

    def add_epoch(self, trial_id, epoch, train_loss, val_metric, seconds):
        """Records one epoch of a running trial; NaN or infinite losses are stored as NULL."""
        with self._transaction() as conn:
            status = conn.execute("SELECT status FROM trials WHERE trial_id = ?", (int(trial_id),)).fetchone()
            if status is None or status[0] != "running":
                raise StoreError(f"epoch {epoch} of trial {trial_id}: the trial is not running "
                                 f"({self._status(int(trial_id))})")
            conn.execute("INSERT INTO epochs (trial_id, epoch, train_loss, val_metric, seconds) VALUES (?, ?, ?, ?, ?)",
                         (int(trial_id), int(epoch), _real(train_loss), _real(val_metric), _real(seconds)))

    def finish(self, result):
        """Records a running trial's result; 'done' needs every number, 'diverged' keeps NaN metrics (a trial that
        diverged before its first finite validation) as NULL.

        Args:
          result: an object with trial_id, status ('done' | 'diverged') and `RESULT_FIELDS`
            (e.g. `odyssey.train.TrialResult`).
        """
        trial_id, status = int(result.trial_id), result.status
        values = {k: getattr(result, k) for k in RESULT_FIELDS}
        if status not in ("done", "diverged"):
            raise StoreError(f"trial {trial_id}: a result's status must be 'done' or 'diverged', got {status!r}")
        if status == "done":
            bad = [k for k, v in values.items() if v is None or not math.isfinite(float(v))]
            if bad:
                raise StoreError(f"trial {trial_id}: a 'done' result needs every number; {bad} missing or not finite")
            if not 0 <= int(values["best_epoch"]) <= int(values["epochs"]):
                raise StoreError(f"trial {trial_id}: best epoch {values['best_epoch']} is not within its "
                                 f"{values['epochs']} epochs")
        row = (status, None if values["epochs"] is None else int(values["epochs"]),
               None if values["best_epoch"] is None else int(values["best_epoch"]),
               _real(values["val_metric"]), _real(values["test_metric"]),
               None if values["n_params"] is None else int(values["n_params"]), _real(values["train_seconds"]))
        with self._transaction() as conn:
            if conn.execute(
                    "UPDATE trials SET status = ?, epochs = ?, best_epoch = ?, val_metric = ?, test_metric = ?, "
                    "n_params = ?, train_seconds = ? WHERE trial_id = ? AND status = 'running'",
                    (*row, trial_id)).rowcount != 1:
                raise StoreError(f"trial {trial_id} is not running, so it cannot finish ({self._status(trial_id)})")
