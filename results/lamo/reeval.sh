#!/usr/bin/env bash
# The study's runs scored again with more evaluation episodes (issue 11, section "Evaluation noise" of the
# README). Reacher2d's reward is a success count (an episode either reaches the goal, about 75, or not, 0), so
# 10 episodes score a policy with a standard error of up to 12 points; `dtune evaluate --checkpoint RUN
# --episodes N` scores a finished run's model (DT, LaMo: at the protocol's targets; d3rlpy baselines: their
# policy) with the same evaluation seeds, plus more. Only runs whose weights are on this machine ($RUNS; the
# copies kept in results/lamo/runs have none) can be scored again. Writes $REEVAL_OUT/<dataset>/<arm>/s<seed>.json,
# skipping those there; then `python results/lamo/reeval_table.py` prints the comparison. A run that cannot be
# scored is named and the script goes on to the next, then exits non-zero.
#   PATH=$PWD/.venv/bin:$PATH bash results/lamo/reeval.sh        # about 15 s a run (100 episodes, one thread)
set -euo pipefail
RUNS=${RUNS:-runs/lamo}
REEVAL_OUT=${REEVAL_OUT:-results/lamo/reeval}
EPISODES=${EPISODES:-100}
DATASETS=${DATASETS:-"reacher2d-medium-*"}  # run folders' dataset names (globs)
read -ra patterns <<< "$DATASETS"  # split, not expanded here
failed=0
for d in "${patterns[@]}"; do
  for run in "$RUNS"/$d/*/s*/; do
    run=${run%/}
    [ -f "$run/result.json" ] || continue  # not finished (or the glob matched nothing)
    dest="$REEVAL_OUT/${run#"$RUNS"/}.json"
    [ -f "$dest" ] && continue
    targets=(--targets data)
    grep -q '"kind": "lamo"' "$run/config.json" && targets=(--targets protocol)  # DT and LaMo runs
    mkdir -p "$(dirname "$dest")"
    OMP_NUM_THREADS=1 dtune evaluate --checkpoint "$run" --episodes "$EPISODES" "${targets[@]}" --no-progress \
      --json "$dest" > /dev/null || { echo "FAILED: dtune evaluate --checkpoint $run" >&2; failed=1; }
  done
done
exit $failed
