"""bench/gpu_check.sh's stage order, time budget and refusals, with a stand-in for Python that records its calls.

The device sessions that run this script are short and rare, so its shell logic is checked here: stages run in
the order STAGES names them, each stage's limit shrinks to what is left of BUDGET, a stage with under 30 s left
is skipped, an unknown stage (or a missing STUDY_STORE) stops the script before anything runs, the study trains
with the loops the loops stage chose, and an earlier machine's store seeds a workdir that has none.
"""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")

# Records each call's arguments, one line per call; as `python - FILE` (the loops stage's choice) prints "pallas".
STUB = """#!/bin/sh
echo "$*" >> "$STUB_LOG"
[ "$1" = "-" ] && echo pallas
exit 0
"""


def _run(tmp_path, env, *args):
    stub = tmp_path / "python_stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.txt"
    log.write_text("")
    ours = ("STAGES", "BUDGET", "DEVICE", "STUDY_LOOPS", "SPEED_LOOPS", "STUDY_STORE")
    full_env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("LIMIT_")}
    full_env.update(PYTHON=str(stub), STUB_LOG=str(log), **env)
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), *args], cwd=ROOT, env=full_env,
                            capture_output=True, text=True, timeout=60)
    calls = [line for line in log.read_text().splitlines() if not line.startswith("-c ")]  # machine.txt's jax line
    return result, calls


def _limits(stdout):
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"^== (\w+) \(limit (\d+)s\)", stdout, re.M)]


def test_stages_run_in_the_order_named_within_the_budget(tmp_path):
    result, calls = _run(tmp_path, dict(STAGES="loops study_shared speed", BUDGET="100", DEVICE="cpu",
                                        LIMIT_LOOPS="120", LIMIT_STUDY="600", LIMIT_SPEED="40"), "data/jsb.pickle")
    assert result.returncode == 0, result.stdout + result.stderr
    limits = _limits(result.stdout)
    assert [name for name, _ in limits] == ["loops", "study_shared", "speed"]
    # The stand-in returns at once, so each limit is the budget less a second or two, or the stage's own.
    assert 95 <= limits[0][1] <= 100 and 95 <= limits[1][1] <= 100
    assert limits[2][1] == 40
    assert len(calls) == 4
    assert calls[0].startswith("bench/trainer_speed.py --device=cpu --shapes=jsb --hidden=40 --trials=487")
    assert "--lstm_loops=xla,pallas" in calls[0]
    assert calls[1].startswith("- ") and calls[1].endswith("loops.json")
    assert calls[2].startswith("-m experiments.study --config=configs/jsb.py --config.data.path=data/jsb.pickle")
    assert "--config.train.lstm_loops=pallas" in calls[2] and "--config.train.data_order=shared" in calls[2]
    assert calls[3].startswith("bench/trainer_speed.py --device=cpu --hidden=200 --trials=1,32,200")
    assert (tmp_path / "out" / "study_loops").read_text().strip() == "pallas"


def test_study_loops_override_and_default_order(tmp_path):
    result, calls = _run(tmp_path, dict(STAGES="study_shared loops", STUDY_LOOPS="xla"), "jsb.pickle")
    assert result.returncode == 0
    assert [name for name, _ in _limits(result.stdout)] == ["study_shared", "loops"]
    assert "--config.train.lstm_loops=xla" in calls[0] and "--device=gpu" in calls[1]
    # Without STAGES: speed, big (two runs), project; study is skipped without a JSB file.
    result, calls = _run(tmp_path, {})
    assert [name for name, _ in _limits(result.stdout)] == ["speed", "big", "onevmap", "project"]
    assert "study skipped: no JSB_FILE" in result.stdout
    assert len(calls) == 4


def test_budget_spent_skips_stages(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "study_loops").write_text("xla\n")  # an earlier run's choice
    result, calls = _run(tmp_path, dict(STAGES="speed loops study_shared", BUDGET="29"), "jsb.pickle")
    assert result.returncode == 0
    assert _limits(result.stdout) == []
    for name in ("speed", "loops", "study_shared"):
        assert f"== {name} skipped: " in result.stdout
    assert calls == []
    assert (tmp_path / "out" / "study_loops").read_text().strip() == "xla"  # not decided again


def test_unknown_stage_is_refused_before_anything_runs(tmp_path):
    result, calls = _run(tmp_path, dict(STAGES="speed sped"))
    assert result.returncode == 2
    assert "unknown stage 'sped'" in result.stdout
    assert calls == [] and not (tmp_path / "out" / "machine.txt").exists()


def test_study_store_seeds_a_workdir_without_one(tmp_path):
    store = tmp_path / "earlier.sqlite"
    store.write_bytes(b"an earlier machine's store")
    result, calls = _run(tmp_path, dict(STAGES="study_shared", STUDY_STORE=str(store)), "jsb.pickle")
    assert result.returncode == 0, result.stdout + result.stderr
    seeded = tmp_path / "out" / "jsb_study_shared" / "trials.sqlite"
    assert seeded.read_bytes() == b"an earlier machine's store"
    assert len(calls) == 1 and f"--workdir={tmp_path / 'out'}/jsb_study_shared" in calls[0]
    # A workdir that has a store (this machine's, newer) keeps it.
    seeded.write_bytes(b"this machine's store")
    result, calls = _run(tmp_path, dict(STAGES="study_shared", STUDY_STORE=str(store)), "jsb.pickle")
    assert result.returncode == 0 and seeded.read_bytes() == b"this machine's store"
    assert "goes on from" not in result.stdout and len(calls) == 1


def test_missing_study_store_is_refused_before_anything_runs(tmp_path):
    result, calls = _run(tmp_path, dict(STAGES="loops study_shared", STUDY_STORE=str(tmp_path / "nothing")),
                         "jsb.pickle")
    assert result.returncode == 2 and "no STUDY_STORE file" in result.stdout
    assert calls == [] and not (tmp_path / "out" / "machine.txt").exists()
