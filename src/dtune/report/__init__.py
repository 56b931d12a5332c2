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
    """Per-task score and return, then the mean over tasks (and per domain when mixed). Where a
    score is undefined the table says why below it (the returns are still in the table); a score
    on data of an agent that did not learn (†) or over another horizon than its data's (‡) is marked."""
    tasks = result["tasks"]
    notes = sorted({r["score_note"] for r in tasks.values() if r.get("score") is None and r.get("score_note")})
    caveats = sorted({r["score_caveat"] for r in tasks.values() if r.get("score_caveat")})
    horizons = [f"{t}: {r['horizon_note']}" for t, r in tasks.items() if r.get("horizon_note")]

    def mark(r):
        if r.get("score") is None and r.get("score_note"):
            return "n/a*"
        if not (r.get("score_caveat") or r.get("horizon_note")):
            return r["score"]
        return f"{r['score']:.2f}" + ("†" if r.get("score_caveat") else "") + ("‡" if r.get("horizon_note") else "")

    rows = [[task, r["domain"], mark(r), r["return_mean"], r["return_std"], r["episodes"]] for task, r in tasks.items()]
    by_dom = result.get("mean_score_by_domain", {})
    if len(by_dom) > 1:
        rows += [[f"**mean {d}**", d, "n/a*" if v is None and notes else v, None, None, None] for d, v in by_dom.items()]
    scored = sum(r.get("score") is not None for r in tasks.values())
    label = "**mean**" if scored == len(tasks) else f"**mean** ({scored} of {len(tasks)} tasks)"
    rows.append([label, "", result["mean_score"], None, None, None])
    if "mean_score_learned" in result:
        rows.append([f"**mean, tasks whose data learned** ({result['learned_tasks']} of {len(tasks)})", "",
                     result["mean_score_learned"], None, None, None])
    table = markdown_table(["task", "domain", "score", "return", "return std", "episodes"], rows)
    if notes:
        table += "\n\n* score undefined, compare returns instead: " + "; ".join(notes)
    if caveats:
        table += "\n\n† " + "; ".join(caveats) + ": the score is unreliable (large for small return gains)."
    if horizons:
        table += "\n\n‡ biased score, " + "; ".join(horizons) + " (drop --horizon to use each task's own)."
    return table


def protocol_table(result: dict) -> str:
    """The table of :func:`dtune.eval.rollout.evaluate_protocol`: per task the score at the
    standard target and the best over targets (with the target it was reached at), labelled."""
    rows = []
    for task, r in result["tasks"].items():
        s, b = r["standard"], r["best"]
        rows.append([task, f"{s['target']:g}", s["score"], s["return_mean"],
                     None if b is None else b["score"], None if b is None else f"{b['target']:g}",
                     " / ".join(f"{x['target']:g}: {x['return_mean']:.1f}" for x in r["by_target"])])
    rows.append(["**mean**", "", result["mean_standard"], None, result["mean_best"], "", ""])
    return markdown_table(["task", "standard target", "score at standard target", "return", "best score over targets",
                           "best at target", "return per target"], rows)
