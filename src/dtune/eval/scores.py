"""Scores of the suites: any-step success, or the normalised return
`(R - ref_min) / (ref_max - ref_min)` with the task's reference returns (D4RL-style, declared
by its suite) or, failing those, the training data's (random-policy mean and data mean)."""

from __future__ import annotations

import numpy as np

from dtune.tasks import TaskSpec


def target_return(spec: TaskSpec, task_info: dict | None, scale: float = 1.0) -> float:
    """The task's evaluation target times `scale`: the best episode return of its whole dataset
    (`task_info["return_max"]`, which pre-training, adaptation and continual runs record from the
    dataset whatever part of it they train on, and `dtune evaluate` reads from the data root for
    tasks no run records: `dtune.recipes.common.dataset_statistics`), else the suite's default."""
    if task_info and task_info.get("return_max") is not None:
        base = float(task_info["return_max"])
    else:
        base = spec.target_return
    return base * scale


def _degenerate(lo: float, hi: float) -> bool:
    """References that define no score: the upper one not above the lower by 1% of their scale
    (random-policy data, or a behaviour policy whose data is no better than random: scores would
    be noise divided by ~0, or flip sign, rating the better agent lower)."""
    return hi - lo < 0.01 * max(1.0, abs(hi), abs(lo))


def references(spec: TaskSpec, info: dict | None) -> tuple[float, float] | None:
    lo = spec.ref_min_score if spec.ref_min_score is not None else (info or {}).get("ref_min_score")
    hi = spec.ref_max_score if spec.ref_max_score is not None else (info or {}).get("ref_max_score")
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)


def normalized_score(ret: float, info: dict | None, spec: TaskSpec | None = None) -> float | None:
    """`(ret - lo) / (hi - lo)`; None where the references are unknown or coincide."""
    refs = references(spec, info) if spec is not None else (
        None if not info or info.get("ref_min_score") is None or info.get("ref_max_score") is None
        else (float(info["ref_min_score"]), float(info["ref_max_score"])))
    if refs is None:
        return None
    lo, hi = refs
    if _degenerate(lo, hi):
        return None
    return (ret - lo) / (hi - lo)


def undefined_reason(spec: TaskSpec, info: dict | None) -> str | None:
    """Why `spec`'s normalised score is undefined with these references (None if it is defined,
    or if the task is scored by success)."""
    if spec.score != "normalized":
        return None
    refs = references(spec, info)
    if refs is None:
        return (f"no reference returns for {spec.name}: neither its suite nor the checkpoint's record of its "
                "training data gives them")
    lo, hi = refs
    if _degenerate(lo, hi):
        source = (info or {}).get("source")
        return (f"the training data's mean return of {spec.name} ({hi:.1f}) is not above its random reference "
                f"({lo:.1f}) by 1%"
                + (": its data is random-policy data" if source == "random" else
                   f": its data (`{source}`) is no better than random" if source else "")
                + "; train on data better than random (e.g. `dtune data sac`, source sac-replay) for a defined score")
    return None


def task_score(spec: TaskSpec, returns: np.ndarray, success: np.ndarray, info: dict | None) -> float | None:
    if spec.score == "success":
        return float(np.mean(success))
    scores = [normalized_score(r, info, spec) for r in returns]
    return None if any(s is None for s in scores) else float(np.mean(scores))
