"""Task registry: the suites dtune knows (one plug-in module each) and their tasks.

Names are the suites' own (`hammer-v3`, `walker-walk`, `hopper`); named sets (`mt40`, `cw10`,
`mt50`, `dmc10`, `dmc6`, `dmc16`, `mujoco3`, `mujoco4`) expand to ordered task lists. A suite is
added by registering a :class:`~dtune.tasks.base.Suite` instance (see `dtune/tasks/base.py`); the
built-in ones are `metaworld`, `dmc`, `mujoco`, `reacher2d` (LaMo's sparse-reward arm) and
`kitchen` (Franka Kitchen, needs gymnasium-robotics only to make its environment); packages may
add more through the `dtune.suites` entry-point group (an entry point names a Suite subclass or
instance).
"""

from __future__ import annotations

import difflib

from dtune.tasks.base import SCORES, Env, Suite, TaskSpec
from dtune.tasks.dmc import DMCSuite
from dtune.tasks.kitchen import KitchenSuite
from dtune.tasks.layout import InputLayout, legacy_layout
from dtune.tasks.metaworld import MetaWorldSuite
from dtune.tasks.mujoco import MujocoSuite
from dtune.tasks.reacher2d import Reacher2dSuite

SUITES: dict[str, Suite] = {}
REGISTRY: dict[str, TaskSpec] = {}
"""Every registered task by name."""
TASK_SETS: dict[str, tuple[str, ...]] = {}
"""Every named set of every registered suite."""


class UnknownTaskError(KeyError):
    """A task, task-set or suite name that the registry does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return self.args[0]


def register_suite(suite: Suite, replace: bool = False) -> Suite:
    """Add a suite and its tasks and sets to the registry. Names must not clash with another
    suite's unless `replace` (re-registering the same suite name replaces it)."""
    if not isinstance(suite, Suite):
        suite = suite()  # a Suite subclass
    if suite.name in SUITES and not replace:
        raise ValueError(f"a suite named {suite.name!r} is registered already; pass replace=True to replace it")
    if suite.name in SUITES:
        unregister_suite(suite.name)
    tasks = suite.tasks()
    for t in tasks:
        if t.suite != suite.name:
            raise ValueError(f"task {t.name} of suite {suite.name!r} says suite={t.suite!r}")
        if t.score not in SCORES:
            raise ValueError(f"task {t.name}: unknown score {t.score!r}; choose one of {', '.join(SCORES)}")
        if t.name in REGISTRY:
            raise ValueError(f"task {t.name} of suite {suite.name!r} is already registered by suite {REGISTRY[t.name].suite!r}")
        slot_names = dict(suite.slots)
        if missing := [s for s in t.slots if s not in slot_names]:
            raise ValueError(f"task {t.name} fills slots {missing} that suite {suite.name!r} does not declare")
        if sum(slot_names[s] for s in t.slots) != t.obs_dim:
            raise ValueError(f"task {t.name}: its slots hold {sum(slot_names[s] for s in t.slots)} dims, obs_dim is {t.obs_dim}")
    for name in suite.sets:
        if name in TASK_SETS or name in SUITES:
            raise ValueError(f"task set {name!r} of suite {suite.name!r} clashes with an existing name")
    SUITES[suite.name] = suite
    REGISTRY.update({t.name: t for t in tasks})
    TASK_SETS.update({k: tuple(v) for k, v in suite.sets.items()})
    return suite


def ensure_registered(suite: Suite) -> None:
    """Register `suite` unless a suite of its name is known: what a spawned worker process does
    with a suite its parent registered at run time (not an installed plug-in)."""
    if suite.name not in SUITES:
        register_suite(suite)


def unregister_suite(name: str) -> None:
    suite = SUITES.pop(name)
    for t in [t for t, s in REGISTRY.items() if s.suite == name]:
        del REGISTRY[t]
    for k in suite.sets:
        TASK_SETS.pop(k, None)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        close = difflib.get_close_matches(name, list(SUITES), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownTaskError(f"unknown suite {name!r}.{hint} Suites: {', '.join(SUITES)}")
    return SUITES[name]


def _hint(name: str) -> str:
    candidates = list(REGISTRY) + list(TASK_SETS)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close and not name.endswith("-v3"):
        close = difflib.get_close_matches(name + "-v3", candidates, n=3, cutoff=0.6)
    return f"{name!r} (did you mean: {', '.join(close)}?)" if close else repr(name)


def _unknown(names: list[str]) -> str:
    what = "task" if len(names) == 1 else "tasks"
    return (f"unknown {what} {', '.join(_hint(n) for n in names)}. Task sets: {', '.join(TASK_SETS)}; "
            f"`dtune tasks` lists every task.")


def get_task(name: str, horizon: int | None = None) -> TaskSpec:
    """The spec of one task; `horizon` overrides the default episode length."""
    if name not in REGISTRY:
        raise UnknownTaskError(_unknown([name]))
    return REGISTRY[name].with_horizon(horizon)


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand `"mt40"`, `"hammer-v3,push-v3"`, `"cw10,dmc6"` or a list into task names.

    Order is kept (CW10 stays in the Continual-World order); duplicates are dropped. Every
    unknown name is reported at once.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    unknown: list[str] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            continue
        names = TASK_SETS.get(part.lower()) or ((part,) if part in REGISTRY else None)
        if names is None:
            unknown.append(part)
            continue
        out.extend(n for n in names if n not in out)
    if unknown:
        raise UnknownTaskError(_unknown(unknown))
    if not out:
        raise UnknownTaskError(f"no task named in {spec!r}; give task names or a set such as mt40")
    return out


def make_env(name: str, seed: int = 0, horizon: int | None = None) -> Env:
    """An environment for `name` with dtune's interface (see :class:`dtune.tasks.base.Env`)."""
    spec = get_task(name, horizon)
    return SUITES[spec.suite].make_env(spec, int(seed))


def reuse_envs(pool: dict, wanted: list[tuple[str, int]]) -> list:
    """One environment per `(task, horizon)` of `wanted`, from `pool`, a dict the caller keeps
    between calls: environments built by earlier calls are reused (episodes start with
    `reset(seed)`, which re-seeds everything an episode depends on), one call never hands out an
    environment twice, and missing ones are built with one compilation per MuJoCo model
    (:func:`dtune.tasks.mjcache.compile_once`). Environments belong to the suite object that was
    registered when they were built: those of a suite replaced since
    (`register_suite(..., replace=True)`) are dropped and built anew."""
    from dtune.tasks.mjcache import compile_once

    for key in [k for k in pool if SUITES.get(k[2].name) is not k[2]]:  # a replaced or removed suite's
        for env in pool.pop(key):
            getattr(env, "close", lambda: None)()
    taken: dict[tuple, int] = {}
    envs = []
    with compile_once():  # the environments of a task share one compilation of its MuJoCo model
        for name, horizon in wanted:
            key = (name, horizon, SUITES[get_task(name).suite])
            built = pool.setdefault(key, [])
            i = taken.get(key, 0)
            if i == len(built):
                built.append(make_env(name, seed=0, horizon=horizon))
            envs.append(built[i])
            taken[key] = i + 1
    return envs


def layout_for(tasks, scope: str = "suite") -> InputLayout:
    """The input layout of a run on `tasks` (see :class:`InputLayout`)."""
    return InputLayout.for_tasks([get_task(t) for t in resolve_tasks(tasks)], SUITES, scope)


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="dtune.suites"):
        register_suite(ep.load())


register_suite(MetaWorldSuite())
register_suite(DMCSuite())
register_suite(MujocoSuite())
register_suite(Reacher2dSuite())
register_suite(KitchenSuite())
_load_entry_points()

__all__ = ["TaskSpec", "Suite", "Env", "InputLayout", "SUITES", "REGISTRY", "TASK_SETS", "UnknownTaskError",
           "register_suite", "unregister_suite", "get_suite", "get_task", "resolve_tasks", "make_env", "reuse_envs",
           "layout_for",
           "legacy_layout"]
