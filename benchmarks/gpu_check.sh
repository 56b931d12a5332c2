#!/usr/bin/env bash
# dtune on one CUDA GPU, end to end, with throughput: a check to run on any GPU machine.
# Collects a small Meta-World dataset with the scripted experts, pre-trains the `small` and `paper`
# MDDT and the continuous-action DT (eager, bf16 autocast, then torch.compile), resumes a run,
# runs one process under torchrun (NCCL), evaluates on the GPU, adapts with LoRA and L2M.
# Every step is timed and its exit status printed; a failing step does not stop the others.
#   bash benchmarks/gpu_check.sh [WORKDIR]
# Settings from the environment: DTUNE (default `python3 -m dtune.cli`), WORKERS (CPU cores), STEPS (400),
# TASKS (pre-training tasks, mt40), DEVICE (cuda; `cpu` to dry-run the script), PARTS (which checks:
# `train` (with resume, compile, torchrun), `eval`, `adapt`, `lamo`; all by default).
set -uo pipefail
W=${1:-/tmp/dtune_gpu_check}
DTUNE=${DTUNE:-"python3 -m dtune.cli"}
WORKERS=${WORKERS:-$(nproc)}
STEPS=${STEPS:-400}
TASKS=${TASKS:-mt40}
DEVICE=${DEVICE:-cuda}
PARTS=${PARTS:-"train eval adapt lamo"}
want() { [[ " $PARTS " == *" $1 "* ]]; }
D=$W/data
mkdir -p "$W"
step() {  # name, command...: run, time, report
  local name=$1; shift
  local t0=$(date +%s%N)
  "$@" > "$W/$name.log" 2>&1
  local rc=$?
  printf '%-28s rc=%-3s %6d ms\n' "$name" "$rc" $(( ($(date +%s%N) - t0) / 1000000 ))
  [ $rc -eq 0 ] || tail -n 25 "$W/$name.log"
}
rate() {  # run dir: steps/s from metrics.csv (the last logged rows)
  python3 - "$1" <<'EOF'
import csv, sys, pathlib
rows = list(csv.DictReader(open(pathlib.Path(sys.argv[1]) / "metrics.csv")))
for r in rows[-2:]:
    print(f"    step {r['step']}: loss {float(r['loss']):.3f}, {float(r['steps_per_s']):.1f} steps/s, "
          f"{float(r['tokens_per_s']):,.0f} tokens/s")
EOF
}
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ "$DEVICE" = cpu ] || python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

if want train || want eval || want adapt; then
  step collect_mt40 $DTUNE data collect --tasks "$TASKS" --episodes 20 --workers "$WORKERS" --data-dir "$D" --no-progress
  step pretrain_small $DTUNE pretrain --tasks "$TASKS" --model small --steps $STEPS --batch-size 256 --device "$DEVICE" \
      --data-dir "$D" --log-every 50 --ckpt-every 200 --no-progress --out "$W/pre_small"
  rate "$W/pre_small"
fi
if want train; then
  step pretrain_paper $DTUNE pretrain --tasks "$TASKS" --model paper --steps $STEPS --batch-size 256 --device "$DEVICE" \
      --data-dir "$D" --log-every 50 --ckpt-every 200 --no-progress --out "$W/pre_paper"
  rate "$W/pre_paper"
  step pretrain_small_resume $DTUNE pretrain --tasks "$TASKS" --model small --steps $((STEPS + 200)) --batch-size 256 \
      --device "$DEVICE" --data-dir "$D" --log-every 50 --ckpt-every 200 --no-progress --out "$W/pre_small" --resume
  rate "$W/pre_small"
  step pretrain_paper_compile $DTUNE pretrain --tasks "$TASKS" --model paper --steps $STEPS --batch-size 256 \
      --device "$DEVICE" --compile --data-dir "$D" --log-every 50 --ckpt-every 1000 --no-progress --out "$W/pre_paper_compile"
  rate "$W/pre_paper_compile"
  step pretrain_dt_paper $DTUNE pretrain --tasks "$TASKS" --model paper --kind dt --steps $STEPS --batch-size 256 \
      --device "$DEVICE" --data-dir "$D" --log-every 50 --ckpt-every 1000 --no-progress --out "$W/pre_dt_paper"
  rate "$W/pre_dt_paper"
  step torchrun_nccl_1proc torchrun --standalone --nproc_per_node 1 -m dtune.cli pretrain --tasks "$TASKS" --model small \
      --steps 100 --batch-size 256 --device "$DEVICE" --data-dir "$D" --log-every 50 --no-progress --out "$W/pre_ddp"
fi
if want eval; then
  step evaluate_mt40 $DTUNE evaluate --checkpoint "$W/pre_small" --tasks "$TASKS" --episodes 2 --device "$DEVICE" \
      --env-workers "$WORKERS" --data-dir "$D" --no-progress --json "$W/eval.json"
fi
if want adapt; then
  step collect_cw1 $DTUNE data collect --tasks push-wall-v3 --episodes 20 --workers 1 --data-dir "$D" --no-progress
  for method in lora l2m; do
    step "adapt_$method" $DTUNE adapt --checkpoint "$W/pre_small" --task push-wall-v3 --method $method --steps 100 \
        --eval-episodes 2 --pretrain-episodes 1 --device "$DEVICE" --data-dir "$D" --no-progress --out "$W/adapt_$method"
  done
fi
if want lamo; then  # a tiny LM pre-trained on dtune's own READMEs, then LaMo (LoRA + language loss) on reacher2d
  cat README.md benchmarks/README.md results/*/README.md > "$W/text.txt"
  step collect_reacher2d $DTUNE data collect --tasks reacher2d --source random --episodes 30 --workers 1 --data-dir "$D" \
      --no-progress
  step lm_pretrain $DTUNE lm pretrain --out "$W/lm" --text-file "$W/text.txt" --tokenizer bpe --vocab-size 1000 \
      --n-layer 2 --n-head 2 --n-embd 64 --block 64 --batch-size 8 --steps 60 --heldout-blocks 4 --device "$DEVICE" --no-progress
  step lamo $DTUNE lamo --task reacher2d --source random --lm "$W/lm/model" --text-file "$W/text.txt" --text-block 64 \
      --heldout-blocks 4 --context-len 5 --steps 60 --batch-size 16 --eval-episodes 4 --ckpt-every 30 --log-every 20 \
      --out "$W/lamo" --data-dir "$D" --device "$DEVICE" --no-progress
  grep -h "perplexity" "$W/lm_pretrain.log" "$W/lamo.log" || true
fi
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=memory.used --format=csv,noheader
