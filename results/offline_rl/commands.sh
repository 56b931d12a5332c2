#!/usr/bin/env bash
# Offline-RL comparison on the D4RL-style data (issue 10): the classic Decision Transformer (`dtune lamo`
# without --lm) and d3rlpy's BC, CQL, IQL, TD3+BC (`dtune baselines`, their D4RL hyperparameters) on
# hopper/halfcheetah/walker2d medium and medium-replay and reacher2d medium (results/mujoco_data).
# CPU budget (the papers: DT 100K updates with 10K warm-up, the others 1M). Measured 2026-11-22 with one torch
# thread per run and 3-4 processes on the 2 cores: DT (batch 64) 17-20 updates/s at K = 5 (reacher2d),
# about 6 at K = 20; CQL (batch 256, 10 action samples) about 2.8; IQL about 34; BC and TD3+BC faster.
# Defaults: DT 10K updates with a 1K warm-up (LaMo's 2.5K warm-up on a 5K budget left reacher2d's DT at
# return 1.3 against the data's 34, still learning), CQL 5K, IQL/TD3+BC/BC 30K (measured 2026-12-04 with 2
# runs on the 2 cores: IQL about 67 updates/s, TD3+BC 85, BC 200-250; at 10K, IQL scored below the data's own
# mean on hopper and walker2d medium-replay, still learning). DT is scored at every
# target of the task's protocol (10 episodes each: score at the standard target and best over targets,
# labelled), the others on 10 episodes; the same evaluation seeds everywhere.
# Resumable: kept runs are skipped, interrupted ones continue with --resume from their last checkpoint (every
# 1K updates); a finished one not yet kept is checked by dtune (--resume) to have these settings first.
# SEEDS="1 2" adds seeds; DATASETS/METHODS narrow it; LANES=1 runs one at a time.
# Each finished run is kept without its weights in $OUT/runs/<dataset>/<method>/s<seed> (results/study.sh) and
# the report reads those copies. The data comes from results/mujoco_data/store (copied into $DATA where missing);
# the `medium` rollouts are made from its agents first (results/mujoco_data/commands.sh).
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/offline_rl}
OUT=${OUT:-results/offline_rl}
SEEDS=${SEEDS:-"0"}
STEPS_DT=${STEPS_DT:-10000}
WARMUP_DT=${WARMUP_DT:-1000}
STEPS_CQL=${STEPS_CQL:-5000}
STEPS=${STEPS:-30000}
DATASETS=${DATASETS:-"hopper:medium halfcheetah:medium walker2d:medium hopper:medium-replay halfcheetah:medium-replay walker2d:medium-replay reacher2d:medium"}
METHODS=${METHODS:-"dt cql iql td3+bc bc"}
run() {  # task:source method seed
  local task=${1%%:*} src=${1#*:} out="$RUNS/${1/:/-}/$2/s$3" kept="$OUT/runs/${1/:/-}/$2/s$3" resume=""
  local n=$STEPS; [ "$2" = cql ] && n=$STEPS_CQL; [ "$2" = dt ] && n=$STEPS_DT
  kept_done "$kept" "$n" && return 0
  # a run begun here resumes; a finished one is checked by dtune to have these settings (it gives its result back)
  { [ -f "$out/result.json" ] || [ -f "$out/train_state.json" ] || [ -d "$out/checkpoint" ]; } && resume="--resume"  # DT's / d3rlpy's checkpoint
  mkdir -p "$(dirname "$out")"
  if [ "$2" = dt ]; then
    local k=20; [ "$task" = reacher2d ] && k=5
    OMP_NUM_THREADS=1 dtune lamo --task "$task" --source "$src" --seed "$3" --steps "$n" --warmup-steps "$WARMUP_DT" --context-len $k \
      --eval-episodes 10 --ckpt-every 1000 --data-dir "$DATA" --no-progress --out "$out" $resume >> "$out.log" 2>&1 || { echo "$out: failed or made with other settings (see $out.log)" >&2; return 1; }
  else
    OMP_NUM_THREADS=1 dtune baselines --algo "$2" --task "$task" --source "$src" --seed "$3" --steps "$n" \
      --steps-per-epoch 1000 --eval-episodes 10 --data-dir "$DATA" --no-progress --out "$out" $resume >> "$out.log" 2>&1 || { echo "$out: failed or made with other settings (see $out.log)" >&2; return 1; }
  fi
  keep "$out" "$kept"
}
export -f run keep kept_done; export DATA RUNS OUT STEPS STEPS_DT WARMUP_DT STEPS_CQL
mkdir -p "$RUNS"
restore_mujoco_data "$DATA"
for s in $SEEDS; do for d in $DATASETS; do for m in $METHODS; do echo "$d $m $s"; done; done; done |
    xargs -P "${LANES:-2}" -n 3 bash -c 'run "$0" "$1" "$2"'
dtune report "$OUT"/runs/*/*/*/ --out "$OUT"
