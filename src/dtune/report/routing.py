"""Routing diagnostics of pool methods (L2M, L2P): which pool entry each task's evaluation
timesteps chose, as a task x entry matrix of shares (a table and a PNG heatmap).

Ideal routing gives every task of a continual sequence its own entry, chosen at every step, and
sends the pre-training tasks to L2M's "no modulation" route (entry `-1`, with pre-training
keys) or, failing that, spreads them without taking a new task's entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dtune.report import markdown_table

NO_MOD = "-1"


def routing_matrix(evals: list[dict]) -> tuple[list[str], list[str], np.ndarray] | None:
    """Tasks, entries (as strings, `-1` first) and the `(task, entry)` share of timesteps, from
    evaluation results that carry `routing` (later results overwrite a task's earlier counts)."""
    counts: dict[str, dict[str, int]] = {}
    for res in evals:
        for task, c in (res or {}).get("routing", {}).items():
            counts[task] = dict(c)
    if not counts:
        return None
    tasks = list(counts)
    entries = sorted({e for c in counts.values() for e in c}, key=int)
    m = np.array([[counts[t].get(e, 0) for e in entries] for t in tasks], dtype=np.float64)
    return tasks, entries, m / np.maximum(m.sum(1, keepdims=True), 1)


def _label(e: str) -> str:
    return "none" if e == NO_MOD else e


def routing_markdown(tasks: list[str], entries: list[str], shares: np.ndarray) -> str:
    """Per task: its most chosen entry and that entry's share, how many entries it used, and
    which other tasks share its top entry (a collision: one entry modulates both)."""
    top = shares.argmax(1)
    rows = []
    for i, t in enumerate(tasks):
        others = [tasks[j] for j in range(len(tasks)) if j != i and top[j] == top[i] and entries[top[i]] != NO_MOD]
        rows.append([t, _label(entries[top[i]]), f"{100 * shares[i, top[i]]:.0f}%", int((shares[i] > 0).sum()),
                     f"{100 * shares[i, entries.index(NO_MOD)]:.0f}%" if NO_MOD in entries else "-",
                     ", ".join(others) or "-"])
    return markdown_table(["task", "top entry", "its share", "entries used", "no modulation",
                           "tasks sharing the top entry"], rows)


def plot_routing(tasks: list[str], entries: list[str], shares: np.ndarray, path: Path, title: str = "") -> None:
    """Heatmap of the shares: row = task, column = pool entry."""
    from dtune.report.plots import _plt, _short

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 2.0 + 0.35 * len(entries)), max(4.0, 1.5 + 0.3 * len(tasks))))
    im = ax.imshow(100 * shares, vmin=0, vmax=100, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(entries)), [_label(e) for e in entries], fontsize=7)
    ax.set_yticks(range(len(tasks)), _short(tasks), fontsize=7)
    ax.set_xlabel("pool entry chosen")
    ax.set_ylabel("evaluated task")
    fig.colorbar(im, ax=ax, fraction=0.04, label="% of the task's timesteps")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_routing(run_dir: Path, evals: list[dict], title: str = "") -> dict | None:
    """`routing.json`, `routing.md` and `routing.png` in `run_dir` from the evaluations' routing
    counts; None (and nothing written) when the method does not route."""
    from dtune.runtime.io import atomic_write_json, atomic_write_text

    found = routing_matrix(evals)
    if found is None:
        return None
    tasks, entries, shares = found
    doc = {"tasks": tasks, "entries": entries, "shares": shares.round(4).tolist()}
    atomic_write_json(run_dir / "routing.json", doc)
    atomic_write_text(run_dir / "routing.md", routing_markdown(tasks, entries, shares) + "\n")
    plot_routing(tasks, entries, shares, run_dir / "routing.png", title)
    return doc


def read_routing(run_dir: str | Path) -> tuple[list[str], list[str], np.ndarray] | None:
    p = Path(run_dir) / "routing.json"
    if not p.exists():
        return None
    d = json.loads(p.read_text())
    return d["tasks"], d["entries"], np.asarray(d["shares"], dtype=np.float64)


def routing_summary(tasks: list[str], entries: list[str], shares: np.ndarray, new_tasks: list[str]) -> dict:
    """How well a run routes: for its new tasks, the mean share of their top entry
    (`consistency`: 1 = every step of a task took one entry) and the number of distinct top
    entries over the number of tasks (`separation`: 1 = no two tasks share one); for the
    pre-training tasks, the share of their steps that took a new task's top entry
    (`pretrain_on_new`) and, with L2M's pre-training keys, the share routed to no modulation."""
    idx = [tasks.index(t) for t in new_tasks if t in tasks]
    pre = [i for i in range(len(tasks)) if tasks[i] not in new_tasks]
    top = shares.argmax(1)
    new_entries = sorted({int(top[i]) for i in idx if entries[top[i]] != NO_MOD})
    return {"new_tasks": len(idx), "consistency": float(np.mean([shares[i, top[i]] for i in idx])) if idx else None,
            "separation": len({int(top[i]) for i in idx}) / len(idx) if idx else None,
            "pretrain_tasks": len(pre),
            "pretrain_on_new": float(np.mean([shares[i, new_entries].sum() for i in pre])) if pre else None,
            "pretrain_no_mod": float(np.mean([shares[i, entries.index(NO_MOD)] for i in pre]))
            if pre and NO_MOD in entries else None}
