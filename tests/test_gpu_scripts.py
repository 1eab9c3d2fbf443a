"""bench/gpu_check.sh's stage order, time budget and refusals, with a stand-in for Python that records its calls.

The device sessions that run this script are short and rare, so its shell logic is checked here: stages run in
the order STAGES names them, each stage's limit shrinks to what is left of BUDGET, a stage with under 30 s left
is skipped, an unknown stage (or a missing STUDY_STORE) stops the script before anything runs, the study trains
with the loops the loops stage chose, an earlier machine's store seeds a workdir that has none, a stage at its
limit gets SIGTERM and SIGKILL GRACE seconds later, and the summary prints each result row once, a study's stop
line and a stopped study's last progress line; and bench/gpu_session.sh's default order (the speed rows, then
the loops stage and the study) and the files it brings back.
"""

import os
import pathlib
import re
import shutil
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")

# Records each call's arguments, one line per call; as `python - FILE` (the loops stage's choice) prints "pallas".
STUB = """#!/bin/sh
echo "$*" >> "$STUB_LOG"
[ "$1" = "-" ] && echo pallas
case "$*" in *"${STUB_HANG_ON:-no such call}"*) sleep 60 ;; esac
exit 0
"""


def _run(tmp_path, env, *args, script=SCRIPT, argv=None):
    """`script` (gpu_check.sh; OUT_DIR tmp_path/out, then `args`; or `argv` whole) with the stand-in for Python,
    the environment's own settings of these scripts dropped and `env`'s added: its result and the calls."""
    stub = tmp_path / "python_stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.txt"
    log.write_text("")
    ours = ("STAGES", "BUDGET", "DEVICE", "STUDY_LOOPS", "SPEED_LOOPS", "STUDY_STORE", "STUDY_ORDER", "WORK_DIR")
    full_env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("LIMIT_")}
    full_env.update(PYTHON=str(stub), STUB_LOG=str(log), **env)
    argv = [str(tmp_path / "out"), *args] if argv is None else argv
    result = subprocess.run(["bash", str(script), *argv], cwd=ROOT, env=full_env, capture_output=True, text=True,
                            timeout=60)
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
    assert "--config.train.lstm_loops=pallas" in calls[2] and "--config.train.data_order=strata" in calls[2]
    assert calls[3].startswith("bench/trainer_speed.py --device=cpu --hidden=200 --trials=1,32,200")
    assert (tmp_path / "out" / "study_loops").read_text().strip() == "pallas"


def test_study_loops_override_and_default_order(tmp_path):
    result, calls = _run(tmp_path, dict(STAGES="study_shared loops", STUDY_LOOPS="xla"), "jsb.pickle")
    assert result.returncode == 0
    assert [name for name, _ in _limits(result.stdout)] == ["study_shared", "loops"]
    assert "--config.train.lstm_loops=xla" in calls[0] and "--device=gpu" in calls[1]
    result, calls = _run(tmp_path, dict(STAGES="study_shared", STUDY_ORDER="shared"), "jsb.pickle")
    assert result.returncode == 0 and "--config.train.data_order=shared" in calls[0]
    # Without STAGES: speed, big (two runs), project; study is skipped without a JSB file.
    result, calls = _run(tmp_path, {})
    assert [name for name, _ in _limits(result.stdout)] == ["speed", "big", "onevmap", "project"]
    assert "study skipped: no JSB_FILE" in result.stdout
    assert len(calls) == 4


def test_speed_bf16_measures_k_200_in_bfloat16_with_the_speed_loops(tmp_path):
    result, calls = _run(tmp_path, dict(STAGES="speed_bf16", SPEED_LOOPS="xla,pallas", LIMIT_SPEED_BF16="77"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _limits(result.stdout) == [("speed_bf16", 77)]
    assert calls == ["bench/trainer_speed.py --device=gpu --hidden=200 --trials=200 --recurrent_dtypes=bfloat16 "
                     f"--lstm_loops=xla,pallas --notorch --repeats=3 --min_time=0.3 --out={tmp_path}/out/speed_bf16.json"]


def test_the_session_measures_speed_first_and_brings_back_8_files(tmp_path):
    """bench/gpu_session.sh with the stand-in for Python: by default the speed rows (both loops, then bfloat16 at K
    = 200), the loops stage and the study, in that order within its budget; the results folder holds the 8 files
    a device call brings back at most, the stages' JSON in one archive."""
    work, results, jsb = tmp_path / "work", tmp_path / "results", tmp_path / "jsb.pickle"
    jsb.write_bytes(b"chorales")
    work.mkdir()
    (work / "speed.json").write_text("{}")  # as a stage leaves it
    done, calls = _run(tmp_path, dict(WORK_DIR=str(work)), script=ROOT / "bench" / "gpu_session.sh",
                       argv=[str(results), str(jsb)])
    assert done.returncode == 0, done.stdout + done.stderr
    limits = _limits(done.stdout)
    assert [name for name, _ in limits] == ["speed", "speed_bf16", "loops", "study_shared"]
    assert [limit for _, limit in limits][:3] == [270, 120, 120] and 540 <= limits[3][1] <= 560
    assert "--trials=1,32,200 --lstm_loops=xla,pallas" in calls[0]
    assert "--trials=200 --recurrent_dtypes=bfloat16 --lstm_loops=xla,pallas" in calls[1]
    assert "--config.train.lstm_loops=pallas" in calls[-1]  # the stand-in's choice, as the loops stage's
    files = sorted(p.name for p in results.iterdir())
    assert files == ["json.tar.gz", "loops.log", "machine.txt", "speed.log", "speed_bf16.log", "study_shared.log"]
    listed = subprocess.run(["tar", "-tzf", str(results / "json.tar.gz")], capture_output=True, text=True, check=True)
    assert sorted(listed.stdout.split()) == ["gpu_check.out", "speed.json"]


def test_a_session_cut_at_its_limit_brings_back_the_stages_that_ended(tmp_path):
    """The device call's limit kills the whole session in its second stage: the first stage's log and the
    machine's description are already in the results folder (they went there when the stage ended)."""
    work, results, jsb = tmp_path / "work", tmp_path / "results", tmp_path / "jsb.pickle"
    jsb.write_bytes(b"chorales")
    stub = tmp_path / "python_stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("STAGES", "BUDGET", "WORK_DIR")}
    env.update(PYTHON=str(stub), STUB_LOG=str(tmp_path / "calls.txt"), WORK_DIR=str(work),
               STAGES="speed speed_bf16", STUB_HANG_ON="--recurrent_dtypes=bfloat16")
    cut = subprocess.run(["timeout", "-s", "KILL", "8", "bash", str(ROOT / "bench" / "gpu_session.sh"), str(results),
                          str(jsb)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert cut.returncode in (137, -9), cut.stdout + cut.stderr  # killed (timeout -s KILL may take itself too)
    assert sorted(p.name for p in results.iterdir()) == ["json.tar.gz", "machine.txt", "speed.log"]
    listed = subprocess.run(["tar", "-tzf", str(results / "json.tar.gz")], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["gpu_check.out"]


@pytest.mark.parametrize("setting", ["BUDGET=212.4", "BUDGET=3m", "LIMIT_STUDY=10.5", "GRACE=x"])
def test_seconds_that_are_not_whole_are_refused_before_anything_runs(tmp_path, setting):
    """[ -gt ] cannot read 212.4: such a BUDGET turned the budget off (each stage took its whole limit)."""
    name, value = setting.split("=")
    result, calls = _run(tmp_path, {"STAGES": "speed", name: value})
    assert result.returncode == 2 and f"{name}={value}: give whole seconds" in result.stdout
    assert calls == [] and not (tmp_path / "out" / "machine.txt").exists()


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


STOP_LINE = ("I1129 13:55:42.000000 140651637644160 study.py:229] Study stopped on request: 549 of 1800 trials "
             "finished, 9 in training saved to w")


def test_the_summary_prints_each_row_once_and_a_studys_last_progress_line(tmp_path):
    """What the call prints of the stages' logs (here written beforehand, no stage run): a benchmark row printed
    as measured and again in the table appears once, in its order; of a stopped study, its last progress line,
    the absl prefix cut."""
    out = tmp_path / "out"
    out.mkdir()
    row_a = "jsb      60   40 odyssey mixed                         487    10      3918.8            -"
    row_b = "jsb      60   40 odyssey mixed/pallas                  487    10       634.0            -"
    (out / "loops.log").write_text("\n".join([
        "I1129 13:49:34.357166 140606340615040 xla_bridge.py:849] Unable to initialize backend 'tpu'",
        "mixed/pallas K=487: weights after one epoch differ from XLA's loops' by at most 1.3e-07 (relative)",
        row_a, row_b, "", "shape     T    N program", "-" * 20, row_a, row_b, "-" * 20, "wrote loops.json"]) + "\n")
    progress = "[{}] {}/1800 finished ({} done, 0 diverged), {} running, {} pending | best val: V {} | {} updates/s"
    first = progress.format(" " * 20, 0, 0, 487, 1313, "-", 1739)
    last = progress.format("#" * 6 + " " * 14, 549, 549, 0, 1251, "8.692", 48265)
    (out / "study_shared.log").write_text("\n".join([
        "I1129 13:51:32.532921 140651637644160 study.py:123] New study: 1800 trials (9 variants x 200)",
        f"I1129 13:52:40.433914 140651637644160 study.py:222] {first}",
        "I1129 13:52:41.007445 140651637644160 train.py:1059] jsb mixed N<=40: checkpoint of 487 live trials",
        f"I1129 13:55:40.433914 140651637644160 study.py:222] {last}",
        "I1129 13:55:41.007445 140651637644160 train.py:1122] jsb mixed N<=40: 9 live trials, epoch took 0.2s",
        STOP_LINE]) + "\n")
    result, calls = _run(tmp_path, dict(STAGES="speed", BUDGET="29"), "jsb.pickle")
    assert result.returncode == 0 and calls == []
    summary = result.stdout[result.stdout.index("-- loops"):].splitlines()
    assert summary == ["-- loops",
                       "mixed/pallas K=487: weights after one epoch differ from XLA's loops' by at most 1.3e-07 "
                       "(relative)", row_a, row_b,
                       "-- study_shared", STOP_LINE, last]


# A stage that outlasts its limit: as `python` it traps SIGTERM, sleeps on a little (a study ending its epoch and
# saving its trials) or past any grace (TERM_SLEEP seconds), then exits.
SLOW_STUB = """#!/bin/bash
echo "$*" >> "$STUB_LOG"
[ "$1" = "-c" ] && exit 0
trap 'echo term >> "$STUB_LOG"; sleep "$TERM_SLEEP"; echo saved >> "$STUB_LOG"; exit 143' TERM
sleep 30 & wait
"""


@pytest.mark.parametrize("term_sleep, code", [("0.5", 124), ("30", 137)])
def test_a_stage_at_its_limit_gets_sigterm_then_sigkill_after_the_grace(tmp_path, term_sleep, code):
    """At its limit a stage gets SIGTERM: a process that ends within GRACE seconds ends as it chooses (timeout's
    status 124); one that does not is killed GRACE seconds later (137), and the script goes on to its summary."""
    stub = tmp_path / "python_stub"
    stub.write_text(SLOW_STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("STAGES", "BUDGET", "GRACE") and not k.startswith("LIMIT_")}
    env.update(PYTHON=str(stub), STUB_LOG=str(log), STAGES="speed", LIMIT_SPEED="1", GRACE="2",
               TERM_SLEEP=term_sleep)
    start = time.monotonic()
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    took = time.monotonic() - start
    assert result.returncode == 0 and f"   exit {code} after" in result.stdout, result.stdout + result.stderr
    calls = log.read_text().split()
    assert "term" in calls and ("saved" in calls) == (code == 124), calls
    assert took < (3 if code == 124 else 5) + 2, took
