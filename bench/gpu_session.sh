#!/usr/bin/env bash
# Issue 10's measurements still owed, in one call on a GPU machine that sees nothing but this working tree:
#
#   bench/gpu_session.sh RESULTS_DIR JSB_FILE [WHEELS_DIR]
#
# Runs gpu_check.sh's stages, in this order by default: `speed` (trainer_speed at N = 200, K = 1, 32, 200, with
# XLA's and with the Pallas loops, beside PyTorch eager and CUDA graph, JSB and TIMIT shapes: the issue's
# headline rows), `speed_bf16` (the same at K = 200 with bfloat16 recurrent products: the issue's targets there,
# 4,300/s TIMIT and 40,000/s JSB, are at or past float32's streamed-weight bound; bfloat16 passed the first and
# came 4 % short of the second on 2026-11-28), `loops` (the JSB study's first group, 487 trials of the mixed program at N =
# 40, with both loops; it picks the loops of the study) and `study_shared` (the JSB study of 9 x 200 trials with
# data orders in strata, STUDY_ORDER as gpu_check.sh's, checkpointed every 60 s), all inside BUDGET seconds
# (default 560: with a stage's 15 s of GRACE and the copying, inside a device call's 600). The speed rows come
# first because they take a few minutes and are measured once, while the study (~16-19 minutes with XLA's loops,
# estimated from 2026-11-28) outlasts one 15-minute device session unless the Pallas loops cut it by more than
# half, and goes on across calls and
# machines: it gets what the stages before it leave, up to LIMIT_STUDY. They run in WORK_DIR (default .gpu_work,
# which .gitignore keeps out of the working tree's copy, so no carried folder replaces it between two calls on
# one machine; it must not be under RESULTS_DIR: a study's checkpoint files run to hundreds of MB); after every
# stage what a person reads is copied into RESULTS_DIR (bench/gpu_collect.sh), so a call cut at its limit keeps
# the stages that ended: 8 files (what a device call brings back at most), the machine, the stages' logs, the
# study's log and its trial store, and json.tar.gz with the stages' JSON and the call's output;
# gpu_check.sh's summary is the call's output. Run again with the same WORK_DIR on the same machine
# (STAGES="study_shared", say), the study goes on from where its limit's SIGTERM stopped it, with the loops the
# first run chose (its wall time is then the sum of the runs' training times in study.log). On a later machine,
# STUDY_STORE=<the study_shared_trials.sqlite an earlier call copied back, carried> STAGES="loops study_shared"
# goes on from that store: its finished trials stand, its unfinished ones train from their first epochs (their
# checkpoints stayed on the earlier machine); `python bench/study_log_time.py <the calls' study logs>` sums the
# study's time over them. WHEELS_DIR: wheels to install first into /tmp/site, for what the package imports and
# the machine lacks (on the H100/H200 image with Python 3.12: ml-collections and rapidfuzz; here, beforehand:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl ml-collections rapidfuzz
# and carry .whl, exactly those two wheels: two of one package stop the install). Limits (seconds): LIMIT_SPEED
# (default 270: its XLA and PyTorch rows come first, the Pallas rows after them), LIMIT_SPEED_BF16 (120),
# LIMIT_LOOPS (120), LIMIT_STUDY (600); SPEED_LOOPS (default xla,pallas), STAGES and BUDGET (whole seconds) as
# gpu_check.sh's. A second call gives a BUDGET that leaves the call's own overhead (~60 s of the device time
# left) and carries .whl only. DEVICE=cpu rehearses the whole call on a CPU (stages cut at their limits; a
# rehearsal's WORK_DIR holds CPU results: remove it, or give another, before a device call).
set -u
results=${1:?usage: bench/gpu_session.sh RESULTS_DIR JSB_FILE [WHEELS_DIR]}
jsb=${2:?usage: bench/gpu_session.sh RESULTS_DIR JSB_FILE [WHEELS_DIR]}
wheels=${3:-}
work=${WORK_DIR:-.gpu_work}
case "$(realpath -m "$work")/" in
  "$(realpath -m "$results")"/*) echo "WORK_DIR ($work) must not be under RESULTS_DIR ($results)"; exit 2 ;;
esac
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
for module in ml_collections rapidfuzz; do
  python3 -c "import $module" 2>/dev/null || { echo "$module is missing: give WHEELS_DIR"; exit 2; }
done
[ -f "$jsb" ] || { echo "no JSB file at $jsb"; exit 2; }
mkdir -p "$results" "$work"
# After every stage its results go to RESULTS_DIR (bench/gpu_collect.sh): a call cut at its limit keeps them.
STAGES=${STAGES:-speed speed_bf16 loops study_shared} BUDGET=${BUDGET:-560} LIMIT_LOOPS=${LIMIT_LOOPS:-120} \
  LIMIT_STUDY=${LIMIT_STUDY:-600} LIMIT_SPEED=${LIMIT_SPEED:-270} LIMIT_SPEED_BF16=${LIMIT_SPEED_BF16:-120} \
  SPEED_LOOPS=${SPEED_LOOPS:-xla,pallas} AFTER_STAGE="bench/gpu_collect.sh '$work' '$results'" \
  bench/gpu_check.sh "$work" "$jsb" 2>&1 | tee "$work/gpu_check.out"
bench/gpu_collect.sh "$work" "$results"
ls -la "$results"
