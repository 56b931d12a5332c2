#!/usr/bin/env bash
# D4RL-style MuJoCo datasets (issue 10), D4RL's recipe at a CPU budget: SAC per task (stable-baselines3,
# one torch thread per process, two tasks at a time) early-stopped once its deterministic evaluation
# reaches D4RL's medium level (Hopper 1,400, HalfCheetah 4,800, Walker2d 3,000); its replay buffer up to
# then is `medium-replay`, and 1M steps of the stopped agent's (stochastic) rollouts are `medium` (D4RL's
# size: rollouts are cheap, about 10 min per task, and LaMo's 0.5% / 1% subsets then hold as many
# trajectories as D4RL's do; MEDIUM_STEPS=200000 for a smaller one).
# Resumable: SAC checkpoints every 10K steps; re-running continues where it stopped. SESSION=N stops each
# task after N steps of this invocation (a clean checkpoint before a session ends).
# The medium-replay datasets (with the stopped agents) are committed in results/mujoco_data/store (about
# 70 MB, against 3.5 CPU-hours of SAC): restored into $DATA first, so SAC runs only for what is missing; the
# `medium` rollouts (1M steps each, too big to commit) are remade from the stored agents, seeded.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
SESSION=${SESSION:-}
MEDIUM_STEPS=${MEDIUM_STEPS:-1000000}
restore_mujoco_data "$DATA"
dtune data sac --tasks mujoco3 --source medium-replay --stop-at medium --steps 1000000 --workers 2 \
    --data-dir "$DATA" --no-progress ${SESSION:+--session-steps $SESSION}
# A chunk (SESSION set) may leave tasks unfinished: re-run the script without SESSION to finish them first.
[ -n "$SESSION" ] && { echo "chunk done; re-run (without SESSION to finish) to continue"; exit 0; }
store_mujoco_data "$DATA" mujoco/hopper/medium-replay mujoco/halfcheetah/medium-replay mujoco/walker2d/medium-replay
dtune data rollouts --tasks mujoco3 --agent medium-replay --source medium --steps $MEDIUM_STEPS --workers 2 --no-progress --data-dir "$DATA"
for src in medium-replay medium; do
  dtune data report --tasks mujoco3 --source $src --data-dir "$DATA" --out results/mujoco_data/$src
done
