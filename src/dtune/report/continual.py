"""Continual runs in the report: single-task reference scores (forward transfer) and a run's
summary in Markdown."""

from __future__ import annotations

import json
from pathlib import Path


def run_base_digest(run_dir: str | Path) -> str | None:
    """The sha256 of the base checkpoint an adaptation or continual run adapted (None if unknown)."""
    run_dir = Path(run_dir)
    for doc in (run_dir / "result.json", run_dir / "metrics.json", run_dir / "adapter.json",
                run_dir / "adapter" / "adapter.json"):
        if doc.exists():
            try:
                digest = json.loads(doc.read_text()).get("base_digest")
            except json.JSONDecodeError:
                continue
            if digest:
                return digest
    return None


def reference_scores(ref_dir: str | None, method: str, tasks: list[str], base_digest: str | None = None
                     ) -> dict[int, float]:
    """Single-task scores of ``method`` per sequence position, from `dtune adapt` results under
    ``ref_dir`` (searched recursively) made on the same base checkpoint (runs of another base are
    skipped where both digests are known); several runs of one task (seeds) are averaged."""
    if not ref_dir:
        return {}
    found: dict[int, list[float]] = {}
    for path in sorted(Path(ref_dir).rglob("result.json")):
        r = json.loads(path.read_text())
        if r.get("method") != method or r.get("task") not in tasks or r.get("new_task_score") is None:
            continue
        digest = run_base_digest(path.parent)
        if base_digest and digest and digest != base_digest:
            continue
        found.setdefault(tasks.index(r["task"]), []).append(float(r["new_task_score"]))
    return {i: sum(v) / len(v) for i, v in found.items()}


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 5e5 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def parameters_text(s: dict) -> str:
    """Trainable parameters in words: all of them, and what one task trains (pool methods; with
    ``pool_size`` in ``s`` the pool's size is named)."""
    text = f"{_params(s['trainable'])} in all ({s['trainable_pct']:.1f}% of the base model's {_params(s['base'])})"
    if s.get("per_task") is not None and s["per_task"] != s["trainable"]:
        pool = f"the pool of {s['pool_size']} entries" if s.get("pool_size") else "the pool"
        text += (f"; {pool} holds the modulators of every task, one task trains {_params(s['per_task'])} "
                 f"({s['per_task_pct']:.1f}%)")
    return text


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def summary_markdown(s: dict) -> str:
    from dtune.report import markdown_table

    lines = [f"# Continual run: {s['method']} on {s['sequence']} (seed {s['seed']}, {s['steps_per_task']} steps per task)", ""]
    lines.append(markdown_table(["metric", "value"], [
        ["average score at the end", _pct(s["average_score"])], ["forgetting", _pct(s["forgetting"])],
        ["forward transfer vs single-task", _pct(s["forward_transfer"])],
        ["pre-training score before / after", f"{_pct(s['pretrain_before'])} / {_pct(s['pretrain_after'])}"],
        ["trainable parameters", parameters_text(s)],
        ["training / evaluation time", f"{s['train_s']:.0f}s / {s['eval_s']:.0f}s"]]))
    lines += ["", "Score matrix (row: after training on task; column: evaluated task):", ""]
    short = [t.removesuffix("-v3") for t in s["tasks"]]
    lines.append(markdown_table(["after \\ on"] + short, [
        [short[i]] + ["" if v is None else f"{100 * v:.0f}" for v in row] for i, row in enumerate(s["matrix"])]))
    return "\n".join(lines)
