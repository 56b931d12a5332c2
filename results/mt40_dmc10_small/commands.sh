#!/usr/bin/env bash
# Joint MT40 + DMC10 pre-training of a small MDDT on a 2-core CPU (issue 9), as run for
# results/mt40_dmc10_small/. One data root holds both: MT40 expert-noise data and the DMC10 SAC
# replay buffers (results/dmc_data). Every update draws half its windows from Meta-World and half
# from DMC (the sampler balances the suites), so 100K steps of batch 64 give MT40 as many windows
# as the MT40-only run's 50K steps (results/mt40_small, 64.2%).
# Long: about 2.8 h at ~10 steps/s. Interrupt it any time (Ctrl-C or kill: a checkpoint every
# 2,000 steps) and continue with the same command plus --resume (exact).
# Run from the repository root with .venv/bin on PATH (after `make install`).
set -euo pipefail
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs}
OUT=${OUT:-results/mt40_dmc10_small}
RUN=${RUN:-$RUNS/mt40_dmc10}
ARCH=${ARCH:-}  # extra options (results/mt40_dmc10_dt_small/commands.sh: continuous actions; ..._dt_replay50: + --replay-from 0.5)
[ -d "$DATA/dtune/metaworld" ] || dtune data collect --tasks mt40 --episodes 100 --data-dir "$DATA" --workers 2
[ -d "$DATA/dtune/dmc/walker-run" ] || dtune data sac --tasks dmc10 --data-dir "$DATA" --workers 2
RESUME=""; [ -f "$RUN/train_state.json" ] && RESUME="--resume"
dtune pretrain --tasks mt40,dmc10 --source expert-noise,sac-replay --data-dir "$DATA" --model small $ARCH \
    --steps 100000 --warmup-steps 1000 --ckpt-every 2000 --out "$RUN" $RESUME
dtune evaluate --checkpoint "$RUN" --tasks mt40,dmc10 --episodes 10 --data-dir "$DATA" \
    --json $OUT/eval_100k.json | tee $OUT/eval_100k.md
cp "$RUN/config.json" $OUT/config.json; cp "$RUN/summary.json" $OUT/summary.json
cp "$RUN/metrics.csv" $OUT/metrics.csv
mkdir -p $OUT/checkpoint && cp "$RUN/config.json" "$RUN/model.safetensors" $OUT/checkpoint/
