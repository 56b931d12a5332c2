"""Seeds derived from (base seed, task, episode), so that an episode is the same whatever the
number of workers and whichever other tasks run beside it."""

from __future__ import annotations

import zlib

import numpy as np


def episode_seed(seed: int, task: str, i: int) -> int:
    """Environment seed of episode `i` of `task` under base `seed`."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), i]).generate_state(1)[0])
