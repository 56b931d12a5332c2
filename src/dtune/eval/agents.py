"""The agent interface the evaluator steps, and the Decision Transformer agent.

An agent acts for a batch of environments at once, in lock-step::

    agent.start(specs, targets)          # a new episode in each of n environments
    actions = agent.act(obs, t)          # obs: n observations -> (n, >= act_dim) actions in [-1, 1]
    agent.observe(rewards)               # the rewards of that step (0 for finished episodes)
    agent.finished(done)                 # optional: which episodes have ended (a bool mask)

Everything model-specific (state layout and normalisation, return-to-go, key/value cache) stays
inside the agent, so a baseline policy (BC, CQL, IQL ...) is scored by exactly the same code.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from dtune.data.dataset import normalise_states
from dtune.runtime.device import autocast
from dtune.tasks import InputLayout, TaskSpec


class Agent(Protocol):
    def start(self, specs: list[TaskSpec], targets: list[float]) -> None: ...

    def act(self, obs: list[np.ndarray], t: int) -> np.ndarray: ...

    def observe(self, rewards: np.ndarray) -> None: ...


class DTAgent:
    """A Decision Transformer (MDDT or DT) acting through :class:`dtune.models.dt.Policy`: the
    observation goes into the task's slots of the model's input layout, z-scored with the
    model's statistics; the return-to-go starts at the target and counts down by every reward."""

    def __init__(self, model, layout: InputLayout, use_cache: bool = True, precision: str = "fp32"):
        """`precision`: `fp32`, or `bf16` (autocast; the precision CPU training uses, about twice
        as fast on CPUs with native bf16; actions may differ from fp32's where two of them nearly tie)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown evaluation precision {precision!r}; choose fp32 or bf16")
        if layout.state_dim != model.cfg.state_dim or layout.act_dim != model.cfg.act_dim:
            raise ValueError(f"layout {layout.state_dim}/{layout.act_dim} does not match the model's inputs "
                             f"{model.cfg.state_dim}/{model.cfg.act_dim}")
        self.model, self.layout, self.use_cache, self.precision = model, layout, use_cache, precision
        self.autocast = lambda: autocast(next(model.parameters()).device, precision)
        self.forwards = 0
        self.routing: dict[str, dict[int, int]] = {}
        """Routing methods (L2M, L2P): per task, how many timesteps chose each pool entry (-1: L2M's
        "no modulation" route of pre-training inputs); cleared by :meth:`reset_routing`."""
        tuner = getattr(model, "tuner", None)
        self._routes = tuner is not None and getattr(tuner, "routes", False)

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
        self.clip = self.model.cfg.state_clip
        self.active = np.ones(n, bool)

    def act(self, obs: list[np.ndarray], t: int) -> np.ndarray:
        n = len(self.specs)
        for i in range(n):
            self.states[i, self.cols[i]] = normalise_states(obs[i], *self.norm[i], self.clip)
        with self.autocast():
            actions = self.policy.act(torch.from_numpy(self.states), torch.from_numpy(self.rtg),
                                      torch.full((n,), t)).cpu().numpy()
        if self._routes:
            self._record(self.model.tuner.selection())
        return actions

    def _record(self, selection: torch.Tensor | None) -> None:
        if selection is None:
            return
        chosen = selection.reshape(len(self.specs), -1).cpu().numpy()
        for i in np.flatnonzero(self.active):
            counts = self.routing.setdefault(self.specs[i].name, {})
            for e in chosen[i]:
                counts[int(e)] = counts.get(int(e), 0) + 1

    def fork(self) -> "DTAgent":
        """A fresh agent of the same model and settings (the evaluator's overlapped stepping gives
        each env worker's environments their own)."""
        return DTAgent(self.model, self.layout, self.use_cache, self.precision)

    def merge(self, forks: list["DTAgent"]) -> None:
        """Take the forks' results as this agent's: their routing counts added to its own, their
        forwards (of this batch of episodes) as its count."""
        for fork in forks:
            for task, counts in fork.routing.items():
                mine = self.routing.setdefault(task, {})
                for e, c in counts.items():
                    mine[e] = mine.get(e, 0) + c
        self.forwards = sum(fork.forwards for fork in forks)

    def finished(self, done: np.ndarray) -> None:
        """Episodes that have ended: their steps no longer count in :attr:`routing`."""
        self.active &= ~np.asarray(done, bool)

    def reset_routing(self) -> None:
        self.routing = {}

    def observe(self, rewards: np.ndarray) -> None:
        self.rtg = self.rtg - rewards / self.scale
        with self.autocast():
            self.policy.observe(torch.from_numpy(rewards / self.scale))
        self.forwards = self.policy.forwards
