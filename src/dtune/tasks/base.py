"""What a suite plug-in declares: its tasks, named sets, state slots, environments, behaviour
policies, reward scale, score definition and reference returns.

A suite is one module that subclasses :class:`Suite` and calls
:func:`dtune.tasks.register_suite` with an instance (the built-in `metaworld` and `dmc`
modules do so when `dtune.tasks` is imported; installed packages can add suites through the
`dtune.suites` entry-point group). Nothing else in dtune names a suite: data collection,
training, evaluation and the reports only talk to this interface.

Environments have dtune's small interface (:class:`Env`): `reset(seed) -> obs` and
`step(action) -> (obs, reward, terminated, truncated, success)`; actions lie in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Protocol

import numpy as np

SCORES = ("success", "normalized")


class Env(Protocol):
    def reset(self, seed: int) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, bool]: ...


@dataclass(frozen=True)
class TaskSpec:
    """Everything the data, model and evaluation layers need to know about one task."""

    name: str
    """Task name as the suite spells it, e.g. `hammer-v3` or `walker-walk`."""
    suite: str
    """Name of the suite that declares the task."""
    obs_dim: int
    """Size of the flat observation the environment returns."""
    act_dim: int
    """Number of action dimensions (all in [-1, 1])."""
    horizon: int
    """Episode length in steps."""
    reward_scale: float
    """Returns and rewards are divided by this before they enter the model."""
    target_return: float
    """Default return-to-go at the first evaluation step (raw, unscaled)."""
    score: str
    """`success` (any-step success rate) or `normalized` ((R - ref_min) / (ref_max - ref_min))."""
    slots: tuple[str, ...]
    """Names of the suite's state slots that this task's observation fills, in order."""
    ref_min_score: float | None = None
    """Reference return of a random policy (D4RL-style); None: taken from the training data."""
    ref_max_score: float | None = None
    """Reference return of an expert; None: the training data's mean return."""
    scale_target_with_horizon: bool = False
    """Whether a shorter or longer horizon scales the default target return (per-step rewards)."""
    target_returns: tuple[float, ...] = ()
    """Target returns of the suite's evaluation protocol when it has several (the DT and LaMo
    papers evaluate D4RL tasks at 3-4 targets), the standard one (`target_return`) first."""

    @property
    def domain(self) -> str:
        """The suite's name (the column "domain" of evaluation tables)."""
        return self.suite

    def with_horizon(self, horizon: int | None) -> "TaskSpec":
        if horizon is None or horizon == self.horizon:
            return self
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        f = horizon / self.horizon if self.scale_target_with_horizon else 1.0
        return replace(self, horizon=horizon, target_return=self.target_return * f,
                       target_returns=tuple(t * f for t in self.target_returns))


class Suite:
    """Base class of a suite plug-in. Subclasses set the class attributes and implement
    :meth:`make_env` (and :meth:`expert` where the suite has scripted experts)."""

    name: ClassVar[str]
    """Short name (`metaworld`), also the dataset namespace `dtune/<name>/...`."""
    slots: ClassVar[tuple[tuple[str, int], ...]]
    """Every state slot of the suite, `(name, size)`, in the order they are laid out. A run's
    input layout holds every slot of the suites of its tasks, so a model pre-trained on some
    tasks of a suite can be adapted to the others."""
    sets: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Named task sets (`mt40`), ordered."""
    sources: ClassVar[tuple[str, ...]] = ("random",)
    """Data sources this suite's tasks can have: `random` (uniform actions) and `expert-noise`
    (the suite's scripted expert with graded noise) from `dtune data collect --source`, whose
    default is the first of them here; `sac-replay` (a SAC agent's whole replay buffer) from
    `dtune data sac`."""

    def tasks(self) -> list[TaskSpec]:
        raise NotImplementedError

    def make_env(self, task: TaskSpec, seed: int) -> Env:
        """A fresh environment for `task` (`task.horizon` steps per episode)."""
        raise NotImplementedError

    def expert(self, task: TaskSpec) -> Callable[[np.ndarray], np.ndarray] | None:
        """A scripted expert `obs -> action` for the `expert-noise` source, if the suite has one."""
        return None

    def quality_returns(self, task: TaskSpec) -> dict[str, float]:
        """Returns that name data-quality levels of `task` (D4RL's `medium`: the return at which
        the behaviour agent's training stops), for `dtune data sac --stop-at LEVEL`."""
        return {}

    def check_import(self, task: TaskSpec, observation_space) -> None:
        """Raise `ValueError` (saying why and what to do) when a dataset recorded with
        `observation_space` (a gymnasium space) does not belong to `task` although its sizes fit,
        e.g. a goal-conditioned dataset whose goals are another task's. The default accepts it."""

    def gym_spec(self, task: TaskSpec) -> dict | None:
        """How Minari's `recover_environment` can rebuild the environment of a dataset. The
        default wraps :meth:`make_env` in a gymnasium env (`dtune.tasks.gym`), which works
        wherever dtune and the suite are installed; return None to store no spec."""
        return {"entry_point": "dtune.tasks.gym:DtuneEnv", "kwargs": {"task": task.name, "horizon": task.horizon},
                "max_episode_steps": task.horizon}


__all__ = ["Env", "TaskSpec", "Suite", "SCORES"]
