"""Checkpoints of trials in training: the file format, and a stopped trainer resuming to the uninterrupted run."""

import dataclasses
import math
import zipfile

import numpy as np
import pytest

from odyssey import checkpoints, train
from test_train import make_splits

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


# Five trials of the mixed program (two buckets, so also a group of one) and two of FGR, three slots a group:
# trials end early (patience 2) and pending ones take their slots.
TRIALS = [train.Trial(i, v, n, lr, 0.9, 0.3, True, clip, seed=10 + i) for i, (v, n, lr, clip) in enumerate(
    [("V", 6, 1e-2, False), ("NIG", 4, 3e-2, True), ("FGR", 5, 1e-2, False), ("CIFG", 7, 2e-2, False),
     ("NP", 3, 5e-2, False), ("FGR", 3, 3e-2, True), ("NOAF", 6, 1e-3, False), ("V", 2, 1e-2, False)])]
RUN = dict(max_epochs=6, patience=2, trials_per_batch=3, hidden_buckets=(4, 8))


class Stop(Exception):
    pass


def run(splits, trials=TRIALS, stop_after=None, record=None, **kwargs):
    """train_trials with an on_epoch that records (trial, epoch, loss, val) and raises Stop after `stop_after`
    calls (a crash at the end of an epoch's bookkeeping, before that epoch's checkpoint)."""
    record = [] if record is None else record

    def on_epoch(trial_id, epoch, loss, val, seconds):
        record.append((trial_id, epoch, loss, val))
        if stop_after is not None and len(record) >= stop_after:
            raise Stop

    results = train.train_trials("jsb", splits, trials, on_epoch=on_epoch, **{**RUN, **kwargs})
    return {r.trial_id: r for r in results}, record


def by_trial(record):
    out = {}
    for trial_id, epoch, loss, val in record:
        out.setdefault(trial_id, []).append((epoch, loss, val))
    return out


@pytest.fixture(scope="module")
def uninterrupted():
    splits = make_splits("jsb", seed=4, sizes=(6, 3, 3))
    return splits, *run(splits)


@pytest.mark.parametrize("stop_after", [2, 17])
def test_a_stopped_trainer_resumes_its_trials_to_the_uninterrupted_numbers(uninterrupted, tmp_path, stop_after,
                                                                           caplog):
    """Stopped after 2 epoch rows (inside the first epoch of the first group, before any checkpoint) or after
    17 (inside a later epoch, with trials ended, refilled and saved), then run again with the same checkpoints:
    every trial ends with the uninterrupted run's epochs and numbers, bitwise (CPU, float32), and the epoch
    rows of the first run up to each trial's checkpoint and those of the second together are the
    uninterrupted run's rows."""
    splits, want, want_record = uninterrupted
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=0)
    first = []
    with pytest.raises(Stop):
        run(splits, stop_after=stop_after, record=first, checkpoints=ck)
    at = ck.epochs()
    if stop_after == 2:
        assert at == {}
    else:
        assert at and all(e >= 1 for e in at.values()), at
    caplog.set_level("INFO", logger="absl")
    got, second = run(splits, checkpoints=ck)
    for t in TRIALS:
        g, w = got[t.trial_id], want[t.trial_id]
        assert dataclasses.replace(g, train_seconds=0) == dataclasses.replace(w, train_seconds=0)
    rows = by_trial([r for r in first if r[1] <= at.get(r[0], 0)] + second)
    assert rows == by_trial(want_record)
    resumed = [r.getMessage() for r in caplog.records if "resume from their checkpoints" in r.getMessage()]
    assert bool(resumed) == bool(at), resumed
    # Each trial's rows in the second run start right after its checkpoint.
    assert all(by_trial(second)[i][0][0] == e + 1 for i, e in at.items())
    assert ck.files() == [], "a finished run leaves no checkpoints"


@pytest.mark.parametrize("settings", [dict(hidden_buckets=(8,), trials_per_batch=8, mix_variants=False),
                                      dict(trials_per_batch=1)])
def test_checkpoints_resume_in_other_buckets_batches_and_programs(uninterrupted, tmp_path, settings):
    """A trial's saved state is in its own layout, so it resumes in a group of another padded size, batch size
    and program (each variant its own instead of the mixed one), or one slot at a time (saved trials wait for
    a slot like pending ones): the same numbers up to float round-off."""
    splits, want, want_record = uninterrupted
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=0)
    first = []
    with pytest.raises(Stop):
        run(splits, stop_after=17, record=first, checkpoints=ck)
    at = ck.epochs()
    assert at
    got, second = run(splits, checkpoints=ck, **settings)
    for t in TRIALS:
        g, w = got[t.trial_id], want[t.trial_id]
        assert (g.status, g.epochs, g.best_epoch) == (w.status, w.epochs, w.best_epoch)
        np.testing.assert_allclose([g.val_metric, g.test_metric], [w.val_metric, w.test_metric], rtol=1e-5)
    rows, want_rows = by_trial([r for r in first if r[1] <= at.get(r[0], 0)] + second), by_trial(want_record)
    assert sorted(rows) == sorted(want_rows)
    for i in rows:
        assert [r[0] for r in rows[i]] == [r[0] for r in want_rows[i]]
        np.testing.assert_allclose(np.array(rows[i])[:, 1:], np.array(want_rows[i])[:, 1:], rtol=1e-5)


def test_checkpoints_of_other_settings_or_other_trials_are_refused(uninterrupted, tmp_path):
    splits, _, _ = uninterrupted
    ck = checkpoints.Checkpoints(tmp_path / "ck", every_seconds=0)
    with pytest.raises(Stop):
        run(splits, stop_after=17, checkpoints=ck)
    with pytest.raises(ValueError, match="other settings.*order_seed"):
        run(splits, checkpoints=ck, order_seed=5)
    changed = [dataclasses.replace(t, learning_rate=t.learning_rate * 2) for t in TRIALS]
    with pytest.raises(ValueError, match="trial 0: the checkpoint .* other fields"):
        run(splits, trials=changed, checkpoints=ck)
    assert ck.epochs(), "a refused run leaves the checkpoints alone"
