#!/usr/bin/env bash
# Continual World (CW10, paper order) on the 2-core CPU: the small MT40 MDDT
# (results/mt40_small/checkpoint) adapts to the ten tasks one after the other, 300 steps per task,
# 5 evaluation episodes per task after every task, MT40 (3 episodes per task) before and at the end.
# Single-task references for forward transfer: results/adapt_cw10/before_fixes (500 steps; hammer, push-wall
# and faucet-close only). Methods run in two lanes, one thread each.
set -euo pipefail
DATA=${DATA:-/work/runs/data2}
RUNS=${RUNS:-/work/runs/continual_cw10}
CKPT=results/mt40_small/checkpoint
STEPS=${STEPS:-300}
cl() {  # method
  [ -f "$RUNS/$1/metrics.json" ] && return 0
  resume=""; [ -f "$RUNS/$1/config.json" ] && resume="--resume"
  OMP_NUM_THREADS=1 dtune continual --checkpoint $CKPT --data-dir "$DATA" --sequence cw10 --method "$1" \
    --steps-per-task $STEPS --eval-episodes 5 --eval-pretrain --pretrain-episodes 3 \
    --no-progress --out "$RUNS/$1" $resume > "$RUNS/$1.log" 2>&1
}
export -f cl; export DATA RUNS CKPT STEPS
mkdir -p "$RUNS"
printf "%s\n" l2m full l2m-pretrain-keys lora ewc prompt l2p | xargs -P 2 -n 1 bash -c 'cl "$0"'
dtune report results/continual_cw10/runs/*/ --reference results/adapt_cw10/before_fixes/runs --out results/continual_cw10
