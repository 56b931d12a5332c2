#!/usr/bin/env bash
# Joint MT40 + DMC10 pre-training of the small continuous-action Decision Transformer on the second
# half of every DMC SAC replay buffer (`--replay-from 0.5`; issue 9). Everything else as
# results/mt40_dmc10_dt_small (same data root, layout, batch of 32 Meta-World + 32 DMC windows, schedule,
# seed, K = 5): that run's probe found the buffers' first half (the SAC agent still learning: noisy,
# mostly unpredictable actions) kept the DT from learning cartpole-balance and point_mass-easy.
# Meta-World's expert-noise data is not a replay buffer and stays whole.
# About 1 h at ~30 steps/s on the 2 cores. Interrupt it any time (a checkpoint every 2,000 steps);
# re-running this script continues it exactly (--resume is added when a checkpoint exists).
# Run from the repository root with .venv/bin on PATH (after `make install` and results/dmc_data/commands.sh).
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=results/mt40_dmc10_dt_replay50 RUN="$RUNS/mt40_dmc10_dt_replay50" ARCH="--kind dt --context-len 5 --replay-from 0.5" \
    exec bash "$(dirname "$0")/../mt40_dmc10_small/commands.sh"
