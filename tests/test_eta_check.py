"""bench/eta_check.py: a finished study's ETAs against the time it had left, against a log worked by hand."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import eta_check  # noqa: E402

PREFIX = "140457057110912 progress.py:277]"


def _line(stamp, message):
    return f"I{stamp} {PREFIX} {message}\n"


def _progress(done, eta):
    return f"[##   ] {done}/10 finished ({done} done, 0 diverged), 1 running, 0 pending | best val: V 9.1 | 5 updates/s | ETA {eta}"


LOG = [
    _line("1207 23:59:00.000000", "Study 0123456789abcdef of jsb in /tmp/a"),  # an earlier run, stopped
    _line("1207 23:59:10.000000", _progress(1, "0:00:30")),
    _line("1208 00:00:00.000000", "Study 0123456789abcdef of jsb in /tmp/a"),  # the run that finished
    _line("1208 00:00:05.000000", _progress(0, "?")),
    _line("1208 00:00:10.000000", _progress(2, "0:01:00")),  # 90.5 s left
    _line("1208 00:00:40.000000", _progress(5, "1 day, 0:00:30")),  # 60.5 s left
    _line("1208 00:01:30.000000", _progress(9, "0:00:20")),  # 10.5 s left
    _line("1208 00:01:40.000000", _progress(10, "0:00:00")),  # in the last 5 % of the run's 100.5 s
    _line("1208 00:01:40.500000", "Study finished: 10 done, 0 diverged"),
    _line("1208 00:02:00.000000", "Report: /tmp/a/report.md"),
]


def test_rows_and_summary_by_hand():
    rows, total = eta_check.eta_rows(LOG)
    assert total == pytest.approx(100.5)
    assert rows == [(10.0, 2, 60, 90.5), (40.0, 5, 86430, 60.5), (90.0, 9, 20, 10.5), (100.0, 10, 0, 0.5)]
    s = eta_check.summary(rows, total)
    # Lines before 95.475 s: the first three.
    assert s["lines"] == 3
    assert s["median"] == pytest.approx(20 / 10.5)
    assert s["min"] == pytest.approx(60 / 90.5) and s["max"] == pytest.approx(86430 / 60.5)


def test_a_log_without_a_finished_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no run that ran to 'Study finished'"):
        eta_check.eta_rows(LOG[:4])
    path = tmp_path / "study.log"
    path.write_text("".join(LOG))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "eta_check.py"), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| 40 | 5 | 86430 | 60 | 1428.60 |" in proc.stdout
    assert "ETA / time left over 3 lines: median 1.90, 0.66 to 1428.60" in proc.stdout
