#!/usr/bin/env bash
# DMC6 continual learning (issue 9): the small MT40 + DMC10 model (continuous actions) adapts to the six DMC6 tasks one
# after the other (SAC replay data), for L2M, full fine-tuning, EWC, LoRA, prompt tuning and L2P,
# 3 seeds; after every task 5 episodes of each DMC6 task; MT40 + DMC10 before and at the end
# (2 episodes per task). Two runs at a time, one thread each; interrupted runs resume.
set -euo pipefail
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/continual_dmc6}
CKPT=${CKPT:-results/mt40_dmc10_dt_small/checkpoint}  # continuous actions: the MDDT (results/mt40_dmc10_small) barely controls DMC
STEPS=${STEPS:-500}
SEEDS=${SEEDS:-"0 1 2"}
cl() {  # method seed
  local out="$RUNS/$1/s$2"
  [ -f "$out/metrics.json" ] && return 0
  resume=""; [ -f "$out/config.json" ] && resume="--resume"
  mkdir -p "$(dirname "$out")"
  OMP_NUM_THREADS=1 dtune continual --checkpoint "$CKPT" --data-dir "$DATA" --source sac-replay --sequence dmc6 \
    --method "$1" --seed "$2" --steps-per-task $STEPS --eval-episodes 5 --eval-pretrain --pretrain-episodes 2 \
    --no-progress --out "$out" $resume > "$out.log" 2>&1
}
export -f cl; export DATA RUNS CKPT STEPS
mkdir -p "$RUNS"
for s in $SEEDS; do for m in l2m full ewc lora prompt l2p; do echo "$m $s"; done; done | xargs -P 2 -n 2 bash -c 'cl "$0" "$1"'
dtune report "$RUNS"/*/*/ --reference runs/adapt_dmc6 --out results/continual_dmc6
