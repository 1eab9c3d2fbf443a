"""The checkpoint files of trials in training (`odyssey.checkpoints`); a stopped trainer resuming from them is
tested with the trainer, in test_train.py."""

import math
import os
import zipfile

import numpy as np
import pytest

from odyssey import checkpoints

IDENTITY = {"task": "jsb", "dtype": "float32"}


def saved(trial_id, epoch, size=5, value=0.0):
    trial = {"trial_id": trial_id, "variant": "V", "hidden_size": 3}
    return checkpoints.SavedTrial(trial, epoch, 1.5 + trial_id, epoch - 1, 0.25 * epoch,
                                  np.arange(size, dtype=np.float32) + value)


def test_files_round_trip_and_a_trial_in_two_files_is_taken_at_its_latest_epoch(tmp_path):
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=0)
    assert ck.load() == (None, {}) and ck.epochs() == {} and ck.files() == []
    ck.save("mixed_N40", IDENTITY, [saved(1, 4, 5), saved(2, 7, 3, value=10.0)])
    ck.save("FGR_N80", IDENTITY, [saved(1, 6, 5, value=-1.0), saved(3, 2, 0)])
    identity, trials = ck.load()
    assert identity == IDENTITY and sorted(trials) == [1, 2, 3]
    assert ck.epochs() == {1: 6, 2: 7, 3: 2}
    t = trials[2]
    assert (t.trial, t.epoch, t.best_val, t.best_epoch, t.seconds) == (saved(2, 7).trial, 7, 3.5, 6, 1.75)
    np.testing.assert_array_equal(t.state, [10.0, 11.0, 12.0])
    np.testing.assert_array_equal(trials[1].state, np.arange(5) - 1.0)  # FGR_N80's, the later epoch
    assert trials[3].state.size == 0
    # Saving again replaces a group's file; no temporary file stays behind.
    ck.save("mixed_N40", IDENTITY, [saved(2, 8, 3)])
    assert ck.epochs() == {1: 6, 2: 8, 3: 2}
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["FGR_N80.npz", "mixed_N40.npz"]
    ck.discard([1, 2])
    assert [p.name for p in ck.files()] == ["FGR_N80.npz"] and ck.epochs() == {3: 2}
    ck.remove("FGR_N80")
    ck.remove("FGR_N80")  # twice is fine
    assert ck.files() == []
    ck.save("V_N8", IDENTITY, [saved(5, 1)])
    (tmp_path / "ck" / "V_N8.npz.tmp").write_bytes(b"left by a kill")
    ck.clear()
    assert not (tmp_path / "ck").exists()


def test_bad_files_and_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="every_seconds must be >= 0"):
        checkpoints.Checkpoints(tmp_path, every_seconds=-1)
    with pytest.raises(ValueError, match="every_seconds"):
        checkpoints.Checkpoints(tmp_path, every_seconds=math.nan)
    ck = checkpoints.Checkpoints(tmp_path)
    with pytest.raises(ValueError, match="letters, digits"):
        ck.save("../escape", IDENTITY, [])
    ck.save("a", IDENTITY, [saved(1, 2)])
    ck.save("b", {**IDENTITY, "dtype": "float64"}, [saved(2, 2)])
    with pytest.raises(checkpoints.CheckpointError, match="other settings"):
        ck.load()
    ck.remove("b")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(checkpoints.CheckpointError, match="broken.npz: not a readable checkpoint"):
        ck.epochs()
    (tmp_path / "broken.npz").unlink()
    # A file whose parts disagree (one state too few for its trials).
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        parts = {name: z.read(name) for name in z.namelist()}
    np.save(tmp_path / "sizes.npy", np.array([5, 5], np.int64))
    parts["sizes.npy"] = (tmp_path / "sizes.npy").read_bytes()
    with zipfile.ZipFile(tmp_path / "c.npz", "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    (tmp_path / "a.npz").unlink()
    with pytest.raises(checkpoints.CheckpointError, match="do not fit together"):
        ck.load()


def test_a_save_first_calls_before_save_then_writes_the_file_and_its_rename_to_disk(tmp_path, monkeypatch):
    """before_save (the study's store sync) runs before anything of the file exists; the file's data and the
    directory holding its new name are flushed to disk (os.fsync of each, by inode)."""
    directory = tmp_path / "ck"
    events = []

    def before_save():
        events.append(("before", sorted(p.name for p in directory.iterdir()) if directory.exists() else None))

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    ck = checkpoints.Checkpoints(directory, every_seconds=0, before_save=before_save)
    ck.save("V_N8", IDENTITY, [saved(1, 2)])
    ck.save("V_N8", IDENTITY, [saved(1, 3)])
    assert events == [("before", None), ("before", ["V_N8.npz"])]
    assert ck.epochs() == {1: 3}
    file_inode, dir_inode = (directory / "V_N8.npz").stat().st_ino, directory.stat().st_ino
    assert file_inode in synced and synced.count(dir_inode) == 2

    def refuse():
        raise OSError("disk gone")

    ck.before_save = refuse  # a store that cannot be made durable: no file goes ahead of it
    with pytest.raises(OSError, match="disk gone"):
        ck.save("V_N8", IDENTITY, [saved(1, 4)])
    assert ck.epochs() == {1: 3} and sorted(p.name for p in directory.iterdir()) == ["V_N8.npz"]
