"""The README's table of the other data ratios (section "Other data ratios"): per dataset, every arm's score x100
at the standard target (mean ± sd over the seeds kept, the seeds in brackets where fewer than 3), from
`report.json` (`dtune report ... --out results/lamo`), beside the LaMo paper's LaMo / DT.

    .venv/bin/python results/lamo/ratio_table.py [results/lamo/report.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dtune.report.published import published_scores

HEADLINE = {("hopper", 0.005), ("halfcheetah", 0.005), ("walker2d", 0.005), ("hopper", 0.01), ("halfcheetah", 0.01),
            ("walker2d", 0.01), ("reacher2d", 0.1)}  # the headline table's cells
ARMS = [("lamo [lm-brown]", "LaMo"), ("lamo, random init [lm-brown]", "LaMo, random init"), ("dt", "DT"),
        ("bc", "BC"), ("iql", "IQL"), ("cql", "CQL")]


def cell(row: dict | None) -> str:
    if row is None:
        return ""
    seeds = sorted(row["per_seed"], key=int)
    mean, sd = row["standard"]
    text = f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None and len(seeds) > 1 else "")
    return text if len(seeds) >= 3 else f"{text} (seed{'s' * (len(seeds) > 1)} {', '.join(seeds)})"


def main(path: str = "results/lamo/report.json") -> str:
    rows = [r for r in json.loads(Path(path).read_text())["offline"] if not r.get("aggregate")]
    by = {(r["task"], r["data_ratio"], r["method"]): r for r in rows if r["source"] == "medium"}
    cells = sorted({(t, x) for t, x, _ in by} - HEADLINE, key=lambda c: (c[1], c[0]))
    lines = ["| task, data | " + " | ".join(name for _, name in ARMS) + " | paper: LaMo / DT |",
             "|---" * (len(ARMS) + 2) + "|"]
    for t, x in cells:
        paper = tuple(published_scores(t, "medium", x, m).get("lamo") for m in ("lamo", "dt"))
        paper_md = " / ".join("-" if v is None else f"{v:.1f}" for v in paper) if any(v is not None for v in paper) else "-"
        lines.append(f"| {t} medium, {100 * x:g}% | " + " | ".join(cell(by.get((t, x, m))) for m, _ in ARMS)
                     + f" | {paper_md} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
