"""How good a study's ETA was: each progress line's ETA against the time the study then really had left.

Run (from the repository root) on the study.log of a study that ran to its end in one run:

    python bench/eta_check.py WORKDIR/study.log [--out=eta.json]

For each progress line with an ETA (`odyssey.progress.Progress`), the table gives the seconds since the run's
start, the trials finished, the ETA, the seconds from that line to the run's "Study finished" line and their
ratio (ETA over the time left: 1 is exact, below 1 too short); then the median, smallest and largest ratio.
Lines in the last 5 % of the run are left out of the summary, where a second of error is a large ratio.
"""

import json
import re
import statistics
import sys

from absl import app
from absl import flags

import study_log_time  # bench/ is the script's folder, so on sys.path

# --out (write the rows and the summary as JSON there) is study_log_time's flag, defined on its import.
_OUT = flags.FLAGS["out"]

_ETA = re.compile(r"\] (\d+)/(\d+) finished .*\| ETA (\d+ days?, )?(\d+):(\d\d):(\d\d)$")


def eta_rows(lines):
    """(seconds since the run's start, trials finished, ETA seconds, seconds left) for each progress line
    with an ETA of the log's last run, which must have logged "Study finished"."""
    runs = study_log_time.runs(lines)
    if not runs or not runs[-1]["finished"]:
        raise ValueError("the log has no run that ran to 'Study finished'")
    run = runs[-1]
    rows = []
    for line in lines:
        parsed = study_log_time.parse_line(line)
        if parsed is None:
            continue
        when, message = parsed
        if when < run["start"] or when > run["end"]:
            continue
        eta = _ETA.search(message)
        if eta:
            days = int(eta.group(3).split()[0]) if eta.group(3) else 0
            seconds = days * 86400 + int(eta.group(4)) * 3600 + int(eta.group(5)) * 60 + int(eta.group(6))
            rows.append(((when - run["start"]).total_seconds(), int(eta.group(1)), seconds,
                         (run["end"] - when).total_seconds()))
    return rows, run["seconds"]


def summary(rows, total):
    """Median, smallest and largest ETA / time left over the lines before the last 5 % of the run."""
    ratios = [eta / left for at, _, eta, left in rows if left > 0 and at < 0.95 * total]
    if not ratios:
        return None
    return {"lines": len(ratios), "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python bench/eta_check.py WORKDIR/study.log [--out=eta.json]")
    with open(argv[1]) as f:
        rows, total = eta_rows(f.readlines())
    print(f"{argv[1]}: a run of {total:.0f} s")
    print("| s since start | trials finished | ETA s | s left | ETA / left |")
    print("| --- | --- | --- | --- | --- |")
    for at, finished, eta, left in rows:
        ratio = f"{eta / left:.2f}" if left > 0 else "-"
        print(f"| {at:.0f} | {finished} | {eta} | {left:.0f} | {ratio} |")
    s = summary(rows, total)
    if s is None:
        print("no progress line with an ETA before the run's last 5 %")
    else:
        print(f"ETA / time left over {s['lines']} lines: median {s['median']:.2f}, {s['min']:.2f} to {s['max']:.2f}")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"log": argv[1], "seconds": total, "rows": rows, "summary": s}, f, indent=1)


if __name__ == "__main__":
    sys.exit(app.run(main))
