#!/usr/bin/env bash
# Joint MT40 + DMC10 pre-training of a small Decision Transformer with *continuous* actions
# (`--kind dt`, context K = 5 like the MDDT) on a 2-core CPU (issue 9). Same data, layout, batch
# (32 Meta-World + 32 DMC windows per update), schedule and seed as results/mt40_dmc10_small, whose
# tokenised-action MDDT learned DMC poorly at this budget (see its README, "Diagnosis"); only the
# action interface differs: one continuous action token (tanh head, MSE on the task's real action
# dims) instead of 6 autoregressive 64-bin tokens.
# About 1 h at ~30 steps/s. Interrupt it any time (a checkpoint every 2,000 steps); re-running this
# script continues it exactly (--resume is added when a checkpoint exists).
# Run from the repository root with .venv/bin on PATH (after `make install`).
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=results/mt40_dmc10_dt_small RUN="$RUNS/mt40_dmc10_dt" ARCH="--kind dt --context-len 5" \
    exec bash "$(dirname "$0")/../mt40_dmc10_small/commands.sh"
