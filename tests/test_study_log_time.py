"""bench/study_log_time.py: a study's time summed over its runs, against spans worked out by hand."""

import datetime
import logging as std_logging
import os
import subprocess
import sys

from absl import logging
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import study_log_time  # noqa: E402

PREFIX = "139865466507584 study.py:183]"


def _line(stamp, message, level="I"):
    return f"{level}{stamp} {PREFIX} {message}\n"


def test_runs_and_sums_by_hand(tmp_path):
    first = [
        "a line without absl's prefix\n",
        _line("1128 04:11:40.000000", "before any run: not counted"),
        _line("1128 04:11:49.115854", "Study 34b6f4fe5d8b8575 of jsb in .gpu/run/jsb_study_shared"),
        _line("1128 04:12:14.000000", "[       ] 4/1800 finished (4 done, 0 diverged), 483 running"),
        _line("1128 04:15:57.500000", "[#      ] 549/1800 finished (549 done, 0 diverged), 400 running", "W"),
    ]
    stopped = [  # a run that a SIGTERM stopped: it ends at its stop line
        _line("1128 05:00:00.000000", "Study 34b6f4fe5d8b8575 of jsb in .gpu/run/jsb_study_shared"),
        _line("1128 05:01:00.000000", "[##     ] 700/1800 finished (700 done, 0 diverged), 400 running"),
        _line("1128 05:01:02.500000", "Study stopped on request: 700 of 1800 trials finished, 400 in training saved"),
        _line("1128 05:01:09.000000", "a line after the stop: not counted"),
    ]
    second = [  # the next machine, from the store; past midnight; then a report that is not counted
        _line("1129 23:58:00.000000", "Study 34b6f4fe5d8b8575 of jsb in .gpu/run/jsb_study_shared"),
        _line("1129 23:59:30.000000", "[####   ] 900/1800 finished (900 done, 0 diverged)"),
        _line("1130 00:07:00.250000", "[#######] 1800/1800 finished (1799 done, 1 diverged)"),
        _line("1130 00:07:01.000000", "Study finished: 1799 done, 1 diverged"),
        _line("1130 00:09:00.000000", "Report written"),
        _line("1130 00:10:00.000000", "Study 0123456789abcdef of timit in elsewhere"),
        _line("1130 00:10:30.000000", "nothing more"),
    ]
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("".join(first + stopped))
    b.write_text("".join(second))
    runs = (study_log_time.runs(a.read_text().splitlines(keepends=True), "a")
            + study_log_time.runs(b.read_text().splitlines(keepends=True), "b"))
    assert [(r["study"], r["task"], r["finished"], r["stopped"]) for r in runs] == [
        ("34b6f4fe5d8b8575", "jsb", False, False), ("34b6f4fe5d8b8575", "jsb", False, True),
        ("34b6f4fe5d8b8575", "jsb", True, False), ("0123456789abcdef", "timit", False, False)]
    first_s = (datetime.datetime(2000, 11, 28, 4, 15, 57, 500000)
               - datetime.datetime(2000, 11, 28, 4, 11, 49, 115854)).total_seconds()
    assert runs[0]["seconds"] == pytest.approx(first_s) == pytest.approx(248.384146)
    assert runs[1]["seconds"] == pytest.approx(62.5)  # 05:00:00 to its stop line, not to the line after it
    assert runs[2]["seconds"] == pytest.approx(2 * 60 + 7 * 60 + 1.0)  # 23:58:00 to 00:07:01
    assert runs[3]["seconds"] == pytest.approx(30.0)
    assert [r["trials_finished"] for r in runs[:3]] == [549, 700, 1800] and runs[3]["trials"] is None
    sums = study_log_time.totals(runs)
    assert sums["34b6f4fe5d8b8575"]["runs"] == 3
    assert sums["34b6f4fe5d8b8575"]["seconds"] == pytest.approx(first_s + 62.5 + 541.0)
    assert sums["34b6f4fe5d8b8575"]["finished"] and sums["34b6f4fe5d8b8575"]["trials_finished"] == 1800
    assert not sums["0123456789abcdef"]["finished"]
    # A last run stopped before its first progress line leaves the count of the run before it.
    short = study_log_time.totals([runs[0], dict(runs[3], study=runs[0]["study"])])[runs[0]["study"]]
    assert (short["trials_finished"], short["trials"], short["runs"]) == (549, 1800, 2)

    out = subprocess.run([sys.executable, "bench/study_log_time.py", str(a), str(b), f"--out={tmp_path / 't.json'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    total = (first_s + 62.5 + 541.0) / 60
    assert f"3 run(s), {total:.2f} minutes in all, 1800/1800 trials finished, finished" in out.stdout
    ends = [line.split()[-1] for line in out.stdout.splitlines()[1:5]]
    assert ends == ["off", "stopped", "finished", "off"], out.stdout  # "cut off" for the runs without an end
    assert (tmp_path / "t.json").exists()


def test_a_new_year_inside_a_run():
    lines = [_line("1231 23:59:59.000000", "Study ab of jsb in w"), _line("0101 00:00:04.000000", "x")]
    assert study_log_time.runs(lines)[0]["seconds"] == pytest.approx(5.0)


def test_reads_what_the_study_writes(tmp_path):
    # The study's log file takes absl's PythonFormatter (experiments/study.py, _log_to_file): the parser must
    # read that formatter's lines, whatever the thread id and file name.
    path = tmp_path / "study.log"
    handler = std_logging.FileHandler(path)
    handler.setFormatter(logging.PythonFormatter())
    logger = logging.get_absl_logger()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(std_logging.INFO)
    try:
        logging.info("Study %s of %s in %s", "feedface", "jsb", tmp_path)
        logging.info("[##  ] %d/%d finished (%d done, 0 diverged)", 7, 9, 7)
        logging.warning("something")
        logging.info("Study finished: %d done, %d diverged", 9, 0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
        handler.close()
    runs = study_log_time.runs(path.read_text().splitlines(keepends=True))
    assert len(runs) == 1 and runs[0]["study"] == "feedface" and runs[0]["finished"]
    assert runs[0]["trials_finished"] == 7 and 0 <= runs[0]["seconds"] < 5


def test_refuses_a_log_without_a_run(tmp_path):
    path = tmp_path / "empty.log"
    path.write_text(_line("1128 04:11:40.000000", "no study here"))
    out = subprocess.run([sys.executable, "bench/study_log_time.py", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "holds no study run" in out.stderr
