"""Input layout of a run: which state slots the model's state vector holds, and the action size.

A layout is derived from a run's tasks and stored in its config. With `scope="suite"` (the
default) it holds every slot of every suite the tasks belong to, in the suites' order, and the
largest action size of those suites, so the model can later be adapted to any task of those
suites (a Meta-World + DMC run gets the 154-dim state and 6 actions of the L2M paper; a
Meta-World-only run 39 and 4). `scope="tasks"` keeps only the slots and action size the run's
own tasks need (a Hopper-only run: exactly Hopper's sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dtune.tasks.base import Suite, TaskSpec

SCOPES = ("suite", "tasks")


@dataclass(frozen=True)
class InputLayout:
    slots: tuple[tuple[str, int], ...]
    """`(slot name, size)` in the order they sit in the state vector."""
    act_dim: int
    """Number of (padded) action dimensions."""

    @property
    def state_dim(self) -> int:
        return sum(size for _, size in self.slots)

    def _offsets(self) -> dict[str, tuple[int, int]]:
        out, pos = {}, 0
        for name, size in self.slots:
            out[name] = (pos, size)
            pos += size
        return out

    def missing(self, task: TaskSpec) -> list[str]:
        """Slots of `task` this layout lacks (empty: the task fits)."""
        offsets = self._offsets()
        return [s for s in task.slots if s not in offsets]

    def check(self, task: TaskSpec) -> None:
        """Raise a clear error if `task` does not fit this layout."""
        missing = self.missing(task)
        if missing or task.act_dim > self.act_dim:
            why = (f"its state slots {missing} are not in the model's layout" if missing else
                   f"it has {task.act_dim} action dimensions, the model {self.act_dim}")
            suites = sorted({s.split("/")[0] for s, _ in self.slots})
            raise ValueError(f"task {task.name} does not fit this model: {why} (the model's inputs cover "
                             f"suite(s) {', '.join(suites)}); pre-train with a layout that includes it")

    def columns(self, task: TaskSpec) -> np.ndarray:
        """Indices in the state vector that `task`'s observation fills, in order."""
        self.check(task)
        offsets = self._offsets()
        return np.concatenate([np.arange(offsets[s][0], offsets[s][0] + offsets[s][1]) for s in task.slots]).astype(np.int64)

    def mask(self, tasks: list[TaskSpec]) -> np.ndarray:
        """Boolean mask of the state columns any of `tasks` fills."""
        out = np.zeros(self.state_dim, bool)
        for task in tasks:
            out[self.columns(task)] = True
        return out

    def column_names(self) -> list[str]:
        """A name per state column: `slot[i]` (e.g. `dmc/cartpole/position[1]`)."""
        return [f"{name}[{i}]" for name, size in self.slots for i in range(size)]

    def to_dict(self) -> dict:
        return {"slots": [[n, s] for n, s in self.slots], "act_dim": self.act_dim}

    @classmethod
    def from_dict(cls, d: dict) -> "InputLayout":
        return cls(tuple((str(n), int(s)) for n, s in d["slots"]), int(d["act_dim"]))

    @classmethod
    def for_tasks(cls, tasks: list[TaskSpec], suites: dict[str, Suite], scope: str = "suite") -> "InputLayout":
        if scope not in SCOPES:
            raise ValueError(f"unknown layout scope {scope!r}; choose one of {', '.join(SCOPES)}")
        if not tasks:
            raise ValueError("a layout needs at least one task")
        present = [name for name in suites if any(t.suite == name for t in tasks)]
        if scope == "suite":
            slots = tuple(slot for name in present for slot in suites[name].slots)
            act = max(t.act_dim for name in present for t in suites[name].tasks())
        else:
            used = {s for t in tasks for s in t.slots}
            slots = tuple(slot for name in present for slot in suites[name].slots if slot[0] in used)
            act = max(t.act_dim for t in tasks)
        return cls(slots, act)


def legacy_layout() -> InputLayout:
    """The layout of runs made before layouts were stored: Meta-World's 39 dims, then every DMC
    slot (154 in all), 6 actions."""
    from dtune.tasks.dmc import DMCSuite
    from dtune.tasks.metaworld import MetaWorldSuite

    return InputLayout(MetaWorldSuite.slots + DMCSuite.slots, 6)
