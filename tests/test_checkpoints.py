"""The checkpoint files of trials in training (`odyssey.checkpoints`); a stopped trainer resuming from them is
tested with the trainer, in test_train.py."""

import math
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
