#!/usr/bin/env bash
# Issue 12: the single-task adaptation study redone with the fixes of the issue in the code, 3 seeds. The small
# MT40 MDDT (results/mt40_small/checkpoint) adapted separately to hammer, push-wall and faucet-close with every
# method and the L2M variants, 500 updates each (the study before the fixes: before_fixes/). New-task success
# over 20 episodes, MT40 after over 2 episodes per task (80 in all; the unadapted model's 80 are cached once).
# Cost: about 2-3 min a run on one core (500 updates about 90 s, evaluation about 40 s), so a seed (20 methods x
# 3 tasks = 60 runs) is about 2.5-3 h of one core.
# Resumable: a run kept in $OUT/runs is skipped; an unfinished one is started again (500 updates: no checkpoint
# is worth it). Finished runs are kept without their weights in $OUT/runs/<task>/<method>/s<seed> (results/study.sh).
# SEEDS / METHODS / TASKS narrow it; LANES=1 runs one at a time. A method may carry options after a colon,
# comma-separated (the continual study's best L2M, `l2m-gauss-pre-io` with rank 32 on every block Linear and a
# 10-entry pool, is one): its runs go to a folder named after it, and the report gives it its own row.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/adapt_cw10}
OUT=${OUT:-results/adapt_cw10}
CKPT=${CKPT:-results/mt40_small/checkpoint}
STEPS=${STEPS:-500}
SEEDS=${SEEDS:-"0 1 2"}
TASKS=${TASKS:-"hammer-v3 push-wall-v3 faucet-close-v3"}
IO="l2m-gauss-pre-io:--r=32,--lora-alpha=64,--pool-size=10,--target-modules,q,k,v,out,fc,proj"
METHODS=${METHODS:-"full head last-k l2 ewc lora ia3 adapter prompt prefix ptuning-v2 l2p l2m l2m-ia3 l2m-oracle l2m-pretrain-keys l2m-routed l2m-gauss l2m-gauss-pre $IO"}
# CW10 to adapt to, MT40 for the pre-training keys, whitening, densities and EWC's Fisher (skipped when present)
dtune data collect --tasks cw10 --episodes 100 --workers 2 --data-dir "$DATA" --no-progress
dtune data collect --tasks mt40 --episodes 100 --workers 2 --data-dir "$DATA" --no-progress
run() {  # task method seed; a method may carry options: l2m-gauss-pre-io:--r=32,--pool-size=10
  local method=${2%%:*} opts="" name=${2//[:=,]/_}; name=${name//--/}
  [[ "$2" == *:* ]] && opts=${2#*:} && opts=${opts//,/ }
  local out="$RUNS/$1/$name/s$3" kept="$OUT/runs/$1/$name/s$3"
  kept_done "$kept" "$STEPS" && return 0
  # shellcheck disable=SC2206  # the options split into words
  local args=(--checkpoint "$CKPT" --data-dir "$DATA" --task "$1" --method "$method" $opts --steps "$STEPS" --seed "$3"
              --eval-episodes 20 --pretrain-episodes 2 --no-progress --out "$out")
  if [ -f "$out/result.json" ]; then  # finished: dtune checks it was made with these settings (another checkpoint: refused)
    OMP_NUM_THREADS=1 dtune adapt "${args[@]}" --resume >> "$out.log" 2>&1 ||
      { echo "$out: failed or made with other settings (see $out.log)" >&2; return 1; }
  else
    rm -rf "$out"; mkdir -p "$(dirname "$out")"
    OMP_NUM_THREADS=1 dtune adapt "${args[@]}" > "$out.log" 2>&1 || { echo "$out: failed (see $out.log)" >&2; return 1; }
  fi
  keep "$out" "$kept"
}
export -f run keep kept_done; export DATA RUNS OUT CKPT STEPS
mkdir -p "$RUNS"
# the unadapted model's MT40 score is cached in the checkpoint by the first run: one run alone first
first=${TASKS%% *}; first_method=${METHODS%% *}; first_seed=${SEEDS%% *}
run "$first" "$first_method" "$first_seed"
for s in $SEEDS; do for t in $TASKS; do for m in $METHODS; do echo "$t $m $s"; done; done; done |
  xargs -P "${LANES:-2}" -n 3 bash -c 'run "$0" "$1" "$2"'
dtune report "$OUT"/runs/*/*/*/ --out "$OUT"
