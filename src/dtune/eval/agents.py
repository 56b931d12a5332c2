"""The agent interface the evaluator steps, and the Decision Transformer agent.

An agent acts for a batch of environments at once, in lock-step::

    agent.start(specs, targets)          # a new episode in each of n environments
    actions = agent.act(obs, t)          # obs: n observations -> (n, >= act_dim) actions in [-1, 1]
    agent.observe(rewards)               # the rewards of that step (0 for finished episodes)

Everything model-specific (state layout and normalisation, return-to-go, key/value cache) stays
inside the agent, so a baseline policy (BC, CQL, IQL ...) is scored by exactly the same code.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from dtune.tasks import InputLayout, TaskSpec


class Agent(Protocol):
    def start(self, specs: list[TaskSpec], targets: list[float]) -> None: ...

    def act(self, obs: list[np.ndarray], t: int) -> np.ndarray: ...

    def observe(self, rewards: np.ndarray) -> None: ...


class DTAgent:
    """A Decision Transformer (MDDT or DT) acting through :class:`dtune.models.dt.Policy`: the
    observation goes into the task's slots of the model's input layout, z-scored with the
    model's statistics; the return-to-go starts at the target and counts down by every reward."""

    def __init__(self, model, layout: InputLayout, use_cache: bool = True):
        if layout.state_dim != model.cfg.state_dim or layout.act_dim != model.cfg.act_dim:
            raise ValueError(f"layout {layout.state_dim}/{layout.act_dim} does not match the model's inputs "
                             f"{model.cfg.state_dim}/{model.cfg.act_dim}")
        self.model, self.layout, self.use_cache = model, layout, use_cache
        self.forwards = 0

    def start(self, specs: list[TaskSpec], targets: list[float]) -> None:
        n = len(specs)
        self.specs = specs
        self.policy = self.model.policy([s.act_dim for s in specs], use_cache=self.use_cache,
                                        tasks=[s.name for s in specs])
        self.scale = np.array([s.reward_scale for s in specs], dtype=np.float32)
        self.rtg = np.array(targets, dtype=np.float32) / self.scale
        self.states = np.zeros((n, self.layout.state_dim), np.float32)
        self.cols = [self.layout.columns(s) for s in specs]
        mean, std = self.model.state_mean.cpu().numpy(), self.model.state_std.cpu().numpy()
        self.norm = [(mean[c], std[c]) for c in self.cols]

    def act(self, obs: list[np.ndarray], t: int) -> np.ndarray:
        n = len(self.specs)
        for i in range(n):
            self.states[i, self.cols[i]] = (obs[i] - self.norm[i][0]) / self.norm[i][1]
        return self.policy.act(torch.from_numpy(self.states), torch.from_numpy(self.rtg),
                               torch.full((n,), t)).cpu().numpy()

    def observe(self, rewards: np.ndarray) -> None:
        self.rtg = self.rtg - rewards / self.scale
        self.policy.observe(torch.from_numpy(rewards / self.scale))
        self.forwards = self.policy.forwards
