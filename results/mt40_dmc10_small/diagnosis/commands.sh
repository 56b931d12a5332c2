#!/usr/bin/env bash
# Why the joint model is weak on DMC (results/mt40_dmc10_small/README.md, "Diagnosis"): single-task
# runs on walker-stand's SAC replay data, each evaluated on 10 episodes (seeds 1000+).
# Run from the repository root with .venv/bin on PATH. About 20 minutes on 2 cores in all.
set -euo pipefail
DATA=${DATA:-/work/data/datasets}
OUT=${OUT:-/tmp/diag}
D=results/mt40_dmc10_small/diagnosis
one() {  # out steps extra-args... (warm-up: the default, capped at a tenth of the steps)
  local out=$1 steps=$2; shift 2
  dtune pretrain --tasks walker-stand --source sac-replay --data-dir "$DATA" --model small --steps "$steps" \
      --out "$OUT/$out" --no-progress "$@"
  dtune evaluate --checkpoint "$OUT/$out" --tasks walker-stand --episodes 10 --data-dir "$DATA" --no-progress
}
one ws_scratch 4000                                 # MDDT (the paper's model), K = 5
one ws_dt5 4000 --kind dt --context-len 5           # classic DT, continuous actions, K = 5
one ws_dt 4000 --kind dt                            # classic DT, K = 20
python $D/mean_decoding_eval.py 1.0 evaluate --checkpoint "$OUT/ws_scratch" --tasks walker-stand --episodes 10 \
    --data-dir "$DATA" --no-progress              # MDDT decoded by expected value instead of argmax
python $D/action_accuracy.py runs/mt40_dmc10 cartpole-balance,walker-stand,walker-run,point_mass-easy,reach-v3,door-open-v3,pick-place-v3
