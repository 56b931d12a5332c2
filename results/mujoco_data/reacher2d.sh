#!/usr/bin/env bash
# Reacher2d `medium` data (issue 10), LaMo's recipe with SAC in place of its PPO agent: SAC (one process,
# one torch thread) early-stopped once its deterministic evaluation (20 episodes, every 5K steps) reaches
# LaMo's medium level (return 36 = 36 normalised); its buffer up to then is `medium-replay`; `medium` is
# 100K steps (1,000 episodes of 100 steps) of the stopped agent's sampled rollouts with return > 20, the
# filter of LaMo's data. Resumable: re-running continues the SAC run from its last checkpoint.
# Run it after commands.sh (it reports mujoco3 and reacher2d together).
set -euo pipefail
DATA=${DATA:-/work/data/datasets}
dtune data sac --tasks reacher2d --source medium-replay --stop-at medium --steps 300000 --workers 1 \
    --eval-episodes 20 --checkpoint-every 5000 --data-dir "$DATA" --no-progress
dtune data rollouts --tasks reacher2d --agent medium-replay --source medium --steps 100000 --min-return 20 \
    --workers 1 --data-dir "$DATA" --no-progress
for src in medium-replay medium; do
  dtune data report --tasks mujoco3,reacher2d --source $src --data-dir "$DATA" --out results/mujoco_data/$src
done
