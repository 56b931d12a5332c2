#!/usr/bin/env bash
# MT40 study on a 2-core CPU: collect, pre-train a small MDDT, evaluate 10 episodes per task.
# Run from the repository root after `make install` (or inside .venv). RUNS defaults to runs/.
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=results/mt40_small
time dtune data collect --suite metaworld --tasks mt40 --episodes 100 --data-dir $RUNS/data2 --workers 2
time dtune pretrain --tasks mt40 --model small --steps 24000 --warmup-steps 1000 --ckpt-every 2000 \
    --data-dir $RUNS/data2 --out $RUNS/mt40_small
time dtune evaluate --checkpoint $RUNS/mt40_small --tasks mt40 --episodes 10 --json $OUT/eval.json | tee $OUT/eval.md
cp $RUNS/mt40_small/config.json $RUNS/mt40_small/summary.json $RUNS/mt40_small/metrics.csv $OUT/
