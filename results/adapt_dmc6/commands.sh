#!/usr/bin/env bash
# Single-task adaptation on DMC6 (issue 9): the small MT40 + DMC10 model
# (results/mt40_dmc10_dt_small/checkpoint, continuous actions) adapted to each DMC6 task with every method and variant,
# on its SAC replay buffer (results/dmc_data); retention measured on MT40 + DMC10.
# Budget, measured 2026-11-22 from the continuous-action checkpoint: about 100 s per run per lane
# (500 updates, 10 new-task episodes, 2 episodes per pre-training task), two lanes: the 36
# main-method runs in about 30 min, all 16 methods x 6 tasks = 96 runs in about 80 min. Default
# one seed; SEEDS="1 2" METHODS="full ewc lora prompt l2p l2m" adds seeds for the main methods.
# Finished runs are skipped, so the script can be re-run after an interruption.
set -euo pipefail
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/adapt_dmc6}
CKPT=${CKPT:-results/mt40_dmc10_dt_small/checkpoint}  # continuous actions: the MDDT (results/mt40_dmc10_small) barely controls DMC
STEPS=${STEPS:-500}
SEEDS=${SEEDS:-"0"}
METHODS=${METHODS:-"full head last-k l2 ewc lora ia3 adapter prompt prefix ptuning-v2 l2p l2m l2m-ia3 l2m-oracle l2m-pretrain-keys"}
TASKS=${TASKS:-"ball_in_cup-catch cartpole-swingup cheetah-run finger-spin reacher-easy walker-walk"}
run() {  # task method seed
  local out="$RUNS/$1/$2/s$3"
  [ -f "$out/result.json" ] && return 0
  rm -rf "$out"; mkdir -p "$(dirname "$out")"
  OMP_NUM_THREADS=1 dtune adapt --checkpoint "$CKPT" --data-dir "$DATA" --source sac-replay --task "$1" \
    --method "$2" --seed "$3" --steps $STEPS --eval-episodes 10 --pretrain-episodes 2 --no-progress \
    --out "$out" > "$out.log" 2>&1
}
export -f run; export DATA RUNS CKPT STEPS
mkdir -p "$RUNS"
first=${TASKS%% *}
run "$first" full 0   # alone first: it caches the unadapted model's MT40 + DMC10 score
for s in $SEEDS; do for t in $TASKS; do for m in $METHODS; do echo "$t $m $s"; done; done; done |
    xargs -P 2 -n 3 bash -c 'run "$0" "$1" "$2"'
dtune report "$RUNS"/*/*/*/ --out results/adapt_dmc6
