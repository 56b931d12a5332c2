"""DMC10 scores of a joint run two ways: the dataset's normalised score (whole buffer's mean as the upper
reference, dtune's and the tables' default) and against the mean of the part the run trained on
(`task_info.<task>.train_return_mean`: the second half for --replay-from 0.5), the paper's sense of
"data mean" when a model trains on the whole of its buffer. Usage (repository root, .venv/bin on PATH):
    python results/mt40_dmc10_dt_replay50/scores.py RUN_CONFIG EVAL_JSON [OLD_EVAL_JSON]
"""
import json
import os
import sys
from pathlib import Path

from dtune.data.storage import read_metadata
from dtune.tasks import resolve_tasks

config, ev = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
old = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else None
root = Path(os.environ.get("DATA", "/work/data/datasets"))
info = config["task_info"]


def norm(ret, lo, hi):
    return (ret - lo) / (hi - lo) if hi - lo > 0.01 * abs(lo) + 1e-8 else None  # dtune's "undefined" rule


def fmt(x):
    return "undefined" if x is None else f"{x:.2f}"


print("| task | SAC learned | random | whole-buffer mean | trained-on mean | return | normalised (whole buffer) "
      "| normalised (trained-on part) |" + (" old run, normalised (whole buffer) |" if old else ""))
print("|---|---|---|---|---|---|---|---|" + ("---|" if old else ""))
sums = {"whole": [], "part": [], "old": []}
for t in resolve_tasks("dmc10"):
    meta = read_metadata(root, t, info[t]["source"])["dtune"]
    lo, whole = info[t]["ref_min_score"], info[t]["ref_max_score"]
    part = info[t].get("train_return_mean", info[t]["return_mean"])  # runs before 2026-12-06: the whole dataset
    r = ev["tasks"][t]
    a, b = norm(r["return_mean"], lo, whole), norm(r["return_mean"], lo, part)
    o = old["tasks"][t]["score"] if old else None
    if meta["sac_learned"]:
        sums["whole"].append(a), sums["part"].append(b), sums["old"].append(o)
    print(f"| {t} | {'yes' if meta['sac_learned'] else 'NO'} | {lo:.1f} | {whole:.1f} | {part:.1f} | "
          f"{r['return_mean']:.1f} ± {r['return_std']:.1f} | {fmt(a)} | {fmt(b)} |" + (f" {fmt(o)} |" if old else ""))
mean = {k: sum(v) / len(v) for k, v in sums.items() if v and None not in v}
print(f"| **mean of the {len(sums['whole'])} learned** | | | | | | **{mean['whole']:.2f}** | **{mean['part']:.2f}** |"
      + (f" **{mean['old']:.2f}** |" if old else ""))
print(f"\nMT40 mean success: {ev['mean_score_by_domain']['metaworld']:.3f}"
      + (f" (old run: {old['mean_score_by_domain']['metaworld']:.3f})" if old else ""))
