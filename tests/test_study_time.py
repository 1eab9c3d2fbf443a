"""bench/study_time.py: its schedule, interpolation and store reading against hand-worked oracles, and its
projection at the streamed-weight bound against a brute-force sum over the study's trials."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from odyssey import search
from odyssey.store import TrialStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import study_time  # noqa: E402


def test_interpolate_is_linear_between_measured_counts_and_proportional_beyond():
    measured = {8: 2.0, 32: 5.0, 64: 6.0}
    assert study_time.interpolate(measured, 8) == 2.0
    assert study_time.interpolate(measured, 1) == 2.0  # never cheaper than the smallest measured
    assert study_time.interpolate(measured, 20) == pytest.approx(2.0 + 3.0 * 12 / 24)
    assert study_time.interpolate(measured, 48) == pytest.approx(5.5)
    assert study_time.interpolate(measured, 64) == 6.0
    assert study_time.interpolate(measured, 200) == pytest.approx(6.0 * 200 / 64)
    assert study_time.interpolate({16: 3.0}, 4) == 3.0 and study_time.interpolate({16: 3.0}, 48) == 9.0


def _schedule_by_hand(epochs, k):
    """The trainer's schedule stepped epoch by epoch: at the start of each lock-step epoch every free slot
    takes the next pending trial in order; a trial of e epochs holds its slot for e lock-step epochs."""
    pending = list(epochs)
    slots = [0] * k  # epochs left of each slot's trial
    t, ends, starts, live, used = 0, set(), [], [], 0
    while pending or any(slots):
        for s in range(k):
            if slots[s] == 0 and pending:
                slots[s] = pending.pop(0)
                starts.append(t)
        live.append(sum(1 for left in slots if left))
        for s in range(k):
            if slots[s]:
                slots[s] -= 1
                used += 1
                if slots[s] == 0:
                    ends.add(t + 1)
        t += 1
    return t, sorted(ends), used, max(starts), live


def test_interpolate_below_the_smallest_count_in_proportion_when_asked():
    measured = {8: 2.0, 32: 5.0}
    assert study_time.interpolate(measured, 2, "proportional") == pytest.approx(0.5)
    assert study_time.interpolate(measured, 8, "proportional") == 2.0
    assert study_time.interpolate(measured, 20, "proportional") == pytest.approx(3.5)  # between: unchanged
    assert study_time.interpolate(measured, 64, "proportional") == pytest.approx(10.0)
    assert study_time.interpolate(measured, 2) == 2.0


def test_between_buckets_is_linear_in_n_squared():
    # a + b N^2 with a = 1, b = 1e-3 at 40, 120 and 200: exact at the buckets between
    cost = {n: 1.0 + 1e-3 * n * n for n in (40, 120, 200)}
    for n in (40, 64, 80, 120, 150, 160, 199, 200):
        lo = max(b for b in cost if b <= n)
        hi = min(b for b in cost if b >= n)
        assert study_time.between_buckets({lo: cost[lo], hi: cost[hi]} if lo != hi else {lo: cost[lo]}, n) == \
            pytest.approx(1.0 + 1e-3 * n * n, rel=1e-12), n
        assert study_time.between_buckets(cost, n) == pytest.approx(1.0 + 1e-3 * n * n, rel=1e-12), n
    # worked: halfway in N^2 between 100 (cost 3) and 200 (cost 9) is N = sqrt(25000) ~ 158.1
    assert study_time.between_buckets({100: 3.0, 200: 9.0}, 150) == pytest.approx(3.0 + 6.0 * 12500 / 30000)
    for outside in (20, 39, 201):
        with pytest.raises(ValueError, match=r"outside the measured buckets \[40, 120, 200\]"):
            study_time.between_buckets(cost, outside)


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_simulate_group_matches_the_schedule_stepped_by_hand(k):
    rng = np.random.default_rng(k)
    for _ in range(20):
        epochs = rng.integers(1, 30, size=int(rng.integers(1, 25))).tolist()
        lockstep, ends, used, last_start, live = study_time.simulate_group(epochs, k)
        ref = _schedule_by_hand(epochs, k)
        assert (lockstep, ends, used, last_start) == ref[:4]
        assert live.tolist() == ref[4]
    # a worked case: 2 slots, trials of 3, 1, 2, 2 epochs start at 0, 0, 1, 3 and end at 3, 1, 3, 5
    lockstep, ends, used, last_start, live = study_time.simulate_group([3, 1, 2, 2], 2)
    assert (lockstep, ends, used, last_start, live.tolist()) == (5, [1, 3, 5], 8, 3, [2, 2, 2, 1, 1])


def _finished_store(path, epochs, pending=0):
    """A trial store written as the study writes it (WAL mode): one finished trial per entry of `epochs`, and
    `pending` trials not started."""
    trials = [dict(trial_id=i, variant="V", hidden_size=20, learning_rate=1e-3, momentum=0.9, input_noise=0.0,
                   nesterov=False, clip=False, seed=i) for i in range(len(epochs) + pending)]
    with TrialStore.create(path, "jsb", trials, {"fingerprint": "test"}) as st:
        st.mark_running(list(range(len(epochs))))
        for i, e in enumerate(epochs):
            st.finish(types.SimpleNamespace(trial_id=i, status="done", epochs=e, best_epoch=e, val_metric=8.0,
                                            test_metric=8.1, n_params=100, train_seconds=1.0))
    return path


def test_store_epochs_reads_finished_trials_and_leaves_no_side_files(tmp_path):
    path = _finished_store(tmp_path / "trials.sqlite", [12, 40, 7], pending=2)
    before = path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.sqlite"]
    np.testing.assert_array_equal(np.sort(study_time.store_epochs(path)), [7, 12, 40])
    # a read-only connection would leave trials.sqlite-wal and -shm here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.sqlite"] and path.read_bytes() == before


def test_store_epochs_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="--store=.*no such file"):
        study_time.store_epochs(tmp_path / "none.sqlite")
    (tmp_path / "notes.sqlite").write_text("not a database\n" * 100)
    with pytest.raises(ValueError, match="--store=.*cannot read"):
        study_time.store_epochs(tmp_path / "notes.sqlite")
    empty = _finished_store(tmp_path / "fresh.sqlite", [], pending=3)
    with pytest.raises(ValueError, match="no finished trial"):
        study_time.store_epochs(empty)


def _project(tmp_path, name, *flags):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "bench/study_time.py", "--tasks=jsb", f"--out={out}", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    return {p["rule"]: p for p in result["projections"]}, result


def test_projection_at_the_bound_is_the_sum_over_trials_of_their_streamed_weights(tmp_path):
    """At --bound_bandwidth=B every update of a trial of bucket b streams its recurrent weights (4 b^2 floats;
    FGR's 13 b^2: R and the 3 x 3 gate-to-gate Rg) at each of 60 steps of its forward and backward loops, so
    the training time of the study is sum over trials of epochs x 229 sequences x 2 x 60 x bytes / B. Halving
    B doubles every time; the epochs rules scale it in proportion (all trials of a rule run the same epochs)."""
    store = _finished_store(tmp_path / "trials.sqlite", [37] * 5)
    bandwidth = 1e12
    by_rule, result = _project(tmp_path, "b", f"--bound_bandwidth={bandwidth}", "--epochs_estimate=60",
                               f"--store={store}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "trials.sqlite"]

    config = study_time.load_config("jsb")
    buckets = sorted(int(b) for b in config.search.hidden_buckets)
    trials = search.draw_trials(config)
    assert len(trials) == 9 * 200 == result["studies"]["jsb"]["trials"]
    seconds = 0.0
    for t in trials:
        b = min(b for b in buckets if b >= t["hidden_size"])
        floats = 13 * b * b if t["variant"] == "FGR" else 4 * b * b
        seconds += 150 * 229 * 2 * 60 * floats * 4 / bandwidth
    bound = by_rule["bound"]
    assert bound["slot_epochs"] == bound["live_slot_epochs"] == 150 * len(trials)  # no idle slot to pay for
    assert bound["train_s"] == pytest.approx(seconds, rel=1e-9)
    assert bound["compile_s"] == 0.0 and 0 < bound["eval_s"] < 0.05 * bound["train_s"]
    assert bound["total_s"] == pytest.approx(bound["train_s"] + bound["eval_s"], rel=1e-12)
    for rule, epochs in (("estimate", 60), ("store_mean", 37), ("store_draws", 37)):
        assert by_rule[rule]["train_s"] == pytest.approx(bound["train_s"] * epochs / 150, rel=1e-9), rule
    # evaluation: a validation pass every lock-step epoch, a test pass per epoch at which trials end (as many
    # under each rule), so its time is a + b x epochs
    evals = {e: by_rule[rule]["eval_s"] for rule, e in (("bound", 150), ("estimate", 60), ("store_mean", 37))}
    assert (evals[150] - evals[60]) / 90 == pytest.approx((evals[60] - evals[37]) / 23, rel=1e-6)
    assert by_rule["store_draws"]["total_s"] == pytest.approx(by_rule["store_mean"]["total_s"], rel=1e-12)

    # one program per variant: each streams its own cell's R (the three-gate cells 3 b^2: NIG, NFG, NOG, CIFG)
    nomix, _ = _project(tmp_path, "n", f"--bound_bandwidth={bandwidth}", "--nomix_variants")
    own = {"FGR": 13, "NIG": 3, "NFG": 3, "NOG": 3, "CIFG": 3}
    seconds_own = sum(150 * 229 * 2 * 60 * own.get(t["variant"], 4) * min(b for b in buckets if b >= t["hidden_size"])
                      ** 2 * 4 / bandwidth for t in trials)
    assert nomix["bound"]["train_s"] == pytest.approx(seconds_own, rel=1e-9)

    half, _ = _project(tmp_path, "h", f"--bound_bandwidth={2 * bandwidth}")
    assert half["bound"]["total_s"] == pytest.approx(bound["total_s"] / 2, rel=1e-9)
    bf16, _ = _project(tmp_path, "w", f"--bound_bandwidth={bandwidth}", "--recurrent_dtype=bfloat16")
    assert bf16["bound"]["train_s"] == pytest.approx(seconds / 2, rel=1e-9)


def test_group_cost_takes_the_variant_rows_that_hold_the_bucket_and_the_small_k_rule():
    def row(variant, bucket, k, seconds):
        return {"task": "jsb", "variant": variant, "bucket": bucket, "K": k, "train_epoch_s": seconds,
                "valid_s": seconds / 10, "test_s": seconds / 20, "compile_s": 5.0}
    rows = [row("V", 40, 64, 1.0), row("V", 200, 64, 10.0), row("FGR", 200, 64, 30.0)]
    # FGR measured at 200 only: at 120 V's rows hold the bucket, linear in N^2 between 40 and 200
    w = (120 ** 2 - 40 ** 2) / (200 ** 2 - 40 ** 2)
    assert study_time._group_cost(rows, "jsb", "FGR", 120, 64)["train_epoch_s"] == pytest.approx(1.0 + 9.0 * w)
    assert study_time._group_cost(rows, "jsb", "FGR", 200, 64)["train_epoch_s"] == 30.0
    flat = study_time._group_cost(rows, "jsb", "FGR", 200, 16)
    prop = study_time._group_cost(rows, "jsb", "FGR", 200, 16, below="proportional")
    assert flat == {"train_epoch_s": 30.0, "valid_s": 3.0, "test_s": 1.5, "compile_s": 5.0}
    assert prop == pytest.approx({"train_epoch_s": 7.5, "valid_s": 0.75, "test_s": 0.375, "compile_s": 5.0})
    # above the largest measured K the work grows in proportion to K, the compile does not (it was 8x at 512)
    big = study_time._group_cost(rows, "jsb", "FGR", 200, 512)
    assert big == pytest.approx({"train_epoch_s": 240.0, "valid_s": 24.0, "test_s": 12.0, "compile_s": 5.0})


def test_a_test_pass_costs_the_busy_chunks_of_its_epoch(monkeypatch):
    """One group of 4 slots in chunks of 2, trials of 5, 1, 1, 1, 1, 3 epochs (worked by hand): epoch 1 ends
    three trials (4 slots busy), epoch 2 one (the last start: 3 live, 4 busy), epochs 4 and 5 one each (2 live,
    then 1: packed into one chunk, 2 busy). Costs per epoch at K = 2 and 4: train 1 and 3, valid 0.1 and 0.3,
    test 1 and 10: train 3 + 3 + 1 + 1 + 1, valid a tenth of it, tests 10 + 10 + 1 + 1 (at full K: 40)."""
    monkeypatch.setattr(study_time, "_chunk", lambda *args: 2)
    rows = [{"task": "jsb", "variant": "V", "bucket": 40, "K": k, "train_epoch_s": train, "valid_s": train / 10,
             "test_s": test, "compile_s": 0.0} for k, train, test in ((2, 1.0, 1.0), (4, 3.0, 10.0))]
    epochs = [5, 1, 1, 1, 1, 3]
    trials = [types.SimpleNamespace(trial_id=i, variant="V", hidden_size=30) for i in range(len(epochs))]
    got = study_time.project(rows, "jsb", trials, [40], 4, lambda g, members: epochs)
    assert got["train_s"] == pytest.approx(9.0) and got["eval_s"] == pytest.approx(0.9 + 22.0)
    assert (got["lockstep_epochs"], got["slot_epochs"], got["live_slot_epochs"]) == (5, 14, 12)


def test_projection_interpolates_unmeasured_buckets_exactly_for_a_cost_in_n_squared(tmp_path):
    """At the bound an update costs b N^2 (no fixed part), so the projection of the default buckets 40, 80,
    120, 160, 200 from rows at 40, 120 and 200 alone equals the one from rows at all five."""
    _, coarse = _project(tmp_path, "coarse", "--bound_bandwidth=1e12", "--buckets=40,120,200", "--epochs_estimate=60")
    assert sorted({r["bucket"] for r in coarse["measurements"]}) == [40, 120, 200]
    direct, _ = _project(tmp_path, "direct", "--bound_bandwidth=1e12", "--epochs_estimate=60")
    out = tmp_path / "coarse.json"
    projected, result = _project(tmp_path, "projected", f"--measurements={out}", "--epochs_estimate=60")
    assert result["studies"]["jsb"]["interpolated_buckets"] == [80, 160]
    assert result["studies"]["jsb"]["buckets"] == [40, 80, 120, 160, 200]
    for rule in ("bound", "estimate"):
        for part in ("train_s", "eval_s", "total_s"):
            assert projected[rule][part] == pytest.approx(direct[rule][part], rel=1e-9), (rule, part)
    # coarse buckets pad more: the same trials cost more there
    assert coarse["projections"][0]["total_s"] > 1.2 * direct["bound"]["total_s"]

    proc = subprocess.run([sys.executable, "bench/study_time.py", "--tasks=jsb", f"--measurements={out}",
                           "--buckets=40,120,250"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "measured at buckets [40, 120, 200]; projecting buckets [40, 120, 250]" in \
        proc.stderr + proc.stdout


def test_quick_measures_three_buckets_and_projects_the_configs_five(tmp_path):
    """--quick measures at 40, 120 and 200 and projects the study as configured (five buckets, 80 and 160 between
    the measured ones): its groups and padding are the configs', its costs at 80 and 160 interpolated."""
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, "bench/study_time.py", "--quick", "--tasks=jsb", "--trials=2",
                           "--sequences=1", "--repeats=1", "--min_time=0", "--eval_chunks=1", f"--out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert sorted({r["bucket"] for r in result["measurements"]}) == [40, 120, 200]
    study = result["studies"]["jsb"]
    assert study["buckets"] == [40, 80, 120, 160, 200] and study["interpolated_buckets"] == [80, 160]
    assert {p["groups"] for p in result["projections"]} == {10}  # 5 buckets x {mixed, FGR}
    assert "buckets [80, 160] not measured" in proc.stdout
