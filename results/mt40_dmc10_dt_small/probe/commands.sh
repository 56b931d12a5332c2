#!/usr/bin/env bash
# Why the joint continuous-action model misses the DMC10 bar (0.50 on the four learned tasks against 0.94;
# results/mt40_dmc10_dt_small/README.md): the same model, context, schedule and DMC windows per update
# (32 a step, 100K updates), trained on DMC alone. NAME=... picks one probe (default: all, in order):
#   dmc10   DMC10 alone: does Meta-World's half of the batch cost DMC?
#   learned the four DMC10 tasks whose SAC learned, alone: do the six unlearned buffers cost the others?
#   single  cartpole-balance and point_mass-easy each alone (4,000 updates of batch 64, like walker-stand's
#           diagnosis in ../../mt40_dmc10_small/diagnosis), then teacher_forced.py on their episode 95
#   later   the same single-task runs on the second half of each buffer (--replay-from 0.5): is it the
#           buffer's learning phase that the DT cannot learn from? (led to ../../mt40_dmc10_dt_replay50)
# Each run is evaluated on its own tasks (10 episodes per task, seeds 1000+, like the joint run's evaluation).
# Resumable (a checkpoint every 2,000 updates). One core each (OMP_NUM_THREADS=1).
# Run from the repository root with .venv/bin on PATH (after `make install` and results/dmc_data/commands.sh).
set -euo pipefail
DATA=${DATA:-/work/data/datasets}
RUNS=${RUNS:-runs/probe}
OUT=${OUT:-results/mt40_dmc10_dt_small/probe}
STEPS=${STEPS:-100000}
probe() {  # name tasks
  local run="$RUNS/$1" resume=""
  [ -f "$OUT/$1.json" ] && return 0
  [ -f "$run/train_state.json" ] && resume="--resume"
  OMP_NUM_THREADS=1 dtune pretrain --tasks "$2" --source sac-replay --data-dir "$DATA" --model small --kind dt \
      --context-len 5 --batch-size 32 --steps "$STEPS" --warmup-steps 1000 --ckpt-every 2000 --no-progress \
      --out "$run" $resume
  OMP_NUM_THREADS=1 dtune evaluate --checkpoint "$run" --tasks "$2" --episodes 10 --data-dir "$DATA" --no-progress \
      --json "$OUT/$1.json.tmp" > "$OUT/$1.md"
  cp "$run/summary.json" "$OUT/$1.summary.json"
  mv "$OUT/$1.json.tmp" "$OUT/$1.json"
}
single() {  # task [replay-from]
  local run="$RUNS/single-$1${2:+-from$2}"
  [ -f "$run/model.safetensors" ] || OMP_NUM_THREADS=1 dtune pretrain --tasks "$1" --source sac-replay --data-dir "$DATA" \
      --model small --kind dt --context-len 5 --steps 4000 --replay-from "${2:-0}" --no-progress --out "$run"
  OMP_NUM_THREADS=1 dtune evaluate --checkpoint "$run" --tasks "$1" --episodes 10 --data-dir "$DATA" --no-progress
  DATA="$DATA" OMP_NUM_THREADS=1 python "$(dirname "$0")/teacher_forced.py" "$run" "$1" 95
}
mkdir -p "$RUNS" "$OUT"
case "${NAME:-all}" in
  dmc10) probe dmc10 dmc10 ;;
  learned) probe learned cartpole-balance,point_mass-easy,walker-stand,walker-run ;;
  single) single cartpole-balance; single point_mass-easy ;;
  later) single cartpole-balance 0.5; single point_mass-easy 0.5 ;;
  all) probe dmc10 dmc10; probe learned cartpole-balance,point_mass-easy,walker-stand,walker-run ;;
  *) echo "NAME must be dmc10, learned, single, later or all" >&2; exit 2 ;;
esac
