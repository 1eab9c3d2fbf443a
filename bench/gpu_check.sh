#!/usr/bin/env bash
# Issue 10's GPU measurements in one go, each stage under its own time limit, logs and JSON into OUT_DIR:
#
#   bench/gpu_check.sh OUT_DIR [JSB_FILE]
#
#   1. trainer_speed at N = 200, K = 1, 32, 200, beside PyTorch eager and CUDA graph (JSB and TIMIT shapes);
#   1b. (stage speed_bf16) trainer_speed at N = 200, K = 200 with bfloat16 recurrent products, the loops of
#      SPEED_LOOPS (the issue's targets at K = 200 are past float32's streamed-weight bound; no PyTorch);
#   2. trainer_speed of the mixed program (eight variants in one) at N = 40 and 200 with 64 and 512 trials (how
#      much a bigger program buys), and at N = 200 with 512 trials in one vmap instead of the default chunks;
#   3. study_time on all three tasks (the mixed program, 64 and 512 trials per bucket) and the projection of
#      the full study;
#   3b. (stage bf16) trainer_speed at N = 200, K = 1, 32, 200 with the recurrent products in float32 and in
#      bfloat16 side by side, and study_time of JSB and TIMIT with bfloat16 (the projection it would give);
#   3c. (stage precision) trainer_speed at N = 200, K = 1, 200 with the trainer's float32 products (its default,
#      true float32) and at TF32 precision (matmul_precision=tensorfloat32; JAX's own default there), side by side;
#   3d. (stage order) data_order_check: 487 trials of the mixed program at N = 40 on the JSB file (the first
#      group of the JSB study), epochs with each trial's own data order against one shared order;
#   3e. (stage arms) the short form of 3b and 3c: trainer_speed at N = 200, K = 200 only, recurrent products in
#      float32 and bfloat16, each at float32 and TF32 matmul precision (four programs per shape, no PyTorch);
#   3f. (stage pallas) pallas_lstm_speed: one LSTM layer (the mixed cell) with its loops as Pallas kernels against
#      XLA's loops, forward+grad, float32 and bfloat16 recurrent operands, equal and uneven lengths, JSB
#      N = 40 (487 trials), N = 120 (200) and N = 200 (64 and 200 trials), TIMIT N = 200 (64 trials), values
#      compared;
#   3g. (stage loops) trainer_speed of the JSB study's first group (487 trials of the mixed program at N = 40)
#      with XLA's and with the Pallas loops (lstm_loops), weights compared after an epoch; it writes
#      OUT_DIR/study_loops, the loops stage study_shared then trains with: "pallas" where its row was faster
#      and its weights agreed (relative difference < 1e-4), else "xla" (without the stage: STUDY_LOOPS or xla);
#   4. with JSB_FILE (the standard jsb_chorales.pickle or .json): the JSB study of all nine variants x 200
#      trials, end to end, its wall time in study.log (skipped without the file); stage study_shared is the
#      same study with data orders whose lengths the trials share (config.train.data_order=$STUDY_ORDER:
#      "strata", the default, each trial's own order within strata of 8 sequences of similar length, or
#      "shared", one order for all trials, as on 2026-11-28: on JSB 2.5 % fewer loop steps). Both save their trials
#      in training every 60 s (--checkpoint_seconds), and at their limit's SIGTERM they end the epoch in training
#      and save its trials before they exit (experiments/study.py); study_shared, whose workdir is not removed
#      first, run again after a stop at its limit (same OUT_DIR, same machine) goes on from there: its
#      study.log then holds both runs, and the study's wall time is the sum of their training times.
#      STUDY_STORE (a trials.sqlite an earlier machine's study_shared left, as gpu_session.sh copies it back)
#      seeds a workdir that has no store yet: its finished trials stand, and its unfinished ones (whose
#      checkpoints stayed on that machine) train again from their first epochs. bench/study_log_time.py sums
#      the runs' times from their logs.
#
# Limits (seconds) can be changed with LIMIT_SPEED, LIMIT_BIG, LIMIT_PROJECT, LIMIT_STUDY (defaults 300, 200,
# 400, 900: about 30 minutes in all; LIMIT_SPEED_BF16, default 120; LIMIT_BF16, default 300, for stages bf16,
# precision, arms and order; LIMIT_PALLAS, default 150; LIMIT_LOOPS, default 120). STAGES picks the stages and
# runs them in the order it names them (default "speed big project study"; "speed_bf16", "bf16", "precision",
# "arms", "order", "pallas", "loops" and "study_shared" run only when named; an unknown name stops the script
# before anything runs). BUDGET (seconds, default 0: none) bounds the whole run: each stage's limit shrinks to
# what is left of it, and a stage with under 30 s left is skipped, so a device call's time goes to the stages
# named first. SPEED_LOOPS sets the --lstm_loops of stages speed and speed_bf16 (default xla; "xla,pallas" for
# both); STUDY_ORDER the data order of stage study_shared (default strata, or shared); PROJECT_ARGS adds flags to
# study_time (e.g. --buckets=40,120,200); DEVICE (default gpu) is every script's --device (cpu rehearses the run
# here, with the same shapes, each stage cut at its limit). A stage at its limit gets SIGTERM, and SIGKILL GRACE
# seconds later (default 15: the time a study has to end its epoch and save its trials); it keeps what it logged. Run from the repository root, after `pip install -e '.[bench]'`
# (or with the repository on PYTHONPATH).
set -u
out=${1:?usage: bench/gpu_check.sh OUT_DIR [JSB_FILE]}
jsb=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-gpu}
budget=${BUDGET:-0}
stages=${STAGES:-speed big project study}
for name in $stages; do
  case " speed speed_bf16 big project bf16 precision arms pallas loops order study study_shared " in
    *" $name "*) ;;
    *) echo "unknown stage '$name' in STAGES"; exit 2 ;;
  esac
done
if [ -n "${STUDY_STORE:-}" ] && [ ! -f "$STUDY_STORE" ]; then echo "no STUDY_STORE file at $STUDY_STORE"; exit 2; fi
# a BUDGET test [ -gt ] cannot read (212.4, 3m) would turn the budget off: refused, as LIMIT_*s that are not whole
for setting in BUDGET GRACE ${!LIMIT_*}; do
  value=${!setting:-0}
  [[ $value =~ ^[0-9]+$ ]] || { echo "$setting=$value: give whole seconds"; exit 2; }
done
stage() {  # name limit command...: the limit shrinks to what is left of BUDGET; under 30 s left, skipped (ran=0)
  local name=$1 limit=$2; shift 2
  ran=0
  if [ "$budget" -gt 0 ]; then
    local left=$((budget - SECONDS))
    if [ "$left" -lt 30 ]; then echo "== $name skipped: ${left}s of BUDGET left"; return; fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "== $name (limit ${limit}s) $(date -u +%FT%TZ)"
  ran=1
  timeout -k "${GRACE:-15}" "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   exit $? after $SECONDS s in all"
  if [ -n "${AFTER_STAGE:-}" ]; then eval "$AFTER_STAGE"; fi  # e.g. gpu_session.sh's copy of the results so far
}
{ date -u; timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $py -c "import jax; print('jax', jax.__version__, jax.devices())"; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"
run_speed() {
  stage speed "${LIMIT_SPEED:-300}" $py bench/trainer_speed.py --device=$device --hidden=200 --trials=1,32,200 \
    --lstm_loops=${SPEED_LOOPS:-xla} --repeats=3 --min_time=0.3 --out="$out/speed.json"
}
run_speed_bf16() {
  stage speed_bf16 "${LIMIT_SPEED_BF16:-120}" $py bench/trainer_speed.py --device=$device --hidden=200 --trials=200 \
    --recurrent_dtypes=bfloat16 --lstm_loops=${SPEED_LOOPS:-xla} --notorch --repeats=3 --min_time=0.3 \
    --out="$out/speed_bf16.json"
}
run_big() {
  stage big "${LIMIT_BIG:-200}" $py bench/trainer_speed.py --device=$device --hidden=40,200 --trials=64,512 \
    --variants=mixed --notorch --repeats=2 --min_time=0.2 --out="$out/big.json"
  stage onevmap "${LIMIT_BIG:-200}" $py bench/trainer_speed.py --device=$device --hidden=200 --trials=512 \
    --shapes=jsb --trials_per_chunk=512 --variants=mixed --notorch --repeats=2 --min_time=0.2 --out="$out/onevmap.json"
}
run_project() {
  stage project "${LIMIT_PROJECT:-400}" $py bench/study_time.py --device=$device \
    --tasks=jsb,timit,iam_online --trials=64,512 --variants=mixed --repeats=2 --min_time=0.2 --epochs_estimate=60 \
    --out="$out/project.json" ${PROJECT_ARGS:-}
}
run_bf16() {
  stage bf16 "${LIMIT_BF16:-300}" $py bench/trainer_speed.py --device=$device --hidden=200 --trials=1,32,200 \
    --recurrent_dtypes=float32,bfloat16 --notorch --repeats=3 --min_time=0.3 --out="$out/bf16.json"
  stage project_bf16 "${LIMIT_BF16:-300}" $py bench/study_time.py --device=$device --tasks=jsb,timit \
    --trials=64,512 --variants=mixed --repeats=2 --min_time=0.2 --epochs_estimate=60 --recurrent_dtype=bfloat16 \
    --out="$out/project_bf16.json" ${PROJECT_ARGS:-}
}
run_precision() {
  stage precision "${LIMIT_BF16:-300}" $py bench/trainer_speed.py --device=$device --hidden=200 \
    --trials=1,200 --matmul_precisions=float32,tensorfloat32 --notorch --repeats=3 --min_time=0.3 \
    --out="$out/precision.json"
}
run_arms() {
  stage arms "${LIMIT_BF16:-300}" $py bench/trainer_speed.py --device=$device --hidden=200 --trials=200 \
    --recurrent_dtypes=float32,bfloat16 --matmul_precisions=float32,tensorfloat32 --notorch --repeats=3 \
    --min_time=0.3 --out="$out/arms.json"
}
run_pallas() {
  stage pallas "${LIMIT_PALLAS:-150}" $py bench/pallas_lstm_speed.py --device=$device \
    --recurrent_dtypes=float32,bfloat16 --passes=grad --repeats=3 --out="$out/pallas.json"
}
run_loops() {
  rm -f "$out/loops.json"  # a stage stopped before its one block of rows writes none: no earlier run's rows decide
  stage loops "${LIMIT_LOOPS:-120}" $py bench/trainer_speed.py --device=$device --shapes=jsb --hidden=40 --trials=487 \
    --variants=mixed --lstm_loops=xla,pallas --notorch --repeats=3 --min_time=0.3 --out="$out/loops.json"
  [ "$ran" = 1 ] || return 0  # skipped: an earlier run's choice, if any, stands
  $py - "$out/loops.json" > "$out/study_loops" 2>/dev/null <<'PY' || echo xla > "$out/study_loops"
import json, sys
rows = {r["program"]: r for r in json.load(open(sys.argv[1]))["rows"]}
pallas, xla = rows.get("mixed/pallas"), rows.get("mixed")
good = pallas and xla and pallas.get("max_rel_diff_vs_xla", 1.0) < 1e-4 and pallas["updates_per_s"] > xla["updates_per_s"]
print("pallas" if good else "xla")
PY
  echo "   the study's LSTM loops: $(cat "$out/study_loops")"
}
run_order() {
  stage order "${LIMIT_BF16:-300}" $py bench/data_order_check.py --device=$device ${jsb:+--data="$jsb"} \
    --trials=64,487 --hidden=40 --repeats=3 --out="$out/order.json"
}
run_study() {
  [ -n "$jsb" ] || { echo "== study skipped: no JSB_FILE"; return; }
  rm -rf "$out/jsb_study"
  stage study "${LIMIT_STUDY:-900}" $py -m experiments.study --config=configs/jsb.py --config.data.path="$jsb" \
    --workdir="$out/jsb_study" --progress_seconds=30 --checkpoint_seconds=60
}
run_study_shared() {  # not removed first: a study stopped at its limit resumes from its store when run again
  [ -n "$jsb" ] || { echo "== study_shared skipped: no JSB_FILE"; return; }
  if [ -n "${STUDY_STORE:-}" ] && [ ! -e "$out/jsb_study_shared/trials.sqlite" ]; then
    # An earlier machine's store (what gpu_session.sh copied back): its finished trials stand, the rest train.
    mkdir -p "$out/jsb_study_shared" && cp "$STUDY_STORE" "$out/jsb_study_shared/trials.sqlite"
    echo "   the study goes on from $STUDY_STORE"
  fi
  local loops=${STUDY_LOOPS:-$(cat "$out/study_loops" 2>/dev/null || echo xla)}
  stage study_shared "${LIMIT_STUDY:-900}" $py -m experiments.study --config=configs/jsb.py --config.data.path="$jsb" \
    --config.train.data_order="${STUDY_ORDER:-strata}" --config.train.lstm_loops="$loops" \
    --workdir="$out/jsb_study_shared" --progress_seconds=30 --checkpoint_seconds=60
}
for name in $stages; do "run_$name"; done
summary() {  # a stage log's result rows and errors, each once (a row is printed as measured, then in the table),
  # and a study's last progress line: how far it got, when it was stopped at its limit
  grep -E "^(jsb|timit|iam_online|all) |^N=|^\| (jsb|timit) |Study (finished|stopped)|differ from XLA|rror" "$1" \
    | awk '!seen[$0]++' | tail -25
  grep -E "\] [0-9]+/[0-9]+ finished \(" "$1" | tail -1 | sed -E 's/^[^]]*\] //'
}
for name in speed speed_bf16 big onevmap project bf16 project_bf16 precision arms pallas loops order study \
    study_shared; do
  [ -f "$out/$name.log" ] && { echo "-- $name"; summary "$out/$name.log"; }
done
exit 0  # each stage says how it ended above
