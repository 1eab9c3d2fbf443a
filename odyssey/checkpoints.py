"""Checkpoints of trials in the middle of training, so that a stopped run resumes them where they were.

A group of trials trained together (`odyssey.train.train_trials`) can run for hours: on a GPU, the TIMIT
groups of the full study take one to two hours each, and a study that is killed, or stopped by a time
limit, would otherwise train every trial it was running again from its first epoch. With a `Checkpoints`,
the trainer writes its live trials' states at the end of an epoch, at most every `every_seconds`, one file
per group (`<program>_N<bucket>.npz` in the directory), and removes a group's file when the group ends.

A file is written to a temporary name, flushed to disk and renamed over the old one, so a kill at any
moment leaves the old file or the new one, never a part of one. A trial's entry holds its fields (its
hyperparameters and seed), the epochs it has trained, its best validation metric and epoch, its seconds,
and its weights, velocity and best weights in its own variant's layout at its own hidden size, as one flat
vector (the trainer's layout, `odyssey.train`): it resumes in any group that can train it, whatever the
buckets, batch and chunk sizes of the run that resumes it. Every random draw of a trial comes from its own
seed and its own epoch counter, so a resumed trial goes on with the numbers it would have had.

The file's identity (task, dtypes, data-order seed, product precision: what decides a trial's numbers
besides its own fields) is checked by the trainer before it resumes anything. This module reads and writes
files only; it imports neither JAX nor the trainer, so its files can be read and inspected without them.
"""

import dataclasses
import json
import os
import pathlib

import numpy as np

FORMAT = 1
SUFFIX = ".npz"
_TMP = ".tmp"
# How often the study command saves its groups' live trials by default (its --checkpoint_seconds).
DEFAULT_SECONDS = 300.0


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read, or files that disagree about what they hold."""


@dataclasses.dataclass
class SavedTrial:
    """One trial's state at the end of an epoch.

    trial: the trial's fields, as `dataclasses.asdict(odyssey.train.Trial)`.
    epoch: the epochs it has trained (its epoch counter; the next epoch is epoch + 1).
    best_val, best_epoch: its best validation metric so far and the epoch that reached it.
    seconds: its share of the wall time so far.
    state: its weights, velocity and best weights, flattened in the trainer's order (None where the file was
      read without them, `Checkpoints.load(states=False)`).
    """

    trial: dict
    epoch: int
    best_val: float
    best_epoch: int
    seconds: float
    state: np.ndarray | None

    @property
    def trial_id(self) -> int:
        return int(self.trial["trial_id"])


class Checkpoints:
    """A directory of checkpoint files, one per group of trials in training.

    Args:
      directory: where the files go; created at the first save.
      every_seconds: the trainer saves a group's live trials at the end of an epoch once this many seconds
        have passed since its last save (0: after every epoch; `math.inf`: never).
      before_save: called before each file is written (the study makes its store durable there: a file on
        disk is then never ahead of the store's rows after a power cut, which would make it unusable).
    """

    def __init__(self, directory, every_seconds: float = DEFAULT_SECONDS, before_save=None):
        every = float(every_seconds)
        if not every >= 0:  # also refuses NaN
            raise ValueError(f"every_seconds must be >= 0 (0: after every epoch), got {every_seconds!r}")
        self.directory = pathlib.Path(directory)
        self.every_seconds = every
        self.before_save = before_save

    def __repr__(self):
        return f"Checkpoints({str(self.directory)!r}, every_seconds={self.every_seconds})"

    def files(self) -> list[pathlib.Path]:
        """The checkpoint files, by name."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX) and p.is_file())

    def load(self, states: bool = True) -> tuple[dict | None, dict[int, SavedTrial]]:
        """Every saved trial, and the identity the files share (None where there are none).

        A trial found in several files (a run that resumed it in another group, then stopped) is taken at
        its latest epoch. states=False reads the files' small parts only (each trial's `state` is None).

        Raises:
          CheckpointError: a file cannot be read, or two files have different identities.
        """
        identity, saved = None, {}
        for path in self.files():
            ident, trials = _read(path, states)
            if identity is not None and ident != identity:
                raise CheckpointError(f"{path}: made by a run of other settings than the files beside it "
                                      f"({ident} against {identity}); remove the files of the other run")
            identity = ident
            for t in trials:
                if t.trial_id not in saved or t.epoch > saved[t.trial_id].epoch:
                    saved[t.trial_id] = t
        return identity, saved

    def epochs(self) -> dict[int, int]:
        """trial_id -> the epoch its saved state ends, for every saved trial."""
        return {i: t.epoch for i, t in self.load(states=False)[1].items()}

    def save(self, name: str, identity: dict, trials: list[SavedTrial]):
        """Writes the file `name` (a group's) with `trials`, replacing the one before it in one rename."""
        _check_name(name)
        if self.before_save is not None:
            self.before_save()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / (name + SUFFIX)
        tmp = self.directory / (name + SUFFIX + _TMP)
        meta = {"format": FORMAT, "identity": identity, "trials": [t.trial for t in trials],
                "epoch": [int(t.epoch) for t in trials], "best_val": [float(t.best_val) for t in trials],
                "best_epoch": [int(t.best_epoch) for t in trials], "seconds": [float(t.seconds) for t in trials]}
        states = [np.ravel(t.state) for t in trials]
        sizes = np.array([s.size for s in states], np.int64)
        flat = np.concatenate(states) if states else np.zeros(0, np.float32)
        with open(tmp, "wb") as f:
            # allow_nan: a diverging trial's best metric is inf before its first good epoch.
            np.savez(f, meta=np.array(json.dumps(meta, allow_nan=True)), sizes=sizes, flat=flat)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_directory(self.directory)  # the rename itself, on disk

    def remove(self, name: str):
        """Removes the file `name`, if it is there."""
        _check_name(name)
        (self.directory / (name + SUFFIX)).unlink(missing_ok=True)

    def discard(self, trial_ids):
        """Removes these trials from every file; a file left with no trials is removed."""
        drop = {int(i) for i in trial_ids}
        for path in self.files():
            identity, trials = _read(path)
            kept = [t for t in trials if t.trial_id not in drop]
            if not kept:
                path.unlink()
            elif len(kept) < len(trials):
                self.save(path.name[:-len(SUFFIX)], identity, kept)

    def regroup(self, identity: dict, assignment: dict[str, list[SavedTrial]]) -> int:
        """Makes each file of `assignment` hold its trials, and no other file hold them: how many files changed.

        A run with other hidden buckets (or mix_variants) groups saved trials otherwise than the run that saved
        them, and a group rewrites its own file when it saves and removes it when it ends: a file of the same
        name holding a trial of a later group would lose that trial's state. A file keeps the trials it held
        that no file of `assignment` takes. Every new file is written before any trial leaves an old one, so a
        kill in between leaves each trial in one file at least (`load` takes one copy; they are equal).
        """
        assigned = {t.trial_id for trials in assignment.values() for t in trials}
        held = {p.name[:-len(SUFFIX)]: {t.trial_id for t in _read(p, states=False)[1]} for p in self.files()}
        changed = 0
        for name, trials in assignment.items():
            if held.get(name, set()) & assigned == {t.trial_id for t in trials}:
                continue
            path = self.directory / (name + SUFFIX)
            others = [t for t in _read(path)[1] if t.trial_id not in assigned] if name in held else []
            self.save(name, identity, list(trials) + others)
            changed += 1
        for name, ids in held.items():
            if name not in assignment and ids & assigned:
                path = self.directory / (name + SUFFIX)
                file_identity, trials = _read(path)
                kept = [t for t in trials if t.trial_id not in assigned]
                if kept:
                    self.save(name, file_identity, kept)
                else:
                    path.unlink()
                changed += 1
        return changed

    def clear(self):
        """Removes every checkpoint file (and leftover temporary files) and the directory once it is empty."""
        if not self.directory.is_dir():
            return
        for p in self.directory.iterdir():
            if p.is_file() and (p.name.endswith(SUFFIX) or p.name.endswith(SUFFIX + _TMP)):
                p.unlink()
        try:
            self.directory.rmdir()
        except OSError:  # something else lives there
            pass


def _sync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform that cannot open directories: the rename is as durable as it makes it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_name(name):
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"a checkpoint name takes letters, digits, '_' and '-', got {name!r}")


def _read(path, states=True):
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            sizes = z["sizes"]
            # An npz member is read when asked for: without states, the file's weights stay on disk.
            flat = z["flat"] if states else None
    except Exception as e:  # a zip, npy or JSON error: the file is not one of ours, or damaged
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); remove it to train "
                              f"its trials from their first epoch") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this code reads {FORMAT}")
    n = len(meta["trials"])
    if not (len(sizes) == n and (flat is None or int(sizes.sum()) == flat.size)
            and all(len(meta[k]) == n for k in ("epoch", "best_val", "best_epoch", "seconds"))):
        raise CheckpointError(f"{path}: its parts do not fit together ({n} trials, {len(sizes)} states)")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    trials = [SavedTrial(meta["trials"][i], int(meta["epoch"][i]), float(meta["best_val"][i]),
                         int(meta["best_epoch"][i]), float(meta["seconds"][i]),
                         None if flat is None else flat[offsets[i]:offsets[i + 1]])
              for i in range(n)]
    return meta["identity"], trials
