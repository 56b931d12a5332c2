"""Seeds derived from (base seed, task, episode), so that an episode is the same whatever the
number of workers and whichever other tasks run beside it."""

from __future__ import annotations

import random
import zlib

import numpy as np


def episode_seed(seed: int, task: str, i: int) -> int:
    """Environment seed of episode `i` of `task` under base `seed`."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), i]).generate_state(1)[0])


def global_rng_state() -> dict:
    """numpy's global (legacy) and Python's `random` generator states as JSON-able lists: what
    libraries that draw from them (stable-baselines3, d3rlpy) need saved to resume exactly."""
    n, p = np.random.get_state(), random.getstate()
    return {"numpy_rng": [n[0], n[1].tolist(), *n[2:]], "python_rng": [p[0], list(p[1]), p[2]]}


def set_global_rng_state(state: dict) -> None:
    """Restore what :func:`global_rng_state` saved."""
    n, p = state["numpy_rng"], state["python_rng"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    random.setstate((p[0], tuple(p[1]), p[2]))
