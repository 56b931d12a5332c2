"""A gymnasium view of any registered task, so Minari's `recover_environment()` (and any
gymnasium user) can rebuild the environment of a dtune dataset:

    env = gymnasium.make("dtune/Task-v0", task="hammer-v3")
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class DtuneEnv(gym.Env):
    """Gymnasium env around a dtune task; `info["success"]` carries the suite's success flag."""

    metadata = {"render_modes": []}

    def __init__(self, task: str, horizon: int | None = None, seed: int = 0):
        from dtune.tasks import get_task, make_env

        self.spec_ = get_task(task, horizon)
        self.env = make_env(task, seed=seed, horizon=horizon)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.spec_.obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.spec_.act_dim,), np.float32)
        self._seed = seed

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31))
        return np.asarray(self.env.reset(seed), np.float32), {}

    def step(self, action):
        obs, r, term, trunc, success = self.env.step(np.asarray(action))
        return np.asarray(obs, np.float32), float(r), bool(term), bool(trunc), {"success": bool(success)}


def register() -> None:
    if "dtune/Task-v0" not in gym.registry:
        gym.register("dtune/Task-v0", entry_point="dtune.tasks.gym:DtuneEnv")
