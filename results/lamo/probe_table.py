"""The 10K-update probe's table (results/lamo/README.md, "More updates"): per arm and seed the normalised
score x100 at the standard target after 3K updates in bf16 (the headline runs), after 3K in fp32 (the fp32
control run, or the 10K run's learning-curve point at 3,000: the same computation), along the 10K run's
curve, at 10K, and the mean of the curve's last three points (8K, 9K, 10K; one evaluation is noisy);
the action loss logged at 3K and 10K; then mean ± sd over seeds (their number in brackets); then the paired
differences of PAIRS at 10K and over 8K-10K, per seed, with their mean and range. Reads the kept runs:

    .venv/bin/python results/lamo/probe_table.py [--cell halfcheetah-medium-0.01]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ARMS = {"lamo": "LaMo (LoRA)", "lamo-random": "LaMo, random init", "dt": "DT", "lamo-full": "LaMo, full fine-tuning"}
PAIRS = [("lamo", "dt"), ("lamo", "lamo-random"), ("lamo-random", "dt")]  # paired differences by seed


def _result(path: Path) -> dict | None:
    f = path / "result.json"
    return json.loads(f.read_text()) if f.exists() else None


def _loss_at(run: Path, step: int) -> float | None:
    """The action loss of the metrics row at `step` (the mean over the 100 updates before it)."""
    f = run / "metrics.csv"
    if not f.exists():
        return None
    for row in csv.DictReader(open(f)):
        if int(row["step"]) == step:
            return float(row.get("action_loss") or row["loss"])
    return None


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _pm(vals: list) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return ""
    sd = f" ± {100 * np.std(v, ddof=1):.1f}" if len(v) > 1 else ""
    return f"{100 * np.mean(v):.1f}{sd} ({len(v)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", default="halfcheetah-medium-0.01")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = ["| arm | seed | 3K, bf16 | 3K, fp32 | 5K, fp32 | 7K, fp32 | 10K, fp32 | 8K-10K mean, fp32 | "
             "action loss 3K -> 10K (fp32) |", "|---|---|---|---|---|---|---|---|---|"]
    means = []
    kept: dict[str, dict[str, dict[int, float | None]]] = {}  # arm -> column -> seed -> score
    for arm, name in ARMS.items():
        cols = kept[arm] = {k: {} for k in ("bf16", "3k", "5k", "7k", "10k", "late")}
        for s in seeds:
            bf16 = _result(HERE / "runs" / args.cell / arm / f"s{s}")
            ctrl = _result(HERE / "fp32" / "runs" / args.cell / arm / f"s{s}")
            run = HERE / "10k" / "runs" / args.cell / arm / f"s{s}"
            long = _result(run)
            curve = {p["step"]: p["score_standard"] for p in (long or {}).get("curve", [])}
            at3 = ctrl["score_standard"] if ctrl else curve.get(3000)
            if ctrl and 3000 in curve and abs(ctrl["score_standard"] - curve[3000]) > 1e-9:
                raise SystemExit(f"{arm} s{s}: the fp32 control ({ctrl['score_standard']}) and the curve at 3,000 "
                                 f"({curve[3000]}) differ: they should be the same computation")
            late = [curve.get(k) for k in (8000, 9000, 10000)]  # the curve's last three points: less noisy than one
            row = {"bf16": bf16 and bf16["score_standard"], "3k": at3, "5k": curve.get(5000), "7k": curve.get(7000),
                   "10k": long and long["score_standard"],
                   "late": float(np.mean(late)) if all(v is not None for v in late) else None}
            for k, v in row.items():
                cols[k][s] = v
            l3 = _loss_at(run, 3000) if long else None
            if l3 is None and ctrl:
                l3 = _loss_at(HERE / "fp32" / "runs" / args.cell / arm / f"s{s}", 3000)
            l10 = _loss_at(run, 10000) if long else None
            loss = "" if l3 is None or l10 is None else f"{l3:.3f} -> {l10:.3f}"
            src = "" if ctrl or at3 is None else " (curve)"
            lines.append(f"| {name} | {s} | {_fmt(row['bf16'])} | {_fmt(row['3k'])}{src} | {_fmt(row['5k'])} | "
                         f"{_fmt(row['7k'])} | {_fmt(row['10k'])} | {_fmt(row['late'])} | {loss} |")
        pm = {k: _pm(list(v.values())) for k, v in cols.items()}
        means.append(f"| **{name}** | mean ± sd (n) | {pm['bf16']} | {pm['3k']} | {pm['5k']} | {pm['7k']} | {pm['10k']} | "
                     f"{pm['late']} | |")
    diffs = ["", "| difference | at | per seed | mean [min, max] |", "|---|---|---|---|"]
    for a, b in PAIRS:
        for k, at in (("10k", "10K"), ("late", "8K-10K mean")):
            d = {s: 100 * (kept[a][k][s] - kept[b][k][s]) for s in seeds
                 if kept[a][k].get(s) is not None and kept[b][k].get(s) is not None}
            if d:
                per = ", ".join(f"s{s} {v:+.1f}" for s, v in d.items())
                v = list(d.values())
                diffs.append(f"| {ARMS[a]} - {ARMS[b]} | {at} | {per} | {np.mean(v):+.1f} [{min(v):+.1f}, {max(v):+.1f}] |")
    print("\n".join(lines + means + diffs))


if __name__ == "__main__":
    main()
