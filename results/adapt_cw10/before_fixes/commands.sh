#!/usr/bin/env bash
# Single-task adaptation study: the small MT40 MDDT (results/mt40_small/checkpoint) adapted to
# three CW10 tasks with every method and variant, 500 steps each, on the 2-core CPU.
# Data: 100 collected episodes per task (same collection settings as MT40):
#   dtune data collect --tasks cw10 --episodes 100 --data-dir $DATA
# Two runs at a time, one thread each.
set -euo pipefail
DATA=${DATA:-/work/runs/data2}
RUNS=${RUNS:-/work/runs/adapt_cw10}
CKPT=results/mt40_small/checkpoint
STEPS=${STEPS:-500}
METHODS="full head last-k l2 ewc lora ia3 adapter prompt prefix ptuning-v2 l2p l2m l2m-ia3 l2m-oracle l2m-pretrain-keys"
TASKS="hammer-v3 push-wall-v3 faucet-close-v3"
run() {  # task method
  [ -f "$RUNS/$1/$2/result.json" ] && return 0
  rm -rf "$RUNS/$1/$2"
  OMP_NUM_THREADS=1 dtune adapt --checkpoint $CKPT --data-dir "$DATA" --task "$1" --method "$2" --steps $STEPS \
    --eval-episodes 20 --pretrain-episodes 2 --no-progress --out "$RUNS/$1/$2" > "$RUNS/$1.$2.log" 2>&1
}
export -f run; export DATA RUNS CKPT STEPS
mkdir -p "$RUNS"
run hammer-v3 full   # alone first: it caches the MT40 score of the unadapted model
for t in $TASKS; do for m in $METHODS; do echo "$t $m"; done; done | xargs -P 2 -n 2 bash -c 'run "$0" "$1"'
dtune report "$RUNS"/*/*/ --out results/adapt_cw10
