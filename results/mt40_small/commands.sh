#!/usr/bin/env bash
# MT40 study on a 2-core CPU, exactly as run for results/mt40_small/ (see README.md there):
# collect, pre-train a small MDDT for 24,000 steps, evaluate; then resume the same run with
# longer schedules, to 40,000 and then 50,000 steps (each a warm restart of the cosine
# schedule), evaluating after each.
# Run from the repository root with .venv/bin on PATH (after `make install`).
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=results/mt40_small
dtune data collect --tasks mt40 --episodes 100 --data-dir $RUNS/data2 --workers 2
dtune pretrain --tasks mt40 --model small --steps 24000 --warmup-steps 1000 --ckpt-every 2000 \
    --data-dir $RUNS/data2 --out $RUNS/mt40_small
dtune evaluate --checkpoint $RUNS/mt40_small --tasks mt40 --episodes 10 --json $OUT/eval_24k.json | tee $OUT/eval_24k.md
cp $RUNS/mt40_small/config.json $OUT/config_24k.json; cp $RUNS/mt40_small/summary.json $OUT/summary_24k.json
cp $RUNS/mt40_small/metrics.csv $OUT/metrics_24k.csv
dtune pretrain --tasks mt40 --model small --steps 40000 --warmup-steps 1000 --ckpt-every 2000 \
    --data-dir $RUNS/data2 --out $RUNS/mt40_small --resume
dtune evaluate --checkpoint $RUNS/mt40_small --tasks mt40 --episodes 10 --json $OUT/eval_40k.json | tee $OUT/eval_40k.md
cp $RUNS/mt40_small/config.json $OUT/config_40k.json; cp $RUNS/mt40_small/summary.json $OUT/summary_40k.json
cp $RUNS/mt40_small/metrics.csv $OUT/metrics_40k.csv
# second extension, to 50,000 steps (the run's own settings come from its config.json)
dtune pretrain --out $RUNS/mt40_small --resume --steps 50000
dtune evaluate --checkpoint $RUNS/mt40_small --tasks mt40 --episodes 10 --json $OUT/eval_50k.json | tee $OUT/eval_50k.md
cp $RUNS/mt40_small/config.json $OUT/config_50k.json; cp $RUNS/mt40_small/summary.json $OUT/summary_50k.json
cp $RUNS/mt40_small/metrics.csv $OUT/metrics_50k.csv
