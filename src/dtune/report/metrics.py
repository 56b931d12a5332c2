"""Continual-learning metrics from the task-by-task score matrix.

`matrix[i, j]` = score on task `j` of the sequence after training on task `i` (NaN where a
score is undefined). With `T` tasks:

* average score: mean of the last row, `mean_j matrix[T-1, j]`;
* forgetting of task `j`: `matrix[j, j] - matrix[T-1, j]` (score right after its own
  training minus its final score); the metric is its mean over all tasks (Continual World's
  definition; the last task forgets nothing by construction);
* forward transfer of task `j`: `matrix[j, j] - reference[j]`, the gain over adapting to the
  task alone (single-task `dtune adapt` runs), averaged over the tasks that have a reference;
* average so far after task `i`: mean of `matrix[i, :i+1]` (the curve of the seen tasks);
* retention: pre-training score at the end over the pre-training score before adaptation.
"""

from __future__ import annotations

import numpy as np


def domain_scores(evaluation: dict) -> dict[str, float | None]:
    """Mean score per domain (suite) of an evaluation's per-task results (`dtune evaluate`'s
    document), over the tasks whose score is defined and whose data came from an agent that learned
    the task (a task flagged `score_caveat` divides by a small gap and would swamp the mean). A mean
    over Meta-World success rates and DMC normalised scores together hides that a model can lose one
    domain and keep the other."""
    by: dict[str, list[float]] = {}
    for r in evaluation.get("tasks", {}).values():
        vals = by.setdefault(r.get("domain", "?"), [])
        if r.get("score") is not None and "score_caveat" not in r:
            vals.append(float(r["score"]))
    return {d: (float(np.mean(v)) if v else None) for d, v in sorted(by.items())}


def as_matrix(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)


def _mean(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def cl_metrics(matrix: np.ndarray, reference: dict[int, float] | None = None,
               pretrain_before: float | None = None, pretrain_after: float | None = None) -> dict:
    """Metrics of a finished (square) or partial (fewer rows than columns) score matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, t = matrix.shape
    if rows > t:
        raise ValueError(f"score matrix has {rows} rows for {t} tasks")
    done = rows
    own = np.array([matrix[j, j] for j in range(done)])
    last = matrix[done - 1] if done else np.full(t, np.nan)
    forgetting = own - last[:done]
    out = {
        "tasks_done": done,
        "average_score": _mean(last) if done == t else None,
        "average_score_seen": _mean(last[:done]) if done else None,
        "forgetting": _mean(forgetting) if done == t else None,
        "forgetting_per_task": [None if np.isnan(f) else float(f) for f in forgetting],
        "own_score": [None if np.isnan(v) else float(v) for v in own],
        "average_so_far": [_mean(matrix[i, : i + 1]) for i in range(done)],
        "forward_transfer": None,
        "retention": None,
        "pretrain_before": pretrain_before,
        "pretrain_after": pretrain_after,
    }
    if reference:
        gains = [own[j] - reference[j] for j in range(done) if j in reference and reference[j] is not None]
        out["forward_transfer"] = _mean(gains) if gains else None
        out["forward_transfer_per_task"] = {int(j): float(own[j] - reference[j]) for j in range(done)
                                            if j in reference and reference[j] is not None}
    if pretrain_before and pretrain_after is not None:
        out["retention"] = pretrain_after / pretrain_before
    return out


def iqm(values) -> float | None:
    """Interquartile mean as rliable computes it (Agarwal et al. 2021;
    `scipy.stats.trim_mean(values, 0.25)`): the mean after dropping `floor(n / 4)` values at each
    end; None for no values (None entries are skipped)."""
    x = np.sort(np.asarray([v for v in values if v is not None], dtype=np.float64))
    if x.size == 0:
        return None
    cut = x.size // 4
    return float(x[cut: x.size - cut].mean())


def _iqm_rows(x: np.ndarray) -> np.ndarray:
    """IQM of every row of `x` (R, N)."""
    x = np.sort(x, axis=1)
    cut = x.shape[1] // 4
    return x[:, cut: x.shape[1] - cut].mean(1)


AGGREGATES = {"mean": lambda x: x.mean(1), "iqm": _iqm_rows}
"""Aggregates over runs x tasks that :func:`stratified_bootstrap` supports (rows of resamples)."""


def stratified_bootstrap(per_task: dict[str, list], aggregate: str = "iqm", reps: int = 2000, seed: int = 0,
                         alpha: float = 0.05) -> tuple[float, float, float] | None:
    """Point estimate and `1 - alpha` percentile interval of an aggregate score, by rliable's
    stratified bootstrap (Agarwal et al. 2021): each replicate resamples, with replacement and
    independently per task, as many runs (seeds) as that task has, and aggregates all of them.
    `per_task`: task -> its runs' scores (None skipped; tasks left empty are dropped). Seeded:
    the same inputs give the same interval. None when there are no scores."""
    cols = [np.asarray([v for v in vals if v is not None], dtype=np.float64) for vals in per_task.values()]
    cols = [c for c in cols if c.size]
    if not cols:
        return None
    stat = AGGREGATES[aggregate]
    point = float(stat(np.concatenate(cols)[None])[0])
    rng = np.random.default_rng(seed)
    resampled = np.concatenate([c[rng.integers(0, c.size, (reps, c.size))] for c in cols], axis=1)
    lo, hi = np.percentile(stat(resampled), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)
