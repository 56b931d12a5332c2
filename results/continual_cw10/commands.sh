#!/usr/bin/env bash
# Continual World (CW10, paper order) on the 2-core CPU: the small MT40 MDDT
# (results/mt40_small/checkpoint) adapts to the ten tasks one after the other, 300 steps per task,
# 5 evaluation episodes per task after every task, MT40 (3 episodes per task) before and at the end.
# Single-task references for forward transfer: results/adapt_cw10 (1,000 steps, 3 tasks only).
set -euo pipefail
DATA=${DATA:-/work/runs/data2}
RUNS=${RUNS:-/work/runs/continual_cw10}
CKPT=results/mt40_small/checkpoint
STEPS=${STEPS:-300}
METHODS=${METHODS:-"l2m full lora ewc prompt l2p"}
mkdir -p "$RUNS"
for m in $METHODS; do
  [ -f "$RUNS/$m/metrics.json" ] && continue
  resume=""; [ -f "$RUNS/$m/config.json" ] && resume="--resume"
  OMP_NUM_THREADS=1 dtune continual --checkpoint $CKPT --data-dir "$DATA" --sequence cw10 --method "$m" \
    --steps-per-task $STEPS --eval-episodes 5 --eval-pretrain --pretrain-episodes 3 \
    --reference /work/runs/adapt_cw10 --no-progress --out "$RUNS/$m" $resume > "$RUNS/$m.log" 2>&1
done
dtune report "$RUNS"/*/ --out results/continual_cw10
