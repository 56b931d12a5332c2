"""Helpers shared by the benchmark scripts (timing, tiny data when none is given)."""

from __future__ import annotations

import os
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")


def timed(fn, repeat: int = 1, warmup: int = 0) -> float:
    """Seconds per call of ``fn`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def matmul_rate(dtype, m: int, k: int, n: int, repeat: int = 5) -> float:
    """FLOP/s of an ``(m, k) @ (k, n)`` matmul in ``dtype`` on this process's threads (a large
    square one is the CPU's practical peak)."""
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / timed(lambda: a @ b, repeat=repeat, warmup=2)


def race(fns: dict, rounds: int = 3, repeat: int = 20, warmup: int = 3) -> dict:
    """Seconds per call of each function: the best of ``rounds`` timings taken in turn, so that a
    slow spell of a shared machine hits every contender alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, repeat=repeat, warmup=warmup))
    return best


def data_dir_with(tasks: str, episodes: int = 20) -> str:
    """``$DTUNE_DATA_DIR`` if it has the tasks, else a temporary root with freshly collected data."""
    from dtune.data.collect import CollectConfig, collect
    from dtune.data.storage import list_datasets
    from dtune.tasks import resolve_tasks

    root = os.environ.get("DTUNE_DATA_DIR")
    if root and set(resolve_tasks(tasks)) <= {t for t, _ in list_datasets(root)}:
        return root
    root = tempfile.mkdtemp(prefix="dtune-bench-")
    collect(CollectConfig(tasks=tasks, episodes=episodes, data_dir=root, progress=False))
    return root
