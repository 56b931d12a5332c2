#!/usr/bin/env bash
# Raw or z-scored unseen columns (`dtune adapt --new-columns raw|task`) on cheetah-run, whose state slots the
# checkpoint never saw: LoRA and L2M, seeds 0 and 1, otherwise the settings of commands.sh (--state-clip 10).
# 8 runs, about 6 min on the 2 cores (2026-12-06). Kept in new_columns/runs/<method>-<columns>/s<seed>.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/adapt_dmc6-new_columns}
OUT=${OUT:-results/adapt_dmc6/new_columns}
CKPT=${CKPT:-results/mt40_dmc10_dt_replay50/checkpoint}
one() {  # method columns seed
  local out="$RUNS/$1-$2/s$3" kept="$OUT/runs/$1-$2/s$3"
  kept_done "$kept" 500 && return 0
  local args=(--checkpoint "$CKPT" --data-dir "$DATA" --source sac-replay --task cheetah-run --method "$1" --seed "$3"
              --steps 500 --replay-from 0.5 --state-clip 10 --new-columns "$2" --eval-episodes 10 --pretrain-episodes 2
              --no-progress --out "$out")
  if [ -f "$out/result.json" ]; then  # finished: dtune checks it was made with these settings
    OMP_NUM_THREADS=1 dtune adapt "${args[@]}" --resume >> "$out.log" 2>&1 || { echo "$out: made with other settings" >&2; return 1; }
  else
    rm -rf "$out"; mkdir -p "$(dirname "$out")"
    OMP_NUM_THREADS=1 dtune adapt "${args[@]}" > "$out.log" 2>&1 || { echo "$out: failed (see $out.log)" >&2; return 1; }
  fi
  keep "$out" "$kept"
}
export -f one keep kept_done; export DATA RUNS OUT CKPT
for s in 0 1; do for m in lora l2m; do for c in raw task; do echo "$m $c $s"; done; done; done |
    xargs -P "${LANES:-2}" -n 3 bash -c 'one "$0" "$1" "$2"'
for d in "$OUT"/runs/*/s*/; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1] + 'result.json')); print(sys.argv[1], round(100 * r['new_task_score'], 1))" "$d"
done
