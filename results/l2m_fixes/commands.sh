#!/usr/bin/env bash
# Issue 12's defects before and after their fix, on the numbers each biased (README.md). The measurements
# that need no training (fixes.py, about 15 s), then the base
# checkpoint's CW10 scores under the target it got before the fix from `dtune evaluate` (the registry's 2000,
# no dataset in --data-dir) and the one every path uses now (the data's best return), about 1 min each.
# The EWC row's runs are in results/l2m_cw10 (VARIANTS="ewc ewc:--ewc-lambda=200": 200 is the old code's 400).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-/work/data/datasets}
OUT=results/l2m_fixes
EMPTY=$(mktemp -d)
trap 'rm -rf "$EMPTY"' EXIT
for what in decay routing targets; do
  OMP_NUM_THREADS=1 python "$OUT/fixes.py" "$what" --data-dir "$DATA" > "$OUT/$what.md"
done
OMP_NUM_THREADS=1 dtune evaluate --checkpoint results/mt40_small/checkpoint --tasks cw10 --episodes 10 \
  --data-dir "$EMPTY" --json "$OUT/base_cw10_registry_target.json" --no-progress
OMP_NUM_THREADS=1 dtune evaluate --checkpoint results/mt40_small/checkpoint --tasks cw10 --episodes 10 \
  --data-dir "$DATA" --json "$OUT/base_cw10_data_target.json" --no-progress
