"""Task registry: every task dtune knows, its domain, sizes, horizon, reward scale and score.

Names are the suites' own (``hammer-v3``, ``walker-walk``); named sets (``mt40``, ``cw10``,
``mt50``, ``dmc10``, ``dmc6``, ``dmc16``) expand to ordered task lists.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from dtune.tasks import dmc as _dmc
from dtune.tasks import metaworld as _mw


@dataclass(frozen=True)
class TaskSpec:
    """Everything the data, model and evaluation layers need to know about one task."""

    name: str
    """Task name as the suite spells it, e.g. ``hammer-v3`` or ``walker-walk``."""
    domain: str
    """Domain (``metaworld`` or ``dmc``): decides the reward scale and the state slots."""
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
    """``success`` (any-step success rate) or ``normalized`` ((R - random) / (data mean - random))."""
    state_slot: tuple[int, ...]
    """Indices in the shared padded state vector that this task's observation fills, in order."""

    def with_horizon(self, horizon: int | None) -> "TaskSpec":
        if horizon is None or horizon == self.horizon:
            return self
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        target = self.target_return * horizon / self.horizon if self.domain == "metaworld" else self.target_return
        return replace(self, horizon=horizon, target_return=target)


DOMAINS = ("metaworld", "dmc")
REWARD_SCALE = {"metaworld": 200.0, "dmc": 100.0}
STATE_DIM = _mw.OBS_DIM + _dmc.SLOT_DIM
"""Shared padded state size: Meta-World's 39 dims first, then one fixed slot per DMC (domain, key)."""
MAX_ACT_DIM = 6
"""Actions of every domain are padded to this many dimensions."""


def _build() -> dict[str, TaskSpec]:
    reg: dict[str, TaskSpec] = {}
    mw_slot = tuple(range(_mw.OBS_DIM))
    for name in _mw.MT50:
        reg[name] = TaskSpec(
            name=name, domain="metaworld", obs_dim=_mw.OBS_DIM, act_dim=_mw.ACT_DIM,
            horizon=_mw.HORIZON, reward_scale=REWARD_SCALE["metaworld"],
            target_return=_mw.MAX_REWARD * _mw.HORIZON, score="success", state_slot=mw_slot,
        )
    for name in _dmc.DMC16:
        slot = tuple(_mw.OBS_DIM + i for i in _dmc.slot_indices(name))
        reg[name] = TaskSpec(
            name=name, domain="dmc", obs_dim=len(slot), act_dim=_dmc.ACT_DIMS[name],
            horizon=_dmc.HORIZON, reward_scale=REWARD_SCALE["dmc"],
            target_return=float(_dmc.HORIZON), score="normalized", state_slot=slot,
        )
    return reg


REGISTRY: dict[str, TaskSpec] = _build()
TASK_SETS: dict[str, tuple[str, ...]] = {
    "mt40": _mw.MT40, "cw10": _mw.CW10, "mt50": _mw.MT50,
    "dmc10": _dmc.DMC10, "dmc6": _dmc.DMC6, "dmc16": _dmc.DMC16,
}


class UnknownTaskError(KeyError):
    """A task or task-set name that the registry does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return self.args[0]


def _suggest(name: str) -> str:
    candidates = list(REGISTRY) + list(TASK_SETS)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close and not name.endswith("-v3"):
        close = difflib.get_close_matches(name + "-v3", candidates, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"unknown task {name!r}.{hint} Task sets: {', '.join(TASK_SETS)}; "
            f"`dtune tasks` lists every task.")


def get_task(name: str, horizon: int | None = None) -> TaskSpec:
    """The spec of one task; ``horizon`` overrides the default episode length."""
    if name not in REGISTRY:
        raise UnknownTaskError(_suggest(name))
    return REGISTRY[name].with_horizon(horizon)


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand ``"mt40"``, ``"hammer-v3,push-v3"``, ``"cw10,dmc6"`` or a list into task names.

    Order is kept (CW10 stays in the Continual-World order); duplicates are dropped.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        names = TASK_SETS.get(part.lower()) or (get_task(part).name,)
        out.extend(n for n in names if n not in out)
    if not out:
        raise UnknownTaskError(f"no task named in {spec!r}; give task names or a set such as mt40")
    return out


__all__ = ["TaskSpec", "make_env", "REGISTRY", "TASK_SETS", "STATE_DIM", "MAX_ACT_DIM", "REWARD_SCALE",
           "UnknownTaskError", "get_task", "resolve_tasks", "DOMAINS"]


def make_env(name: str, seed: int = 0, horizon: int | None = None):
    """An environment for ``name`` with dtune's interface (see :class:`metaworld.MetaWorldEnv`)."""
    spec = get_task(name, horizon)
    cls = _mw.MetaWorldEnv if spec.domain == "metaworld" else _dmc.DMCEnv
    return cls(name, seed, spec.horizon)
