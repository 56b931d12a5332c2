"""Meta-World v3 suite: MT40 (pre-training), CW10 (Continual World), MT50; goal-observable
environments, scripted experts."""

from __future__ import annotations

import warnings

import numpy as np

from dtune.tasks.base import Suite, TaskSpec

# The scripted experts warn at every process's first action that their gains exceed the action
# bounds; the environment clips, and so do we.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)

OBS_DIM = 39
ACT_DIM = 4
HORIZON = 200
"""Continual-World / L2M episode length (Meta-World's own default is 500)."""
MAX_REWARD = 10.0
"""Meta-World v3 rewards lie in [0, 10] per step."""

MT40: tuple[str, ...] = tuple(f"{n}-v3" for n in (
    "assembly", "basketball", "bin-picking", "box-close", "button-press", "button-press-topdown",
    "button-press-topdown-wall", "button-press-wall", "coffee-button", "coffee-pull", "coffee-push",
    "dial-turn", "disassemble", "door-close", "door-lock", "door-open", "door-unlock", "drawer-close",
    "drawer-open", "faucet-open", "hand-insert", "handle-press", "handle-pull", "handle-pull-side",
    "lever-pull", "peg-insert-side", "pick-out-of-hole", "pick-place", "pick-place-wall",
    "plate-slide", "plate-slide-back", "plate-slide-back-side", "plate-slide-side", "reach",
    "reach-wall", "soccer", "stick-push", "sweep", "sweep-into", "window-open",
))
CW10: tuple[str, ...] = tuple(f"{n}-v3" for n in (
    "hammer", "push-wall", "faucet-close", "push-back", "stick-pull", "handle-press-side", "push",
    "shelf-place", "window-close", "peg-unplug-side",
))
MT50: tuple[str, ...] = MT40 + CW10


def make_env(name: str, seed: int, horizon: int = HORIZON):
    """A goal-observable Meta-World env whose object/goal positions are re-drawn at every reset
    from its own seeded generator (the Continual-World setting), truncated at `horizon`."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE as envs

    env = envs[f"{name}-goal-observable"](seed=int(seed))
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env.max_path_length = int(horizon)
    return env


def expert_policy(name: str):
    """Meta-World's scripted expert for the task: `policy(obs) -> action`."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[name]()
    return lambda obs: np.clip(policy.get_action(obs), -1.0, 1.0)


class MetaWorldEnv:
    """Meta-World task behind dtune's small env interface: `reset(seed) -> obs` and
    `step(a) -> (obs, reward, terminated, truncated, success)`."""

    def __init__(self, name: str, seed: int, horizon: int = HORIZON):
        self.env = make_env(name, seed, horizon)

    def reset(self, seed: int) -> np.ndarray:
        self.env.seed(int(seed))
        obs, _ = self.env.reset()
        return obs

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        return obs, float(reward), bool(terminated), bool(truncated), bool(info["success"])


class MetaWorldSuite(Suite):
    """All 50 Meta-World v3 tasks: one 39-dim observation slot, 4 actions, success score."""

    name = "metaworld"
    slots = (("metaworld/obs", OBS_DIM),)
    sets = {"mt40": MT40, "cw10": CW10, "mt50": MT50}
    sources = ("expert-noise", "random")
    reward_scale = 200.0

    def tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name=n, suite=self.name, obs_dim=OBS_DIM, act_dim=ACT_DIM, horizon=HORIZON,
                         reward_scale=self.reward_scale, target_return=MAX_REWARD * HORIZON, score="success",
                         slots=("metaworld/obs",), scale_target_with_horizon=True) for n in MT50]

    def make_env(self, task: TaskSpec, seed: int):
        return MetaWorldEnv(task.name, seed, task.horizon)

    def expert(self, task: TaskSpec):
        return expert_policy(task.name)
