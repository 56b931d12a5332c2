"""Reporting: Markdown tables of evaluation results."""

from __future__ import annotations


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def eval_table(result: dict) -> str:
    """Per-task score and return, then the mean over tasks (and per domain when mixed)."""
    rows = [[task, r["domain"], r["score"], r["return_mean"], r["return_std"], r["episodes"]]
            for task, r in result["tasks"].items()]
    by_dom = result.get("mean_score_by_domain", {})
    if len(by_dom) > 1:
        rows += [[f"**mean {d}**", d, v, None, None, None] for d, v in by_dom.items()]
    rows.append(["**mean**", "", result["mean_score"], None, None, None])
    return markdown_table(["task", "domain", "score", "return", "return std", "episodes"], rows)
