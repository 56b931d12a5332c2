#!/usr/bin/env bash
# Single-task adaptation on DMC6 (issue 9): the small MT40 + DMC10 model
# (results/mt40_dmc10_dt_small/checkpoint, continuous actions) adapted to each DMC6 task with every method and variant,
# on its SAC replay buffer (results/dmc_data); retention measured on MT40 + DMC10.
# Budget, measured 2026-11-22 from the continuous-action checkpoint: about 100 s per run per lane
# (500 updates, 10 new-task episodes, 2 episodes per pre-training task), two lanes: the 36
# main-method runs in about 30 min, all 16 methods x 6 tasks = 96 runs in about 80 min. Default
# one seed; SEEDS="1 2" METHODS="full ewc lora prompt l2p l2m" adds seeds for the main methods.
# The data: the DMC16 SAC replay buffers (results/dmc_data; DMC10 is the checkpoint's pre-training data, which
# EWC's Fisher reads), made first where missing: about 4 h of both cores when none is there (resumable).
# Resumable: a run kept in $OUT/runs is skipped; an unfinished one is started again. Finished runs are kept without
# their weights in $OUT/runs/<task>/<method>/s<seed> (results/study.sh), and the report reads those copies.
# The report committed before 2026-12-05 came from runs made before the fixes of issue 12 and not kept.
# State normalisation (since 2026-12-06): --state-clip 10 (z-scored states clipped at 10 sd; the checkpoint
# predates the clip); the columns the checkpoint never saw stay raw (NEW_COLUMNS=task z-scores them with the
# new task's statistics). The study before the clip: STATE_CLIP=0 OUT=$OUT/unclipped RUNS=$RUNS-unclipped.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/adapt_dmc6}
OUT=${OUT:-results/adapt_dmc6}
# the small continuous-action DT pre-trained on MT40 + the second half of each DMC10 buffer (results/mt40_dmc10_dt_replay50);
# the MDDT (results/mt40_dmc10_small) barely controls DMC. The study on whole buffers from results/mt40_dmc10_dt_small:
# CKPT=results/mt40_dmc10_dt_small/checkpoint REPLAY_FROM=0 OUT=$OUT/whole_buffers RUNS=$RUNS-whole
CKPT=${CKPT:-results/mt40_dmc10_dt_replay50/checkpoint}
REPLAY_FROM=${REPLAY_FROM:-0.5}  # the new task's SAC buffer: its second half, like the checkpoint's DMC data
STEPS=${STEPS:-500}
STATE_CLIP=${STATE_CLIP:-10}
NEW_COLUMNS=${NEW_COLUMNS:-raw}
SEEDS=${SEEDS:-"0"}
IO="l2m-gauss-pre-io:--r=32,--lora-alpha=64,--pool-size=10,--target-modules,q,k,v,out,fc,proj"  # CW10's best L2M
METHODS=${METHODS:-"full head last-k l2 ewc lora ia3 adapter prompt prefix ptuning-v2 l2p l2m l2m-ia3 l2m-oracle l2m-pretrain-keys l2m-gauss-pre $IO"}
TASKS=${TASKS:-"ball_in_cup-catch cartpole-swingup cheetah-run finger-spin reacher-easy walker-walk"}
restore_mujoco_data "$DATA"  # the committed SAC datasets (results/dmc_data/commands.sh stores them)
dtune data sac --tasks dmc10 --data-dir "$DATA" --workers 2 --no-progress  # finished tasks are skipped
dtune data sac --tasks dmc6 --data-dir "$DATA" --workers 2 --no-progress
# the checkpoint's MT40 data (EWC's Fisher and L2M's pre-training Gaussians read it; finished tasks are skipped):
# about 3 min on 2 cores, the same expert-noise episodes the checkpoint recorded
dtune data collect --tasks mt40 --episodes 100 --workers 2 --data-dir "$DATA" --no-progress
run() {  # task method seed; a method may carry options: l2m-gauss-pre-io:--r=32,--pool-size=10
  local method=${2%%:*} opts="" name=${2//[:=,]/_}; name=${name//--/}
  [[ "$2" == *:* ]] && opts=${2#*:} && opts=${opts//,/ }
  local out="$RUNS/$1/$name/s$3" kept="$OUT/runs/$1/$name/s$3"
  kept_done "$kept" "$STEPS" && return 0
  # shellcheck disable=SC2206  # the options split into words
  local args=(--checkpoint "$CKPT" --data-dir "$DATA" --source sac-replay --task "$1" --method "$method" $opts --seed "$3"
              --steps "$STEPS" --replay-from "$REPLAY_FROM" --state-clip "$STATE_CLIP" --new-columns "$NEW_COLUMNS" --eval-episodes 10 --pretrain-episodes 2 --no-progress --out "$out")
  if [ -f "$out/result.json" ]; then  # finished: dtune checks it was made with these settings (another checkpoint: refused)
    OMP_NUM_THREADS=1 dtune adapt "${args[@]}" --resume >> "$out.log" 2>&1 ||
      { echo "$out: failed or made with other settings (see $out.log)" >&2; return 1; }
  else
    rm -rf "$out"; mkdir -p "$(dirname "$out")"
    OMP_NUM_THREADS=1 dtune adapt "${args[@]}" > "$out.log" 2>&1 || { echo "$out: failed (see $out.log)" >&2; return 1; }
  fi
  keep "$out" "$kept"
}
export -f run keep kept_done; export DATA RUNS OUT CKPT STEPS REPLAY_FROM STATE_CLIP NEW_COLUMNS
mkdir -p "$RUNS"
# the unadapted model's MT40 + DMC10 score is cached in the checkpoint by the first run: one run alone first
first=${TASKS%% *}; first_method=${METHODS%% *}; first_seed=${SEEDS%% *}
run "$first" "$first_method" "$first_seed"
for s in $SEEDS; do for t in $TASKS; do for m in $METHODS; do echo "$t $m $s"; done; done; done |
    xargs -P "${LANES:-2}" -n 3 bash -c 'run "$0" "$1" "$2"'
dtune report "$OUT"/runs/*/*/*/ --out "$OUT"
