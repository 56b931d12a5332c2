"""Gymnasium MuJoCo locomotion, the D4RL-style suite of offline RL: Hopper, HalfCheetah, Walker2d
and Ant (Gymnasium's v5 environments), scored like D4RL.

The normalised score is D4RL's, `100 * (R - random) / (expert - random)` with D4RL's reference
returns (dtune reports it as a fraction, printed in %). Gymnasium's v5 dynamics differ slightly
from the v2 environments D4RL's numbers were measured on (newer MuJoCo, fixed contact and
reward details, Ant's observation has 105 entries where D4RL's v2 had 111), so scores compare
to published D4RL figures approximately, not exactly.

Episodes last at most 1,000 steps; Hopper, Walker2d and Ant also end early when the robot falls
(a real termination, stored as such). Rewards are divided by 1,000 before they enter a model
(the Decision Transformer's scale). Each task has its own observation slot: the four robots'
observations mean different things.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dtune.tasks.base import Suite, TaskSpec

HORIZON = 1000
REWARD_SCALE = 1000.0


@dataclass(frozen=True)
class _Robot:
    env_id: str
    obs_dim: int
    act_dim: int
    random: float
    """D4RL's random reference return."""
    expert: float
    """D4RL's expert reference return."""
    targets: tuple[float, ...]
    """Target returns of the DT/LaMo evaluations, the standard one first."""
    medium: float
    """D4RL's `medium` level: the return of the SAC agent early-stopped at about a third of expert."""


ROBOTS: dict[str, _Robot] = {
    "hopper": _Robot("Hopper-v5", 11, 3, -20.3, 3234.3, (3600.0, 2600.0, 2200.0, 1800.0), 1400.0),
    "halfcheetah": _Robot("HalfCheetah-v5", 17, 6, -280.2, 12135.0, (12000.0, 8000.0, 6000.0, 4500.0), 4800.0),
    "walker2d": _Robot("Walker2d-v5", 17, 6, 1.6, 4592.3, (5000.0, 4000.0, 3000.0, 2500.0), 3000.0),
    # The DT and LaMo papers have no Ant: its targets follow the same pattern (about 1.5x to 0.75x
    # of D4RL's expert return); its medium level is about D4RL's ant-medium data return.
    "ant": _Robot("Ant-v5", 105, 8, -325.6, 3879.7, (6000.0, 4500.0, 3600.0, 3000.0), 3000.0),
}
MUJOCO3: tuple[str, ...] = ("hopper", "halfcheetah", "walker2d")


class MujocoEnv:
    """A Gymnasium MuJoCo environment behind dtune's small env interface; `reset(seed)` seeds it."""

    def __init__(self, env_id: str, horizon: int = HORIZON):
        import gymnasium as gym

        if horizon > HORIZON:
            raise ValueError(f"{env_id} episodes last at most {HORIZON} steps; got horizon={horizon}")
        self.env = gym.make(env_id, max_episode_steps=int(horizon))

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self.env.reset(seed=int(seed))
        return obs

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, _ = self.env.step(np.asarray(action, dtype=np.float32))
        return obs, float(reward), bool(terminated), bool(truncated), False


class MujocoSuite(Suite):
    """Hopper, HalfCheetah, Walker2d, Ant (Gymnasium v5) with D4RL's normalised score."""

    name = "mujoco"
    slots = tuple((f"mujoco/{n}", r.obs_dim) for n, r in ROBOTS.items())
    sets = {"mujoco3": MUJOCO3, "mujoco4": tuple(ROBOTS)}
    sources = ("random", "medium", "medium-replay", "medium-expert", "expert", "sac-replay")

    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name=n, suite=self.name, obs_dim=r.obs_dim, act_dim=r.act_dim, horizon=HORIZON,
                         reward_scale=REWARD_SCALE, target_return=r.targets[0], score="normalized",
                         slots=(f"mujoco/{n}",), ref_min_score=r.random, ref_max_score=r.expert,
                         target_returns=r.targets) for n, r in ROBOTS.items()]

    def quality_returns(self, task: TaskSpec) -> dict[str, float]:
        return {"medium": ROBOTS[task.name].medium}

    def make_env(self, task: TaskSpec, seed: int):
        return MujocoEnv(ROBOTS[task.name].env_id, task.horizon)
