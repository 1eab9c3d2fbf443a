"""A study's time, summed over the runs that trained it, from their study.log files.

Run (from the repository root):

    python bench/study_log_time.py WORKDIR/study.log [MORE_LOGS ...] [--out=time.json]

A study stopped at a limit and started again (on the same machine from its checkpoints, or on another from
its store, bench/gpu_check.sh's STUDY_STORE) logs each run from its "Study <id> of <task> in <dir>" line.
A run's time is from that line to its "Study finished" line; to its "Study stopped on request" line where a
SIGTERM or Ctrl-C stopped it (`stopped`: the study ended the epoch, saved its trials in training and said so);
or to its last line where it was killed (`cut off`: the log does not say when the kill came, so the run counts
short by the time since its last line, at most about an epoch or the study's --progress_seconds). The report
written after "Study finished" is not counted.
The study's time is the sum over its runs: the time the machines spent on it, work a stop threw away and each
run's compilation included. The table gives each run's start, end, minutes, the trials finished at its end
(its last progress line) and how it ended, and the sum per study id; logs of several study ids are summed apart.
"""

import datetime
import json
import re
import sys

from absl import app
from absl import flags

_OUT = flags.DEFINE_string("out", None, "Also write the runs and the sums as JSON here.")

# absl's line prefix: level, MMDD, time, thread, file:line]. The year is not in it: a run that passes New Year
# is taken as ending in the next one.
_LINE = re.compile(r"^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6}) +\d+ +\S+\] (.*)$")
_START = re.compile(r"^Study (\w+) of (\w+) in ")
_FINISHED = re.compile(r"^Study finished: ")
_STOPPED = re.compile(r"^Study stopped on request: ")
_PROGRESS = re.compile(r"\] (\d+)/(\d+) finished ")


def _stamp(m):
    month, day, hour, minute, second, micro = (int(g) for g in m.groups()[:6])
    return datetime.datetime(2000, month, day, hour, minute, second, micro)  # a leap year: 29 Feb parses


def parse_line(line):
    """(datetime in the year 2000, message) of a line with absl's prefix, else None."""
    m = _LINE.match(line.rstrip("\n"))
    return None if m is None else (_stamp(m), m.group(7))


def runs(lines, source=""):
    """The runs in one log's lines: dicts of source, study, task, start and end (datetime, year 2000 or 2001),
    seconds, finished (whether it logged "Study finished"), stopped (whether it logged its stop on request)
    and trials_finished / trials (its last progress line's counts, or None). Lines before the first run's start
    line and lines without absl's prefix are skipped."""
    out, run = [], None
    for line in lines:
        parsed = parse_line(line)
        if parsed is None:
            continue
        when, message = parsed
        start = _START.match(message)
        if start:
            run = dict(source=source, study=start.group(1), task=start.group(2), start=when, end=when,
                       finished=False, stopped=False, trials_finished=None, trials=None)
            out.append(run)
        elif run is not None:
            if when < run["end"]:  # past New Year within a run
                when = when.replace(year=run["end"].year + 1)
            run["end"] = when
            progress = _PROGRESS.search(message)
            if progress:
                run["trials_finished"], run["trials"] = int(progress.group(1)), int(progress.group(2))
            ended = "finished" if _FINISHED.match(message) else "stopped" if _STOPPED.match(message) else None
            if ended:
                run[ended] = True
                run = None  # the report's lines after this are not training
    for run in out:
        run["seconds"] = (run["end"] - run["start"]).total_seconds()
    return out


def totals(all_runs):
    """study id -> dict(runs, seconds, finished: whether its last run finished it, trials_finished, trials)."""
    sums = {}
    for run in all_runs:
        s = sums.setdefault(run["study"], dict(runs=0, seconds=0.0, finished=False, trials_finished=None,
                                               trials=None))
        s["runs"] += 1
        s["seconds"] += run["seconds"]
        s["finished"] = run["finished"]
        if run["trials_finished"] is not None:
            s["trials_finished"], s["trials"] = run["trials_finished"], run["trials"]
    return sums


def _end(run):
    return "finished" if run["finished"] else "stopped" if run["stopped"] else "cut off"


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more study.log files, in the order their runs ran")
    all_runs = []
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                found = runs(f, source=path)
        except OSError as e:
            sys.exit(f"study_log_time: {e}")
        if not found:
            sys.exit(f"study_log_time: {path} holds no study run (no 'Study <id> of <task> in' line)")
        all_runs.extend(found)
    print(f"{'log':<40} {'study':<17} {'start':<15} {'end':<15} {'minutes':>8} {'trials finished':>16}  end")
    for r in all_runs:
        done = "-" if r["trials"] is None else f"{r['trials_finished']}/{r['trials']}"
        print(f"{r['source'][-40:]:<40} {r['study']:<17} {r['start']:%m-%d %H:%M:%S} {r['end']:%m-%d %H:%M:%S} "
              f"{r['seconds'] / 60:>8.2f} {done:>16}  {_end(r)}")
    sums = totals(all_runs)
    for study, s in sums.items():
        done = "" if s["trials"] is None else f", {s['trials_finished']}/{s['trials']} trials finished"
        print(f"study {study}: {s['runs']} run(s), {s['seconds'] / 60:.2f} minutes in all{done}, "
              f"{'finished' if s['finished'] else 'not finished'}")
    if _OUT.value:
        rows = [dict(r, start=r["start"].strftime("%m-%d %H:%M:%S.%f"), end=r["end"].strftime("%m-%d %H:%M:%S.%f"))
                for r in all_runs]
        with open(_OUT.value, "w") as f:
            json.dump(dict(runs=rows, studies=sums), f, indent=2)


if __name__ == "__main__":
    app.run(main)
