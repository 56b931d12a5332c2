#!/usr/bin/env bash
# Issue 12: CW10 continual learning, 3 seeds, with the fixes of the issue in the code: the small MT40 MDDT
# (results/mt40_small/checkpoint) learns the ten CW10 tasks in the paper's order, STEPS updates per task,
# 10 evaluation episodes per CW10 task after every task, MT40 (3 episodes per task) before and at the end.
# Variants: L2M with the routing of results/l2m_routing (whitened query, 200-step span at evaluation,
# pre-training keys with a margin calibrated at q = 0.95: the preset `l2m-routed`), the paper's plain L2M (`l2m`),
# L2P, prompt tuning, LoRA, EWC and full fine-tuning; and `l2m-routed-locked` (l2m-routed with each task's
# entries locked once it is learnt, `lock_share` 0.1: results/l2m_cw10/README.md) and `l2m-gauss` (each task its
# own entry while training, task inference by per-task Gaussians of the query at evaluation: density_probe.py).
# Cost, estimated from the 300-step study (results/continual_cw10) and this session's step speed: about
# 20-25 min per run at STEPS=1000 on one core, so 24 runs are about 4.5 h of wall time in two lanes
# (measured 2026-12-04, one lane beside another study: 26-29 min a run including the MT40 evaluations).
# Everything is resumable: a run kept in $OUT/runs is skipped, an interrupted one continues with --resume
# (checkpoints every 500 updates within a task). Finished runs are kept without their weights in
# $OUT/runs/<variant>/s<seed> (results/study.sh).
# SEEDS / VARIANTS narrow it; LANES=1 runs one at a time. A variant may carry options after a colon, comma-separated
# (VARIANTS="l2m-gauss:--density-reject=0.001"): its runs go to a folder named after it, and the report gives it its
# own row.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/l2m_cw10}
OUT=${OUT:-results/l2m_cw10}
CKPT=${CKPT:-results/mt40_small/checkpoint}
STEPS=${STEPS:-1000}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"l2m-gauss l2m-routed l2m-routed-locked l2m full ewc lora prompt l2p"}
# The data: CW10 for training, MT40 for L2M's pre-training keys, whitening and EWC's Fisher (about 7 min on
# 2 cores; finished tasks are skipped, so this is free when the data is there).
dtune data collect --tasks cw10 --episodes 100 --workers 2 --data-dir "$DATA" --no-progress
dtune data collect --tasks mt40 --episodes 100 --workers 2 --data-dir "$DATA" --no-progress
run() {  # variant seed; a variant is a method or preset, optionally with options: l2m-gauss:--density-reject=0.001
  local method=${1%%:*} opts="" name=${1//[:=,]/_}; name=${name//--/}
  [[ "$1" == *:* ]] && opts=${1#*:} && opts=${opts//,/ }
  local out="$RUNS/$name/s$2" kept="$OUT/runs/$name/s$2" resume=""
  [ -f "$kept/metrics.json" ] && return 0
  if [ ! -f "$out/metrics.json" ]; then
    [ -f "$out/config.json" ] && resume="--resume"
    mkdir -p "$(dirname "$out")"
    # shellcheck disable=SC2086  # the options split into words
    OMP_NUM_THREADS=1 dtune continual --checkpoint "$CKPT" --data-dir "$DATA" --sequence cw10 --method "$method" $opts \
      --steps-per-task "$STEPS" --eval-episodes 10 --eval-pretrain --pretrain-episodes 3 --ckpt-every 500 \
      --seed "$2" --no-progress --out "$out" $resume >> "$out.log" 2>&1
  fi
  keep "$out" "$kept"
}
export -f run keep; export DATA RUNS OUT CKPT STEPS
mkdir -p "$RUNS"
for s in $SEEDS; do for v in $VARIANTS; do echo "$v $s"; done; done | xargs -P "${LANES:-2}" -n 2 bash -c 'run "$0" "$1"'
dtune report "$OUT"/runs/*/*/ --out "$OUT"
