"""Collect per-task trajectory datasets.

Meta-World: the suite's scripted expert with *graded* Gaussian action noise, so that a task's
dataset spans random to expert quality like the replay buffers of the L2M paper. For ``N``
episodes, episode ``i`` has quantile ``q = (i + 0.5) / N``:

* ``q < random_frac`` (default 10%): uniform random actions in [-1, 1];
* otherwise ``u = (q - random_frac) / (1 - random_frac)`` and the expert's action gets noise
  ``N(0, sigma^2)`` with ``sigma = min_noise + (max_noise - min_noise) * (1 - u)^2`` (defaults
  0.1 and 0.3), clipped to [-1, 1]: noise falls from ``max_noise`` to ``min_noise`` and about a
  third of the episodes have ``sigma < 0.125`` (near-expert).

Why these defaults (measured, see results/): Meta-World's scripted experts are bang-bang
(saturated, piecewise-constant actions). Noiseless expert actions are so smooth that a sequence
model can copy the previous action instead of reading the state (the "copycat" failure; we saw
models repeat their own previous action through the expert's phase switches), hence the floor,
which also makes the data more like a SAC replay buffer, where actions are never noiseless.
Noise much above 0.3, clipped at the bounds, puts a third of the mass of every
state on each extreme bin, which the return conditioning needs far more training to untangle
(a small MDDT on drawer-close: 10% success after 1,000 steps with max_noise 1.0, 100% with 0.3).
Use ``--max-noise`` for a wider spread when the training budget allows.

DMC: uniform random actions only for now (SAC experts come with the DMC-at-scale work).
Every episode has its own environment seed derived from (seed, task, episode), so a task's
dataset is identical whatever the number of workers. Finished tasks are skipped on re-runs.
"""

from __future__ import annotations

import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtune import __version__
from dtune.data.storage import DatasetError, Episode, dataset_dir, episode_stats, read_metadata, write_dataset
from dtune.tasks import get_task, make_env, resolve_tasks

POLICIES = ("expert", "random")


@dataclass
class CollectConfig:
    """Collect one Minari dataset per task."""

    suite: str = "metaworld"
    """Suite of the tasks (``metaworld`` or ``dmc``): only a check that --tasks belong to it."""
    tasks: str = "mt40"
    """Task names or sets, comma separated (``mt40``, ``cw10``, ``hammer-v3,push-v3``...)."""
    episodes: int = 100
    """Episodes per task."""
    policy: str = "expert"
    """``expert`` (scripted expert with graded noise; Meta-World only) or ``random``."""
    random_frac: float = 0.1
    """Fraction of episodes with uniform random actions (expert policy)."""
    max_noise: float = 0.3
    """Largest Gaussian action-noise std of the graded schedule (expert policy)."""
    min_noise: float = 0.1
    """Smallest Gaussian action-noise std of the graded schedule (expert policy)."""
    horizon: int | None = None
    """Episode length; default the task's (Meta-World 200, DMC 1000)."""
    seed: int = 0
    """Base seed: every episode's environment seed and noise derive from it."""
    workers: int = 0
    """Parallel processes (one task each); 0 = one per CPU core."""
    data_dir: str | None = None
    """Data root (default ``$DTUNE_DATA_DIR`` or ``~/.dtune/datasets``)."""
    overwrite: bool = False
    """Replace datasets that already exist with other settings."""


def episode_noise(i: int, n: int, random_frac: float, max_noise: float, min_noise: float = 0.0) -> float | None:
    """Noise std of episode ``i`` of ``n`` in the graded schedule; ``None`` means random actions."""
    q = (i + 0.5) / n
    if q < random_frac:
        return None
    u = (q - random_frac) / (1.0 - random_frac)
    return float(min_noise + (max_noise - min_noise) * (1.0 - u) ** 2)


def episode_seed(seed: int, task: str, i: int) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), i]).generate_state(1)[0])


def _settings(cfg: CollectConfig, task: str) -> dict:
    spec = get_task(task, cfg.horizon)
    s = {"task": task, "episodes": cfg.episodes, "policy": cfg.policy, "seed": cfg.seed, "horizon": spec.horizon}
    if cfg.policy == "expert":
        s.update(random_frac=cfg.random_frac, max_noise=cfg.max_noise, min_noise=cfg.min_noise)
    return s


def collect_task(cfg: CollectConfig, task: str, progress=None) -> Path:
    """Run the episodes of one task and write its dataset. ``progress.put(1)`` per episode."""
    spec = get_task(task, cfg.horizon)
    env = make_env(task, seed=cfg.seed, horizon=spec.horizon)
    expert = None
    if cfg.policy == "expert":
        from dtune.tasks.metaworld import expert_policy

        expert = expert_policy(task)
    episodes: list[Episode] = []
    random_returns: list[float] = []
    for i in range(cfg.episodes):
        eseed = episode_seed(cfg.seed, task, i)
        rng = np.random.default_rng(eseed)
        sigma = episode_noise(i, cfg.episodes, cfg.random_frac, cfg.max_noise, cfg.min_noise) if expert else None
        obs = [env.reset(eseed)]
        acts, rews, succ = [], [], []
        for _ in range(spec.horizon):
            if sigma is None:
                a = rng.uniform(-1.0, 1.0, spec.act_dim)
            else:
                a = np.clip(expert(obs[-1]) + sigma * rng.standard_normal(spec.act_dim), -1.0, 1.0)
            o, r, term, trunc, s = env.step(a)
            obs.append(o), acts.append(a), rews.append(r), succ.append(s)
            if term or trunc:
                break
        ep = Episode(np.asarray(obs), np.asarray(acts), np.asarray(rews), np.asarray(succ), eseed, truncated=not term)
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
            "u = (q - random_frac) / (1 - random_frac)" if cfg.policy == "expert" else "uniform random actions"),
    }
    return write_dataset(Path(cfg.data_dir), task, episodes, meta, overwrite=cfg.overwrite)


def _status(cfg: CollectConfig, task: str) -> str:
    """``todo``, ``done`` (same settings) or ``conflict`` (exists with other settings)."""
    if not dataset_dir(Path(cfg.data_dir), task).exists():
        return "todo"
    try:
        meta = read_metadata(Path(cfg.data_dir), task)["dtune"]
    except DatasetError:
        return "conflict"
    same = all(meta.get(k) == v for k, v in _settings(cfg, task).items())
    return "done" if same else "conflict"


def collect(cfg: CollectConfig, show_progress: bool = True) -> list[str]:
    """Collect every task of ``cfg``; returns the tasks written (finished ones are skipped)."""
    from tqdm import tqdm

    from dtune.data.storage import data_root

    cfg.data_dir = str(data_root(cfg.data_dir))
    tasks = resolve_tasks(cfg.tasks)
    if cfg.policy not in POLICIES:
        raise ValueError(f"unknown policy {cfg.policy!r}; choose one of {', '.join(POLICIES)}")
    if cfg.episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {cfg.episodes}")
    for t in tasks:
        spec = get_task(t, cfg.horizon)
        if cfg.suite and spec.domain != cfg.suite:
            raise ValueError(f"task {t} belongs to suite {spec.domain!r}, not --suite {cfg.suite!r}")
        if cfg.policy == "expert" and spec.domain != "metaworld":
            raise ValueError(f"no scripted expert for {t}: use --policy random for {spec.domain} tasks")
    todo = []
    for t in tasks:
        status = _status(cfg, t)
        if status == "conflict" and not cfg.overwrite:
            raise DatasetError(
                f"a dataset for {t} already exists in {cfg.data_dir} with other settings; "
                f"pass --overwrite to replace it, or use another --data-dir"
            )
        if status != "done":
            todo.append(t)
    if not todo:
        return []
    workers = min(len(todo), cfg.workers or os.cpu_count() or 1)
    total = len(todo) * cfg.episodes
    bar = tqdm(total=total, unit="ep", desc=f"collect {len(todo)} task(s)", disable=not show_progress)
    if workers == 1:
        class _Tick:
            def put(self, n):
                bar.update(n)
        for t in todo:
            collect_task(cfg, t, _Tick())
    else:
        import multiprocessing as mp

        with mp.Manager() as manager, ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            queue = manager.Queue()
            futures = {pool.submit(collect_task, cfg, t, queue): t for t in todo}
            pending = set(futures)
            while pending:
                done = {f for f in pending if f.done()}
                for f in done:
                    f.result()  # re-raise worker errors
                pending -= done
                while not queue.empty():
                    bar.update(queue.get())
                if pending:
                    time.sleep(0.1)
            while not queue.empty():
                bar.update(queue.get())
    bar.close()
    return todo
