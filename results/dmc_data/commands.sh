#!/usr/bin/env bash
# DMC16 SAC replay-buffer datasets (issue 9): one stable-baselines3 SAC agent per task, 100K env steps
# (100 episodes of 1,000 steps; STEPS for more, the paper: 1M), its whole replay buffer as the task's dataset.
# About 64 env steps/s per process with one torch thread: DMC10 took 8,652 s and DMC6 about 5,900 s on the
# 2 cores (2026-11-22). WORKERS=1 leaves the other core to another study.
# Resumable: SAC checkpoints every 10K steps; re-running continues where it stopped. SESSION=N stops each
# task after N steps of this invocation (a clean checkpoint before a session ends). Unfinished checkpoints
# stay in $DATA/.work (not committed: a task's SAC is about 26 min, so a machine that loses them loses little).
# Finished datasets (with their agents) go into the committed store, results/mujoco_data/store (gzipped),
# and are restored into $DATA from there: SAC runs only for what is missing.
# The table and learning curves: `dtune data report` at the end (results/dmc_data).
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
SESSION=${SESSION:-}
STEPS=${STEPS:-100000}
SETS=${SETS:-"dmc10 dmc6"}
restore_mujoco_data "$DATA"
for set in $SETS; do
  dtune data sac --tasks "$set" --steps "$STEPS" --workers "${WORKERS:-2}" --data-dir "$DATA" --no-progress \
    ${SESSION:+--session-steps $SESSION}
  for task in $(python -c "from dtune.tasks import resolve_tasks; print(' '.join(resolve_tasks('$set')))"); do
    if [ -f "$DATA/dtune/dmc/$task/sac-replay-v0/data/metadata.json" ]; then
      store_mujoco_data "$DATA" "dmc/$task/sac-replay"
    fi
  done
done
[ -n "$SESSION" ] && { echo "chunk done; re-run the script to continue"; exit 0; }
dtune data report --tasks dmc16 --source sac-replay --data-dir "$DATA" --out results/dmc_data
