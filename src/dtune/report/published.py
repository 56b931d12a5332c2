"""Published offline-RL figures, put beside dtune's own runs by `dtune report`, and the agreement of
the method orderings.

The figures are normalised scores (x100) on D4RL's datasets, copied from the papers' tables as
`shared/reference/papers.md` records them:

* `corl`: the CORL benchmark (Tarasov et al., 2023), the last score of DT, CQL, IQL and BC on
  D4RL's MuJoCo medium, medium-replay and medium-expert datasets (v2 environments, 1M updates;
  DT 100K).
* `lamo`: the LaMo paper's table (Shi et al., ICLR 2024), mean of 3 seeds: LaMo, DT, Wiki-RL, CQL,
  IQL, TD3+BC, BC on D4RL MuJoCo medium, Reacher2d and Kitchen, at several data ratios.

dtune's datasets are generated locally with D4RL's recipe (D4RL's files cannot be downloaded), on
Gymnasium's v5 environments: the published numbers are a reference for the *ordering* of methods,
not for the values. :func:`ordering_agreement` counts, per dataset, the method pairs that dtune's
runs and a publication order the same way.
"""

from __future__ import annotations

from itertools import combinations

_CORL = {  # method: (halfcheetah, hopper, walker2d) per dataset
    "medium": {"dt": (42.2, 65.1, 67.6), "cql": (47.0, 59.1, 80.8), "iql": (48.3, 67.5, 80.9), "bc": (42.4, 53.5, 63.2)},
    "medium-replay": {"dt": (38.9, 81.8, 59.9), "cql": (45.0, 95.1, 73.1), "iql": (44.5, 97.4, 82.2),
                      "bc": (35.7, 29.8, 21.8)},
    "medium-expert": {"dt": (91.6, 110.4, 107.1), "cql": (95.6, 99.3, 109.6), "iql": (94.7, 107.4, 111.7),
                      "bc": (56.0, 52.3, 99.0)},
}
_LAMO_COLS = ("lamo", "dt", "wiki-rl", "cql", "iql", "td3+bc", "bc")
_LAMO = {  # (task, source, data ratio): the row of LaMo's table, in _LAMO_COLS order
    ("kitchen-complete", "partial", 1.0): (46.6, 33.8, 20.4, 0.2, 45.7, 8.2, 1.1),
    ("kitchen-complete", "complete", 1.0): (64.2, 52.8, 21.7, 0.0, 30.0, 0.6, 0.0),
    ("reacher2d", "medium", 1.0): (33.0, 22.8, 29.4, 31.5, 30.4, 31.2, 14.0),
    ("reacher2d", "medium", 0.1): (12.4, 2.3, 4.1, 15.8, 5.8, 8.7, 2.1),
    ("reacher2d", "medium", 0.3): (31.2, 6.4, 19.4, 30.0, 10.2, 24.5, 10.2),
    ("hopper", "medium", 1.0): (74.1, 60.9, 75.4, 61.6, 62.8, 58.7, 47.8),
    ("halfcheetah", "medium", 1.0): (42.5, 42.6, 41.9, 46.7, 48.3, 48.2, 42.2),
    ("walker2d", "medium", 1.0): (73.3, 70.2, 67.4, 81.1, 81.0, 84.0, 57.5),
}
_LAMO_LOW_DATA = {  # MuJoCo medium at data ratios 0.005 / 0.01 / 0.1: (LaMo, DT)
    "hopper": ((57.0, 35.8), (52.0, 41.9), (73.7, 57.3)),
    "halfcheetah": ((39.0, 22.4), (40.6, 29.6), (42.1, 41.7)),
    "walker2d": ((66.9, 16.7), (74.5, 38.9), (70.4, 70.2)),
}

PUBLISHED_METHODS = ("bc", "cql", "iql", "td3+bc", "dt")
"""Report labels that are published methods as they stand (LaMo's label carries its LM's name)."""

LAMO_LINEAR_EMBEDDINGS = frozenset({"hopper"})
"""Tasks on which LaMo's own runs used linear embeddings and a Linear + Tanh action head (its `run_hopper.sh`
leaves out `--mlp_embedding`; papers.md, section 2): there, that is LaMo's recipe, and MLP embeddings the
ablation."""

SOURCES = {"corl": "CORL (D4RL v2, last score)", "lamo": "LaMo paper (D4RL, mean of 3 seeds)"}
"""The publications, as the report's column headers name them."""


def _table() -> dict[str, dict[tuple, dict[str, float]]]:
    out: dict[str, dict[tuple, dict[str, float]]] = {"corl": {}, "lamo": {}}
    for source, methods in _CORL.items():
        for i, task in enumerate(("halfcheetah", "hopper", "walker2d")):
            out["corl"][(task, source, 1.0)] = {m: v[i] for m, v in methods.items()}
    for key, row in _LAMO.items():
        out["lamo"][key] = dict(zip(_LAMO_COLS, row))
    for task, rows in _LAMO_LOW_DATA.items():
        for ratio, (lamo, dt) in zip((0.005, 0.01, 0.1), rows):
            out["lamo"][(task, "medium", ratio)] = {"lamo": lamo, "dt": dt}
    return out


PUBLISHED = _table()
"""publication -> (task, source, data ratio) -> method -> normalised score x100."""


def published_method(label: str) -> str | None:
    """The published method a report row stands for: `bc`, `cql`, `iql`, `td3+bc`, `dt`, or
    `lamo` for LaMo with none of its ablations (`lamo [model]`); None for anything else."""
    if label in PUBLISHED_METHODS:
        return label
    if label.startswith("lamo [") and label.endswith("]"):
        return "lamo"
    return None


def published_scores(task: str, source: str | None, data_ratio: float, method: str) -> dict[str, float]:
    """Publication -> score of `method` on that dataset, where one was published."""
    key = (task, source, float(data_ratio))
    return {pub: rows[key][method] for pub, rows in PUBLISHED.items() if method in rows.get(key, {})}


def ordering_agreement(ours: dict[str, float], theirs: dict[str, float],
                       spread: dict[str, float] | None = None) -> dict:
    """Compare two orderings of the methods both have (method -> score): the pairs ordered the same
    way (`agree`), the opposite way (`disagree`, each as `(better here, better there)`), and the
    pairs not separated (`ties`): equal published scores, or ours differing by no more than the
    larger `spread` (e.g. the sd over seeds) of the two methods."""
    spread = spread or {}
    common = sorted(set(ours) & set(theirs))
    agree, disagree, ties = [], [], []
    for a, b in combinations(common, 2):
        d_ours, d_theirs = ours[a] - ours[b], theirs[a] - theirs[b]
        if abs(d_ours) <= max(spread.get(a) or 0.0, spread.get(b) or 0.0) or d_theirs == 0:
            ties.append((a, b))
        elif (d_ours > 0) == (d_theirs > 0):
            agree.append((a, b))
        else:
            disagree.append((a, b) if d_ours > 0 else (b, a))
    return {"methods": common, "agree": agree, "disagree": disagree, "ties": ties}


__all__ = ["LAMO_LINEAR_EMBEDDINGS", "PUBLISHED", "PUBLISHED_METHODS", "SOURCES", "ordering_agreement", "published_method",
           "published_scores"]
