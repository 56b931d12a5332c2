"""`dtune data report`: a table and learning-curve plot of datasets (e.g. the 16 DMC SAC
replay buffers): episodes, steps, mean and best return, the random reference, and whether the
behaviour policy learned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dtune.data.storage import data_root, episode_returns, read_episodes, read_metadata, resolve_sources
from dtune.report import markdown_table
from dtune.runtime.io import atomic_write_text
from dtune.eval.scores import normalized_score
from dtune.tasks import get_task, resolve_tasks


def data_report(tasks: str, source: str | None = None, data_dir: str | None = None, out: str | None = None) -> str:
    """Markdown table of the datasets of `tasks`; with `out` also `datasets.json`,
    `datasets.md` and `learning_curves.png` there."""
    from dtune.report.plots import plot_learning_curves

    root = data_root(data_dir)
    names = resolve_tasks(tasks)
    found = resolve_sources(root, names, source)
    rows, table, curves = [], [], {}
    for t in names:
        d = read_metadata(root, t, found[t])["dtune"]
        ep = read_episodes(root, t, found[t])
        ret = episode_returns(ep["rewards"], ep["lengths"])
        spec = get_task(t)
        suite_refs = spec.ref_min_score is not None and spec.ref_max_score is not None  # D4RL-style
        lo, hi = (spec.ref_min_score, spec.ref_max_score) if suite_refs else (d.get("ref_min_score"), d.get("ref_max_score"))
        score = normalized_score(float(ret.mean()), {"ref_min_score": lo, "ref_max_score": hi})
        row = {"task": t, "source": found[t], "episodes": len(ret), "steps": int(ep["lengths"].sum()),
               "return_mean": float(ret.mean()), "return_max": float(ret.max()),
               "return_last10": float(ret[-10:].mean()), "random_reference": lo, "ref_max_score": hi,
               "reference": "suite (D4RL-style)" if suite_refs else "data (random, data mean)",
               "normalized_data_score": None if score is None else 100 * score,
               "learned": d.get("sac_learned"), "collect_wall_s": d.get("sac_wall_s")}
        rows.append(row)
        table.append([t, found[t], row["episodes"], row["steps"], row["return_mean"], row["return_max"],
                      row["return_last10"], lo, hi if suite_refs else "data mean",
                      row["normalized_data_score"] if suite_refs else "100 (by definition)" if score is not None else "n/a",
                      {True: "yes", False: "NO", None: "n/a"}[row["learned"]]])
        curves[t] = {"steps": np.cumsum(ep["lengths"]), "returns": ret, "random": lo, "learned": row["learned"]}
    md = markdown_table(["task", "source", "episodes", "steps", "mean return", "best return", "last 10 episodes",
                         "ref min (random)", "ref max", "normalised data score", "learned"], table)
    md += ("\n\nNormalised data score: 100 (mean - ref min) / (ref max - ref min). Suites with reference returns "
           "(D4RL-style MuJoCo, reacher2d) use them; the others use the random policy's mean return and the "
           "data's own mean, as the L2M paper does for DMC, so their data scores 100 by definition.")
    flat = [r["task"] for r in rows if r["learned"] is False]
    if flat:
        md += "\n\nBehaviour policy did not learn (last tenth of episodes no better than random): " + ", ".join(flat)
    if out:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        atomic_write_text(o / "datasets.json", json.dumps(rows, indent=2))
        atomic_write_text(o / "datasets.md", md + "\n")
        plot_learning_curves(curves, o / "learning_curves.png",
                             title=f"episode return in collection order ({', '.join(sorted(set(found.values())))})")
    return md
