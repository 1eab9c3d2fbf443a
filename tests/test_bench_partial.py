"""A benchmark cut at its limit keeps what it measured: bench/trainer_speed.py, bench/study_time.py,
bench/pallas_lstm_speed.py, bench/data_order_check.py and bench/checkpoint_cost.py rewrite their --out JSON
(whole, through a rename) before they print each new row, with complete: false until the run ends. A device
session's stages are cut at their limits, so its rows would otherwise be left only in a log. Each script is
killed (SIGKILL, nothing to clean up) right after its first row is printed; its JSON must then hold those
rows, with the printed numbers."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _cut_after(args, first_row, timeout=300):
    """Runs a bench script, SIGKILLs it once a line matches `first_row`; returns its matching lines."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:
            if re.search(first_row, line):
                seen.append(line)
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert seen, f"no line matched {first_row!r} before the script ended"
    return seen


def _run(args):
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_trainer_speed_keeps_the_rows_of_a_cut_run(tmp_path):
    out = tmp_path / "speed.json"
    args = ["bench/trainer_speed.py", "--device=cpu", "--shapes=jsb", "--hidden=8,24", "--trials=1,2", "--notorch",
            "--repeats=1", "--min_time=0", "--sequences=2", "--cpu_devices=1", f"--out={out}"]
    line = _cut_after(args, r"^jsb +60 +8 odyssey V +1 ")[0]
    data = json.loads(out.read_text())
    assert data["complete"] is False and sorted(p.name for p in tmp_path.iterdir()) == ["speed.json"]
    # the first hidden size's two rows (K = 1 and 2), written before either was printed; N = 24 not yet
    assert [(r["hidden"], r["K"]) for r in data["rows"]] == [(8, 1), (8, 2)]
    printed = float(line.split()[7])
    assert data["rows"][0]["updates_per_s"] == pytest.approx(printed, abs=0.051)

    text = _run(args)
    data = json.loads(out.read_text())
    assert data["complete"] is True and [(r["hidden"], r["K"]) for r in data["rows"]] == [
        (8, 1), (8, 2), (24, 1), (24, 2)]
    assert f"wrote {out}" in text and sorted(p.name for p in tmp_path.iterdir()) == ["speed.json"]


def test_study_time_keeps_the_rows_of_a_cut_run_and_projects_from_them(tmp_path):
    out = tmp_path / "study_time.json"
    args = ["bench/study_time.py", "--tasks=jsb", "--buckets=200,120", "--trials=2,4", "--sequences=2", "--repeats=1",
            "--min_time=0", "--eval_chunks=1", "--epochs_estimate=30", f"--out={out}"]
    line = _cut_after(args, r"^ +jsb +V N=200 +K=2 ")[0]
    data = json.loads(out.read_text())
    assert data["complete"] is False and "projections" not in data
    assert [(r["bucket"], r["K"]) for r in data["measurements"]] == [(200, 2), (200, 4)]  # both K, then printed; not N = 120
    assert data["measurements"][0]["updates_per_s"] == pytest.approx(float(line.split()[4]), abs=0.051)

    # the cut run's row alone projects the study: every JSB trial fits bucket 200
    again = tmp_path / "projected.json"
    text = _run(["bench/study_time.py", "--tasks=jsb", "--buckets=200", f"--measurements={out}",
                 "--epochs_estimate=30", f"--out={again}"])
    assert f"{out} holds the 2 rows of a run that stopped before its end" in text
    projected = json.loads(again.read_text())
    assert projected["complete"] is True and projected["measurements"] == data["measurements"]
    assert {p["rule"] for p in projected["projections"]} == {"bound", "estimate"}
    assert "after:  not recorded: the run stopped before its end" in text
    # buckets below those the cut run reached are refused, not charged at the nearest measured one
    refused = subprocess.run([sys.executable, "bench/study_time.py", "--tasks=jsb", "--buckets=120,200",
                              f"--measurements={out}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "jsb is measured at buckets [200]; projecting buckets [120, 200] needs " \
        "measured ones at or below 120" in refused.stderr


def test_pallas_lstm_speed_keeps_the_rows_of_a_cut_run(tmp_path):
    out = tmp_path / "pallas.json"
    args = ["bench/pallas_lstm_speed.py", "--shapes=jsb:8:2,jsb:40:2", "--repeats=1", "--min_time=0",
            "--passes=grad", "--lengths=equal", "--recurrent_dtypes=float32", f"--out={out}"]
    _cut_after(args, r"^jsb N=8 K=2 float32 equal +grad +pallas: ")
    data = json.loads(out.read_text())
    assert data["complete"] is False
    assert [(r["hidden"], r["program"]) for r in data["rows"]] == [(8, "pallas"), (8, "xla")]
    _run(args)
    data = json.loads(out.read_text())
    assert data["complete"] is True
    assert [(r["hidden"], r["program"]) for r in data["rows"]] == [(8, "pallas"), (8, "xla"), (40, "pallas"),
                                                                  (40, "xla")]


JSB_FILE = ROOT.parent / "shared" / "data" / "jsb_chorales" / "jsb_chorales.pickle"


@pytest.mark.skipif(not JSB_FILE.is_file(), reason=f"the standard JSB file is not at {JSB_FILE}: data_order_check "
                    "would build the stand-in first (about 70 s)")
def test_data_order_check_keeps_the_rows_of_a_cut_run(tmp_path):
    out = tmp_path / "order.json"
    args = ["bench/data_order_check.py", f"--data={JSB_FILE}", "--count_trials=1,8", "--draws=3", "--trials=2,3",
            "--hidden=8", "--repeats=1", "--min_time=0", f"--out={out}"]
    line = _cut_after(args, r"^ +2 +8 +\d")[0]
    data = json.loads(out.read_text())
    assert data["complete"] is False and [r["K"] for r in data["counts"]] == [1, 8]
    assert [r["trials"] for r in data["timing"]] == [2]
    assert data["timing"][0]["ratio"] == pytest.approx(float(line.split()[5]), abs=0.0051)
    assert data["timing"][0]["strata_ratio"] == pytest.approx(float(line.split()[6]), abs=0.0051)
    assert set(data["counts"][1]["strata"]) == {"8", "1", "4", "16", "32"}
    _run(args)
    data = json.loads(out.read_text())
    assert data["complete"] is True and [r["trials"] for r in data["timing"]] == [2, 3]


def test_checkpoint_cost_keeps_the_rows_of_a_cut_run(tmp_path):
    out = tmp_path / "checkpoint.json"
    line = _cut_after(["bench/checkpoint_cost.py", "--quick", "--repeats=1", f"--dir={tmp_path}", f"--out={out}"],
                      r"^jsb N=40 K=8: epoch ")[0]
    data = json.loads(out.read_text())
    assert data["complete"] is False
    assert [(r["task"], r["hidden"], r["trials"]) for r in data["rows"]] == [("jsb", 40, 8)]
    epoch, snapshot, save = (float(x) for x in re.findall(r"(?:epoch|snapshot|save) ([0-9.]+)s", line))
    row = data["rows"][0]
    assert (row["epoch_s"], row["snapshot_s"], row["save_s"]) == pytest.approx((epoch, snapshot, save), abs=5e-4)
    assert row["overhead"] == pytest.approx((row["snapshot_s"] + row["save_s"]) / 300)
