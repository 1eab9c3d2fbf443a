#!/usr/bin/env bash
# What a person reads of a gpu_check.sh run, copied from its OUT_DIR into RESULTS_DIR (8 files at most, what a
# device call brings back): the machine, the stages' logs, the JSB study's log and its trial store (the WAL
# folded in first), and json.tar.gz with the stages' JSON and the run's output so far.
#
#   bench/gpu_collect.sh OUT_DIR RESULTS_DIR
#
# gpu_session.sh runs it after every stage (gpu_check.sh's AFTER_STAGE) and at its end, so a call cut at its
# limit still brings back every stage that ended before the cut. Run it only while no study writes to the store.
set -u
work=${1:?usage: bench/gpu_collect.sh OUT_DIR RESULTS_DIR}
results=${2:?usage: bench/gpu_collect.sh OUT_DIR RESULTS_DIR}
py=${PYTHON:-python3}
mkdir -p "$results"
for f in machine.txt speed.log speed_bf16.log loops.log study_shared.log; do
  [ -f "$work/$f" ] && cp "$work/$f" "$results/"
done
# The store is in WAL mode: fold its log into the file before copying it (the study may have been stopped).
store=$work/jsb_study_shared/trials.sqlite
[ -f "$store" ] && $py -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()" "$store"
for f in study.log trials.sqlite; do  # 7 files with the 5 above
  [ -f "$work/jsb_study_shared/$f" ] && cp "$work/jsb_study_shared/$f" "$results/study_shared_$f"
done
# The 8th: every stage's JSON (the rows as measured) and the run's output, in one archive, replaced whole.
(cd "$work" && tar -czf - $(ls *.json gpu_check.out 2>/dev/null)) > "$results/json.tar.gz.tmp" \
  && mv "$results/json.tar.gz.tmp" "$results/json.tar.gz"
exit 0
