#!/usr/bin/env bash
# DMC6 continual learning (issue 9): the small MT40 + DMC10 model (continuous actions) adapts to the six DMC6 tasks one
# after the other (SAC replay data), for L2M, full fine-tuning, EWC, LoRA, prompt tuning and L2P,
# 3 seeds; after every task 5 episodes of each DMC6 task; MT40 + DMC10 before and at the end
# (2 episodes per task). Two runs at a time, one thread each; interrupted runs resume.
# The data: the DMC16 SAC replay buffers (results/dmc_data), made first where missing (about 4 h of both cores).
# Finished runs are kept without their weights in $OUT/runs/<method>/s<seed> (results/study.sh) and the report
# reads those copies (the report committed before 2026-12-05 came from runs made before issue 12's fixes).
# The adaptation study's kept runs (results/adapt_dmc6/runs) give the single-task reference scores.
# State normalisation (since 2026-12-06) as in ../adapt_dmc6: --state-clip 10, unseen columns raw. The study
# before the clip: STATE_CLIP=0 OUT=$OUT/unclipped RUNS=$RUNS-unclipped REFERENCE=results/adapt_dmc6/unclipped/runs.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/continual_dmc6}
OUT=${OUT:-results/continual_dmc6}
# the small continuous-action DT pre-trained on MT40 + the second half of each DMC10 buffer (results/mt40_dmc10_dt_replay50);
# the MDDT (results/mt40_dmc10_small) barely controls DMC. The study on whole buffers from results/mt40_dmc10_dt_small:
# CKPT=results/mt40_dmc10_dt_small/checkpoint REPLAY_FROM=0 OUT=$OUT/whole_buffers RUNS=$RUNS-whole (its single-task study: ../adapt_dmc6/whole_buffers)
CKPT=${CKPT:-results/mt40_dmc10_dt_replay50/checkpoint}
REPLAY_FROM=${REPLAY_FROM:-0.5}  # the new task's SAC buffer: its second half, like the checkpoint's DMC data
STEPS=${STEPS:-500}
STATE_CLIP=${STATE_CLIP:-10}
NEW_COLUMNS=${NEW_COLUMNS:-raw}
REFERENCE=${REFERENCE:-results/adapt_dmc6/runs}  # the single-task runs of the same normalisation
SEEDS=${SEEDS:-"0 1 2"}
IO="l2m-gauss-pre-io:--r=32,--lora-alpha=64,--pool-size=10,--target-modules,q,k,v,out,fc,proj"  # CW10's best L2M
METHODS=${METHODS:-"l2m full ewc lora prompt l2p $IO"}
restore_mujoco_data "$DATA"  # the committed SAC datasets (results/dmc_data/commands.sh stores them)
dtune data sac --tasks dmc10 --data-dir "$DATA" --workers 2 --no-progress  # finished tasks are skipped
dtune data sac --tasks dmc6 --data-dir "$DATA" --workers 2 --no-progress
# the checkpoint's MT40 data (EWC's Fisher and L2M's pre-training Gaussians read it; finished tasks are skipped):
# about 3 min on 2 cores, the same expert-noise episodes the checkpoint recorded
dtune data collect --tasks mt40 --episodes 100 --workers 2 --data-dir "$DATA" --no-progress
cl() {  # method seed; a method may carry options: l2m-gauss-pre-io:--r=32,--pool-size=10
  local method=${1%%:*} opts="" name=${1//[:=,]/_}; name=${name//--/}
  [[ "$1" == *:* ]] && opts=${1#*:} && opts=${opts//,/ }
  local out="$RUNS/$name/s$2" kept="$OUT/runs/$name/s$2" resume=""
  [ -f "$kept/metrics.json" ] && return 0
  # a run begun here resumes; a finished one is checked by dtune to have these settings (another checkpoint: refused)
  [ -f "$out/config.json" ] && resume="--resume"
  mkdir -p "$(dirname "$out")"
  # shellcheck disable=SC2086  # the options split into words
  OMP_NUM_THREADS=1 dtune continual --checkpoint "$CKPT" --data-dir "$DATA" --source sac-replay --sequence dmc6 \
    --method "$method" $opts --seed "$2" --steps-per-task "$STEPS" --replay-from "$REPLAY_FROM" --state-clip "$STATE_CLIP" --new-columns "$NEW_COLUMNS" --eval-episodes 5 --eval-pretrain --pretrain-episodes 2 \
    --no-progress --out "$out" $resume >> "$out.log" 2>&1 || { echo "$out: failed or made with other settings (see $out.log)" >&2; return 1; }
  keep "$out" "$kept"
}
export -f cl keep; export DATA RUNS OUT CKPT STEPS REPLAY_FROM STATE_CLIP NEW_COLUMNS
mkdir -p "$RUNS"
for s in $SEEDS; do for m in $METHODS; do echo "$m $s"; done; done | xargs -P "${LANES:-2}" -n 2 bash -c 'cl "$0" "$1"'
dtune report "$OUT"/runs/*/*/ --reference "$REFERENCE" --out "$OUT"
