"""Collect per-task trajectory datasets from any registered suite.

Two sources are built in: `random` (uniform actions in [-1, 1]) and `expert-noise`, the
suite's scripted expert (:meth:`dtune.tasks.base.Suite.expert`; Meta-World has them) with
*graded* Gaussian action noise, so that a task's
dataset spans random to expert quality like the replay buffers of the L2M paper. For `N`
episodes, episode `i` has quantile `q = (i + 0.5) / N`:

* `q < random_frac` (default 10%): uniform random actions in [-1, 1];
* otherwise `u = (q - random_frac) / (1 - random_frac)` and the expert's action gets noise
  `N(0, sigma^2)` with `sigma = min_noise + (max_noise - min_noise) * (1 - u)^2` (defaults
  0.1 and 0.3), clipped to [-1, 1]: noise falls from `max_noise` to `min_noise` and about a
  third of the episodes have `sigma < 0.125` (near-expert).

Why these defaults (measured, see results/): Meta-World's scripted experts are bang-bang
(saturated, piecewise-constant actions). Noiseless expert actions are so smooth that a sequence
model can copy the previous action instead of reading the state (the "copycat" failure; we saw
models repeat their own previous action through the expert's phase switches), hence the floor,
which also makes the data more like a SAC replay buffer, where actions are never noiseless.
Noise much above 0.3, clipped at the bounds, puts a third of the mass of every
state on each extreme bin, which the return conditioning needs far more training to untangle
(a small MDDT on drawer-close: 10% success after 1,000 steps with max_noise 1.0, 100% with 0.3).
Use `--max-noise` for a wider spread when the training budget allows.

Every episode has its own environment seed derived from (seed, task, episode), so a task's
dataset is identical whatever the number of workers. Finished tasks are skipped on re-runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtune import __version__
from dtune.data.storage import DatasetError, Episode, dataset_status, episode_stats, write_dataset
from dtune.runtime.seeds import episode_seed
from dtune.tasks import ensure_registered, get_suite, get_task, make_env, resolve_tasks

BUILTIN_SOURCES = ("expert-noise", "random")


@dataclass
class CollectConfig:
    """Collect one Minari dataset per task."""

    tasks: str = "mt40"
    """Task names or sets, comma separated (`mt40`, `cw10`, `hammer-v3,push-v3`...), of any suites."""
    episodes: int = 100
    """Episodes per task."""
    source: str | None = None
    """Data source: `expert-noise` (the suite's scripted expert with graded noise) or `random`
    (uniform actions); unset: the first source of each task's suite (Meta-World
    `expert-noise`, DMC `random`)."""
    random_frac: float = 0.1
    """Fraction of episodes with uniform random actions (`expert-noise`)."""
    max_noise: float = 0.3
    """Largest Gaussian action-noise std of the graded schedule (`expert-noise`)."""
    min_noise: float = 0.1
    """Smallest Gaussian action-noise std of the graded schedule (`expert-noise`)."""
    horizon: int | None = None
    """Episode length; default the task's (Meta-World 200, DMC 1000)."""
    seed: int = 0
    """Base seed: every episode's environment seed and noise derive from it."""
    workers: int = 0
    """Parallel processes (one task each); 0 = one per CPU core."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""
    overwrite: bool = False
    """Replace datasets that already exist with other settings."""
    progress: bool = True
    """Show a progress bar."""


def episode_noise(i: int, n: int, random_frac: float, max_noise: float, min_noise: float = 0.0) -> float | None:
    """Noise std of episode `i` of `n` in the graded schedule; `None` means random actions."""
    q = (i + 0.5) / n
    if q < random_frac:
        return None
    u = (q - random_frac) / (1.0 - random_frac)
    return float(min_noise + (max_noise - min_noise) * (1.0 - u) ** 2)


def task_source(cfg: CollectConfig, task: str) -> str:
    """The source collected for `task`: `cfg.source` or its suite's first built-in source."""
    return cfg.source or next(s for s in get_suite(get_task(task).suite).sources if s in BUILTIN_SOURCES)


def _settings(cfg: CollectConfig, task: str) -> dict:
    spec = get_task(task, cfg.horizon)
    source = task_source(cfg, task)
    s = {"task": task, "episodes": cfg.episodes, "source": source, "seed": cfg.seed, "horizon": spec.horizon}
    if source == "expert-noise":
        s.update(random_frac=cfg.random_frac, max_noise=cfg.max_noise, min_noise=cfg.min_noise)
    return s


def collect_task(cfg: CollectConfig, task: str, progress=None) -> Path:
    """Run the episodes of one task and write its dataset. `progress.put(1)` per episode."""
    spec = get_task(task, cfg.horizon)
    source = task_source(cfg, task)
    env = make_env(task, seed=cfg.seed, horizon=spec.horizon)
    expert = get_suite(spec.suite).expert(spec) if source == "expert-noise" else None
    episodes: list[Episode] = []
    random_returns: list[float] = []
    for i in range(cfg.episodes):
        eseed = episode_seed(cfg.seed, task, i)
        rng = np.random.default_rng(eseed)
        sigma = episode_noise(i, cfg.episodes, cfg.random_frac, cfg.max_noise, cfg.min_noise) if expert else None
        obs = [env.reset(eseed)]
        acts, rews, succ = [], [], []
        term = trunc = False
        for _ in range(spec.horizon):
            if sigma is None:
                a = rng.uniform(-1.0, 1.0, spec.act_dim)
            else:
                a = np.clip(expert(obs[-1]) + sigma * rng.standard_normal(spec.act_dim), -1.0, 1.0)
            o, r, term, trunc, s = env.step(a)
            obs.append(o), acts.append(a), rews.append(r), succ.append(s)
            if term or trunc:
                break
        ep = Episode(np.asarray(obs), np.asarray(acts), np.asarray(rews), np.asarray(succ), eseed,
                     terminated=bool(term), truncated=not term)
        episodes.append(ep)
        if sigma is None:
            random_returns.append(float(ep.rewards.sum()))
        if progress is not None:
            progress.put(1)
    flat = {
        "rewards": np.concatenate([e.rewards for e in episodes]),
        "success": np.concatenate([e.success for e in episodes]),
        "lengths": np.asarray([len(e) for e in episodes]),
    }
    stats = episode_stats(flat)
    meta = {
        **_settings(cfg, task), "dtune_version": __version__, "stats": stats,
        "ref_min_score": float(np.mean(random_returns)) if random_returns else None,
        "ref_max_score": stats["return_mean"],
        "noise_schedule": (
            "episode i of N, q=(i+0.5)/N: uniform random actions if q < random_frac, else expert + "
            "N(0, sigma^2) clipped to [-1, 1], sigma = min_noise + (max_noise - min_noise) * (1 - u)^2, "
            "u = (q - random_frac) / (1 - random_frac)" if source == "expert-noise" else "uniform random actions"),
    }
    return write_dataset(Path(cfg.data_dir), task, source, episodes, meta, overwrite=cfg.overwrite)


def _status(cfg: CollectConfig, task: str) -> str:
    """`todo`, `done` (same settings) or `conflict` (exists with other settings)."""
    return dataset_status(Path(cfg.data_dir), task, task_source(cfg, task), _settings(cfg, task))


def _collect_one(item, progress):
    cfg, task, suite = item
    ensure_registered(suite)
    return str(collect_task(cfg, task, progress))


def collect(cfg: CollectConfig) -> list[str]:
    """Collect every task of `cfg`; returns the tasks written (finished ones are skipped).

    Tasks run in worker processes (one task each) that exit when this process dies, even by
    `kill -9`; a dataset appears on disk only once it is complete."""
    from tqdm import tqdm

    from dtune.data.storage import data_root
    from dtune.runtime.workers import run_parallel

    cfg.data_dir = str(data_root(cfg.data_dir))
    tasks = resolve_tasks(cfg.tasks)
    if cfg.episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {cfg.episodes}")
    for t in tasks:
        spec = get_task(t, cfg.horizon)
        suite = get_suite(spec.suite)
        source = task_source(cfg, t)
        if source == "sac-replay":
            raise ValueError(f"SAC replay-buffer data is made by `dtune data sac --tasks {cfg.tasks}`, "
                             "not by `dtune data collect`")
        if source not in BUILTIN_SOURCES or source not in suite.sources:
            raise ValueError(f"no source {source!r} for {t}: suite {suite.name!r} collects "
                             f"{', '.join(s for s in suite.sources if s in BUILTIN_SOURCES)}")
    todo = []
    for t in tasks:
        status = _status(cfg, t)
        if status == "conflict" and not cfg.overwrite:
            raise DatasetError(
                f"a {task_source(cfg, t)} dataset for {t} already exists in {cfg.data_dir} with other settings; "
                f"pass --overwrite to replace it, or use another --data-dir"
            )
        if status != "done":
            todo.append(t)
    if not todo:
        return []
    workers = min(len(todo), cfg.workers or os.cpu_count() or 1)
    bar = tqdm(total=len(todo) * cfg.episodes, unit="ep", desc=f"collect {len(todo)} task(s)", disable=not cfg.progress)
    try:
        run_parallel(_collect_one, [(cfg, t, get_suite(get_task(t).suite)) for t in todo], workers,
                     on_progress=bar.update)
    finally:
        bar.close()
    return todo
