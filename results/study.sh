# Shell helpers shared by the study scripts (sourced, not run).
#
# A study's runs live in $RUNS, on the session's machine, which does not outlive the session; what is
# committed is $OUT. So each finished run is kept, without its weights and checkpoints, in $OUT/runs/...,
# a run found there is skipped, and the report reads those copies.

# keep RUN KEPT: copy a finished run to KEPT without checkpoint/, *.safetensors and *.pt (written to
# KEPT.tmp, then renamed: never half-written). A run without its result (result.json, or a continual run's
# metrics.json: it failed or was cut) is not kept: the call fails and names its log, so the study's xargs
# exits non-zero and the report is not made from partial results.
keep() {
  if [ ! -f "$1/result.json" ] && [ ! -f "$1/metrics.json" ]; then
    echo "FAILED: $1 has no result; see $1.log" >&2
    return 1
  fi
  rm -rf "$2.tmp"; mkdir -p "$2.tmp"
  # d3rlpy's per-layer gradient statistics (*_grad.csv, about 100 KB a run) stay in the run directory only
  (cd "$1" && tar cf - --exclude=checkpoint --exclude='*.safetensors' --exclude='*.pt' --exclude='*_grad.csv' .) |
    tar xf - -C "$2.tmp"
  rm -rf "$2"; mv "$2.tmp" "$2"
}

# kept_done KEPT STEPS: true when KEPT holds a finished run (its result.json). A kept run trained for another
# number of updates than STEPS is still reported as it is, never mixed in silently: a warning says so.
kept_done() {
  [ -f "$1/result.json" ] || return 1
  python -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["steps"] != int(sys.argv[2]))' "$1/result.json" "$2" ||
    echo "WARNING: $1 was trained for another number of updates than $2; delete it to redo it at this budget" >&2
  return 0
}

# restore_mujoco_data DATA: the committed D4RL-style MuJoCo and Reacher2d datasets (with their SAC
# agents; results/mujoco_data/store, or $DTUNE_STORE) copied into the data root DATA, where missing. The
# store holds any suite's datasets (the DMC SAC buffers too: results/dmc_data/commands.sh).
restore_mujoco_data() {
  local store
  store="${DTUNE_STORE:-$(dirname "${BASH_SOURCE[0]}")/mujoco_data/store}"
  mkdir -p "$1"
  (  # one restore at a time: two study scripts started together copied into each other's files
    flock 9
    local gz
    [ -d "$store/.work" ] && cp -rn "$store/.work" "$1/"  # SAC runs a session left unfinished
    [ -d "$store/dtune" ] || exit 0
    cp -rn "$store/dtune" "$1/"
    find "$1/dtune" -name '*.hdf5.gz' | while read -r gz; do  # stored gzipped (git's 50 MB warning)
      [ -f "${gz%.gz}" ] || { gunzip -c "$gz" > "${gz%.gz}.tmp" && mv "${gz%.gz}.tmp" "${gz%.gz}"; }
      rm -f "$gz"
    done
  ) 9> "$1/.restore.lock"
}

# store_sac_checkpoint DATA SOURCE TASK: an unfinished SAC run's last checkpoint (`.work/SOURCE/TASK`,
# about 40 MB) into the store, so that the next session's `dtune data sac` continues it exactly;
# replaced by the dataset once the run finishes (store_mujoco_data drops it).
store_sac_checkpoint() {
  local store
  store="${DTUNE_STORE:-$(dirname "${BASH_SOURCE[0]}")/mujoco_data/store}"
  [ -f "$1/.work/$2/$3/state.json" ] || { echo "no SAC checkpoint $2/$3 in $1" >&2; return 1; }
  mkdir -p "$store/.work/$2"
  rm -rf "$store/.work/$2/$3.tmp"; cp -r "$1/.work/$2/$3" "$store/.work/$2/$3.tmp"
  rm -rf "$store/.work/$2/$3"; mv "$store/.work/$2/$3.tmp" "$store/.work/$2/$3"
}

# store_mujoco_data DATA SUITE/TASK/SOURCE...: put finished datasets of the data root DATA into the
# committed store (where missing), so that later sessions restore them instead of re-running SAC.
store_mujoco_data() {
  local root=$1 store d
  store="${DTUNE_STORE:-$(dirname "${BASH_SOURCE[0]}")/mujoco_data/store}"
  shift
  for d in "$@"; do
    [ -d "$store/dtune/$d-v0" ] && continue
    [ -f "$root/dtune/$d-v0/data/metadata.json" ] || { echo "no finished dataset $d in $root" >&2; return 1; }
    mkdir -p "$(dirname "$store/dtune/$d-v0")"
    rm -rf "$store/dtune/$d-v0.tmp"; cp -r "$root/dtune/$d-v0" "$store/dtune/$d-v0.tmp"
    gzip -n "$store/dtune/$d-v0.tmp/data/main_data.hdf5"
    mv "$store/dtune/$d-v0.tmp" "$store/dtune/$d-v0"
    rm -rf "$store/.work/${d##*/}/$(basename "$(dirname "$d")")"  # its unfinished run's checkpoint, if stored
  done
}
