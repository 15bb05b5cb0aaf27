#!/usr/bin/env bash
# The Fashion-MNIST study of "does relational distillation help?" (benchmarks/fmnist/STUDY.md).
# Two lanes, one process and one thread each, so both cores work:
#   nohup bash benchmarks/fmnist/study.sh > runs/study/study.log 2>&1 &
#   bash benchmarks/fmnist/study.sh lane1   # or lane2: one lane only (one core)
# Resumable on any machine: every finished run keeps its result (config, seed, FD per snapshot, wall
# time; no weights) in benchmarks/fmnist/study/<sweep>/, committed to the repository, and a run
# whose result file exists is skipped; an unfinished run resumes from its checkpoint in runs/study.
# Settings were chosen on seeds 0-2 against held-out training images (--reference val); the
# comparisons use fresh seeds 3-5 against the test set. Nothing is chosen on seeds 3-5.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
RDD=${RDD:-.venv/bin/rdd}
OUT=${OUT:-runs/study}
RECORD=${RECORD:-benchmarks/fmnist/study}
TWO_STEP=assets/fmnist/two_step.pt
EIGHT_STEP=assets/fmnist/eight_step.pt
COMMON=(--config configs/fmnist/distill.yaml --set train.batch_size=32 --evalnet assets/fmnist/evalnet.pt)
TEST=(--eval-samples 10000 --reference test)
VAL=(--eval-samples 5000 --reference val)
# The four methods of the comparisons; "noclip" = the PD target without the teacher clip (docs/fidelity.md).
declare -A METHOD=(
  [pd-noclip]="--set distill.method=pd --set distill.teacher_clip=false"
  [rcfd-noclip]="--set distill.method=rcfd --set distill.teacher_clip=false"
  [rdd-official]="--set distill.method=rdd --set distill.fidelity=official"
  [rdd-paper]="--set distill.method=rdd --set distill.fidelity=paper"
)
ORDER=(rcfd-noclip rdd-official rdd-paper pd-noclip)

sweep() {  # sweep NAME ARGS...: one sweep whose per-run results are kept under $RECORD/NAME
  local name=$1; shift
  $RDD sweep "${COMMON[@]}" "$@" --record "$RECORD/$name" --out "$OUT/$name"
}

lane1() {
  # 1. 2 -> 1 at 1,000 iterations, seeds 3-5, test FD (10,000 samples); snapshots at 500.
  for seed in 3 4 5; do
    for m in "${ORDER[@]}"; do
      # shellcheck disable=SC2086
      sweep "stage1000-$m" --teacher $TWO_STEP ${METHOD[$m]} --set distill.tau_cfd=[0.85] \
        --set distill.iterations=[1000] --eval-at 500 "${TEST[@]}" --seeds $seed
    done
  done
  # 3. Seed 5 of the 500-iteration final (seeds 3-4 ran in the first study; their runs were not kept).
  for m in "${ORDER[@]}"; do
    # shellcheck disable=SC2086
    sweep "stage500-$m" --teacher $TWO_STEP ${METHOD[$m]} --set distill.tau_cfd=[0.85] \
      --set distill.iterations=[500] "${TEST[@]}" --seeds 5
  done
  # 4. The paper's sensitivity axes (Fig. 6-9), RDD as the paper describes it, validation FD.
  sweep sens-beta --teacher $TWO_STEP ${METHOD[rdd-paper]} --set distill.tau_cfd=[0.85] --set distill.iterations=[500] \
    --grid distill.beta=0.01,0.03,0.1,0.3 "${VAL[@]}" --seeds 0,1
  sweep sens-tau-alpha --teacher $TWO_STEP ${METHOD[rdd-paper]} --set distill.tau_cfd=[0.85] --set distill.iterations=[500] \
    --grid distill.tau_m=0.1,0.4 --grid distill.alpha=0.3,1,3 "${VAL[@]}" --seeds 0,1
}

lane2() {
  # The chain's 8-step model: base teacher with the benchmark's recipe, then PD 16 -> 8 (assets/fmnist/README.md).
  if [ ! -f $EIGHT_STEP ]; then
    $RDD train --config configs/fmnist/benchmark-teacher.yaml --out $OUT/teacher --resume
    $RDD progressive --config configs/fmnist/benchmark-distill.yaml --teacher $OUT/teacher/model.pt --method pd \
      --set distill.teacher_steps=16 --set distill.iterations=[300] --to 8 --out $OUT/pd-16to8
    cp $OUT/teacher/model.pt assets/fmnist/base.pt
    cp $OUT/pd-16to8/stage-16to8/model.pt $EIGHT_STEP
  fi
  # 2. Chains 8 -> 4 -> 2 -> 1 from the shipped 8-step model, 500 iterations per stage, test FD after every stage.
  for seed in 3 4 5; do
    for m in "${ORDER[@]}"; do
      # shellcheck disable=SC2086
      sweep "chain-$m" --teacher $EIGHT_STEP ${METHOD[$m]} --set distill.iterations=[500] --to 1 \
        "${TEST[@]}" --seeds $seed
    done
  done
}

mkdir -p "$OUT"
case "${1:-both}" in
  lane1) lane1 ;;
  lane2) lane2 ;;
  both) lane1 > "$OUT/lane1.log" 2>&1 & lane2 > "$OUT/lane2.log" 2>&1 & wait ;;
  *) echo "usage: study.sh [lane1|lane2]" >&2; exit 2 ;;
esac
echo "study: done"
