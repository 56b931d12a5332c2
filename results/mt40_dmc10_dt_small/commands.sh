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
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs}
OUT=results/mt40_dmc10_dt_small
RUN="$RUNS/mt40_dmc10_dt"
[ -d "$DATA/dtune/metaworld" ] || dtune data collect --tasks mt40 --episodes 100 --data-dir "$DATA" --workers 2
[ -d "$DATA/dtune/dmc/walker-run" ] || dtune data sac --tasks dmc10 --data-dir "$DATA" --workers 2
RESUME=""; [ -f "$RUN/train_state.json" ] && RESUME="--resume"
dtune pretrain --tasks mt40,dmc10 --source expert-noise,sac-replay --data-dir "$DATA" --model small \
    --kind dt --context-len 5 --steps 100000 --warmup-steps 1000 --ckpt-every 2000 --out "$RUN" $RESUME
dtune evaluate --checkpoint "$RUN" --tasks mt40,dmc10 --episodes 10 --data-dir "$DATA" \
    --json $OUT/eval_100k.json | tee $OUT/eval_100k.md
cp "$RUN/config.json" $OUT/config.json; cp "$RUN/summary.json" $OUT/summary.json
cp "$RUN/metrics.csv" $OUT/metrics.csv
mkdir -p $OUT/checkpoint && cp "$RUN/config.json" "$RUN/model.safetensors" $OUT/checkpoint/
