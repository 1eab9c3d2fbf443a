"""Writes a run's report: python -m experiments.report --workdir=DIR.

Reads DIR/config.json and DIR/trials.sqlite and writes DIR/report.md,
DIR/report.html (figures inline) and DIR/figures/*.png.
"""

import pathlib
import sys

from absl import app, flags

from odyssey.analysis import report, stats

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (config.json, trials.sqlite).")
_TREES = flags.DEFINE_integer("n_trees", 100, "Regression trees per fANOVA forest (100 in the paper).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the fANOVA forests.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _TREES.value < 1:
        sys.exit(f"report: error: --n_trees={_TREES.value}: give at least one tree per forest")
    try:  # read first, so that only a directory without a run's files gets the one line, not a failure after
        stats.read_config(_WORKDIR.value)
        stats.load_trials(pathlib.Path(_WORKDIR.value) / "trials.sqlite")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"report: error: {e}")
    print(report.write_report(_WORKDIR.value, n_trees=_TREES.value, seed=_SEED.value))


if __name__ == "__main__":
    app.run(main)
