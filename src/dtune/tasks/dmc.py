"""DeepMind Control: the 16 tasks of the L2M paper, their observation slots and env factory.

Every (domain, observation key) pair owns a fixed slot in the shared state vector, so the same
key of the same domain always lands on the same model input dims across tasks (finger-spin and
finger-turn_easy share `finger/position`; walker tasks share all three walker keys).
"""

from __future__ import annotations

import numpy as np

from dtune.tasks.base import Suite, TaskSpec

HORIZON = 1000
DMC10: tuple[str, ...] = (
    "cartpole-balance", "finger-turn_easy", "finger-turn_hard", "fish-upright", "hopper-stand",
    "pendulum-swingup", "point_mass-easy", "reacher-hard", "walker-stand", "walker-run",
)
DMC6: tuple[str, ...] = (
    "ball_in_cup-catch", "cartpole-swingup", "cheetah-run", "finger-spin", "reacher-easy", "walker-walk",
)
DMC16: tuple[str, ...] = DMC10 + DMC6

# Observation keys (in dm_control's spec order) and their flat sizes, per domain.
# tests/tasks/test_registry.py checks this table against dm_control itself.
DOMAIN_KEYS: dict[str, tuple[tuple[str, int], ...]] = {
    "ball_in_cup": (("position", 4), ("velocity", 4)),
    "cartpole": (("position", 3), ("velocity", 2)),
    "cheetah": (("position", 8), ("velocity", 9)),
    "finger": (("position", 4), ("velocity", 3), ("touch", 2), ("target_position", 2), ("dist_to_target", 1)),
    "fish": (("joint_angles", 7), ("upright", 1), ("velocity", 13)),
    "hopper": (("position", 6), ("velocity", 7), ("touch", 2)),
    "pendulum": (("orientation", 2), ("velocity", 1)),
    "point_mass": (("position", 2), ("velocity", 2)),
    "reacher": (("position", 2), ("to_target", 2), ("velocity", 2)),
    "walker": (("orientations", 14), ("height", 1), ("velocity", 9)),
}
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "finger-spin": ("position", "velocity", "touch"),
}
"""Tasks that use only some of their domain's keys (all others use every key)."""
ACT_DIMS: dict[str, int] = {
    "cartpole-balance": 1, "finger-turn_easy": 2, "finger-turn_hard": 2, "fish-upright": 5,
    "hopper-stand": 4, "pendulum-swingup": 1, "point_mass-easy": 2, "reacher-hard": 2,
    "walker-stand": 6, "walker-run": 6, "ball_in_cup-catch": 2, "cartpole-swingup": 1,
    "cheetah-run": 6, "finger-spin": 2, "reacher-easy": 2, "walker-walk": 6,
}


def _slot_offsets() -> dict[tuple[str, str], tuple[int, int]]:
    offsets, pos = {}, 0
    for domain in sorted(DOMAIN_KEYS):
        for key, size in DOMAIN_KEYS[domain]:
            offsets[(domain, key)] = (pos, size)
            pos += size
    return offsets


SLOTS = _slot_offsets()
SLOT_DIM = sum(size for _, size in SLOTS.values())
REWARD_SCALE = 100.0


def split_name(name: str) -> tuple[str, str]:
    domain, task = name.split("-", 1)
    return domain, task


def task_keys(name: str) -> tuple[str, ...]:
    domain, _ = split_name(name)
    return TASK_KEYS.get(name, tuple(k for k, _ in DOMAIN_KEYS[domain]))


def slot_indices(name: str) -> list[int]:
    """Positions (within the DMC part of the state vector) of this task's flat observation."""
    domain, _ = split_name(name)
    idx: list[int] = []
    for key in task_keys(name):
        start, size = SLOTS[(domain, key)]
        idx.extend(range(start, start + size))
    return idx


class DMCEnv:
    """dm_control task behind the small interface dtune's collectors and evaluators use.

    `reset(seed)` re-seeds the task's initial-state generator, so episodes are reproducible.
    Observations are the task's keys flattened in spec order (`float64`).
    """

    def __init__(self, name: str, seed: int, horizon: int = HORIZON):
        import os

        # No rendering here: without this, dm_control probes GLFW and prints a DISPLAY error.
        os.environ.setdefault("MUJOCO_GL", "disabled")
        from dm_control import suite

        if horizon > HORIZON:
            raise ValueError(f"DMC episodes last at most {HORIZON} steps; got horizon={horizon}")
        domain, task = split_name(name)
        self.env = suite.load(domain, task, task_kwargs={"random": int(seed)})
        self.keys = task_keys(name)
        self.horizon = int(horizon)
        self.t = 0

    def _flat(self, obs) -> np.ndarray:
        return np.concatenate([np.asarray(obs[k], dtype=np.float64).ravel() for k in self.keys])

    def reset(self, seed: int) -> np.ndarray:
        self.env.task.random.seed(int(seed))
        self.t = 0
        return self._flat(self.env.reset().observation)

    def step(self, action: np.ndarray):
        ts = self.env.step(np.asarray(action, dtype=np.float64))
        self.t += 1
        truncated = self.t >= self.horizon or ts.last()
        return self._flat(ts.observation), float(ts.reward or 0.0), False, truncated, False


class DMCSuite(Suite):
    """The 16 DMC tasks of the L2M paper: one state slot per (domain, observation key), so a key
    always lands on the same model inputs; data-normalised score."""

    name = "dmc"
    slots = tuple((f"dmc/{d}/{k}", size) for (d, k), (_, size) in SLOTS.items())
    sets = {"dmc10": DMC10, "dmc6": DMC6, "dmc16": DMC16}
    sources = ("random", "sac-replay")

    def tasks(self) -> list[TaskSpec]:
        out = []
        for n in DMC16:
            domain, _ = split_name(n)
            slots = tuple(f"dmc/{domain}/{k}" for k in task_keys(n))
            obs_dim = sum(SLOTS[(domain, k)][1] for k in task_keys(n))
            out.append(TaskSpec(name=n, suite=self.name, obs_dim=obs_dim, act_dim=ACT_DIMS[n], horizon=HORIZON,
                                reward_scale=REWARD_SCALE, target_return=float(HORIZON), score="normalized",
                                slots=slots))
        return out

    def make_env(self, task: TaskSpec, seed: int):
        return DMCEnv(task.name, seed, task.horizon)
