"""Multi-task training data: a flat cache per task and a vectorised context-window sampler.

Loading: each task's Minari dataset is read once and cached as one flat `.npz` next to the
datasets (`<root>/.cache`), keyed by the dataset file's size and mtime. Tasks of one suite are
concatenated into flat arrays; each task's observation goes into its slots' columns of the run's
state vector (its :class:`~dtune.tasks.InputLayout`: e.g. Meta-World dims 0-38, each DMC
(domain, key) its own slot); actions are padded to the layout's action size.

Normalisation: states are z-scored per state column with statistics of the pre-training data
(columns that are constant keep std 1; padding columns stay 0). Pass `state_stats` to reuse the
statistics a model was trained with (adaptation to new tasks must not change them).

Sampling: a batch is split evenly over the suites present (suites balanced); within a suite
the window's last timestep is uniform over all timesteps, i.e. trajectories are drawn in
proportion to their length. Windows cover the K timesteps up to that one and are left-padded
(`valid` False) at an episode's start. Returns-to-go are undiscounted and, like rewards,
divided by the task's reward scale.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtune.data.storage import (DatasetError, dataset_dir, episode_returns, read_episodes, read_metadata,
                                resolve_sources)
from dtune.tasks import InputLayout, get_task, layout_for, resolve_tasks

CACHE_VERSION = 2


def returns_to_go(rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go of every step of flat, back-to-back episodes (vectorised)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    ends = np.cumsum(lengths)
    csum = np.cumsum(rewards)
    ep_total_before_end = csum[ends - 1]
    ep_of = np.repeat(np.arange(len(lengths)), lengths)
    return (ep_total_before_end[ep_of] - csum + rewards).astype(np.float32)


def _cached_episodes(root: Path, task: str, source: str) -> tuple[dict[str, np.ndarray], dict]:
    """The dataset's flat episode arrays (from the cache when it is current) and its metadata."""
    folder = dataset_dir(root, task, source)
    file = folder / "data" / "main_data.hdf5"
    meta = read_metadata(root, task, source)  # clear error if missing
    if not file.exists():
        raise DatasetError(f"dataset {task} ({source}) has no data file at {file}; delete {folder} and collect it again")
    st = file.stat()
    key = hashlib.sha1(f"{CACHE_VERSION}:{task}:{source}:{folder}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(root) / ".cache" / f"{task}-{key}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                return {k: z[k] for k in z.files}, meta
        except (OSError, ValueError, EOFError):
            cache.unlink(missing_ok=True)  # a broken cache is rebuilt from the dataset
    ep = read_episodes(root, task, source)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **ep)
    os.replace(tmp, cache)
    return ep, meta


@dataclass
class DomainData:
    """Flat arrays of every step of every episode of one suite's tasks."""

    name: str
    columns: np.ndarray  # (W,) state columns this suite's tasks fill
    obs: np.ndarray  # (N, W) float32
    actions: np.ndarray  # (N, act_dim of the layout) float32, zero-padded
    rtg: np.ndarray  # (N,) scaled
    rewards: np.ndarray  # (N,) scaled
    timesteps: np.ndarray  # (N,) int64
    ep_start: np.ndarray  # (N,) index of the step's episode start
    task_id: np.ndarray  # (N,) int16 index into TrajectoryData.tasks
    filled: np.ndarray | None = None  # (N, W) which columns a step really has (None: all)

    def __len__(self) -> int:
        return len(self.rtg)


class TrajectoryData:
    """The training data of many tasks, grouped by suite, plus per-task statistics.

    `layout`: the run's input layout (default: derived from `tasks`); `source`: which
    dataset of each task (default: the one it has; see :func:`dtune.data.storage.resolve_sources`)."""

    def __init__(self, root: str | os.PathLike, tasks: str | list[str], max_episodes: int | None = None,
                 state_stats: tuple[np.ndarray, np.ndarray] | None = None, layout: InputLayout | None = None,
                 source: str | None = None):
        self.root = Path(root)
        self.tasks = resolve_tasks(tasks)
        self.layout = layout or layout_for(self.tasks)
        for t in self.tasks:
            self.layout.check(get_task(t))
        self.sources = resolve_sources(self.root, self.tasks, source)  # every missing dataset in one error
        self.task_info: dict[str, dict] = {}
        by_domain: dict[str, list[tuple[int, str, dict]]] = {}
        for i, task in enumerate(self.tasks):
            ep, meta = _cached_episodes(self.root, task, self.sources[task])
            if max_episodes is not None:
                ep = _first_episodes(ep, max_episodes)
            returns = episode_returns(ep["rewards"], ep["lengths"])
            self.task_info[task] = {
                "episodes": int(len(ep["lengths"])), "steps": int(ep["lengths"].sum()),
                "return_max": float(returns.max()), "return_mean": float(returns.mean()),
                "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score"),
                "source": self.sources[task],
            }
            by_domain.setdefault(get_task(task).suite, []).append((i, task, ep))
        self.domains = [self._domain(name, items) for name, items in by_domain.items()]
        if state_stats is None:
            state_stats = self._compute_stats()
        self.state_mean = np.asarray(state_stats[0], np.float32)
        self.state_std = np.asarray(state_stats[1], np.float32)
        for d in self.domains:
            d.obs -= self.state_mean[d.columns]
            d.obs /= self.state_std[d.columns]
        self.act_dims = np.array([get_task(t).act_dim for t in self.tasks], dtype=np.int64)

    def _compute_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column mean and std over every step of the tasks that fill the column."""
        mean, std = np.zeros(self.layout.state_dim, np.float64), np.ones(self.layout.state_dim, np.float64)
        for d in self.domains:
            for j, c in enumerate(d.columns):
                col = d.obs[:, j][d.filled[:, j]] if d.filled is not None else d.obs[:, j]
                mean[c] = col.mean(dtype=np.float64)
                sd = col.std(dtype=np.float64)
                std[c] = sd if sd > 1e-6 else 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    def _domain(self, name: str, items) -> DomainData:
        task_cols = {t: self.layout.columns(get_task(t)) for _, t, _ in items}
        columns = np.array(sorted({int(c) for cols in task_cols.values() for c in cols}), dtype=np.int64)
        col_pos = {c: j for j, c in enumerate(columns)}
        n = sum(int(ep["lengths"].sum()) for _, _, ep in items)
        obs = np.zeros((n, len(columns)), np.float32)
        actions = np.zeros((n, self.layout.act_dim), np.float32)
        rtg, rewards = np.zeros(n, np.float32), np.zeros(n, np.float32)
        timesteps, ep_start = np.zeros(n, np.int64), np.zeros(n, np.int64)
        task_id = np.zeros(n, np.int16)
        uniform = all(np.array_equal(task_cols[t], columns) for _, t, _ in items)
        filled = None if uniform else np.zeros((n, len(columns)), bool)
        pos = 0
        for i, task, ep in items:
            spec = get_task(task)
            lengths = ep["lengths"]
            m = int(lengths.sum())
            sl = slice(pos, pos + m)
            cols = [col_pos[int(c)] for c in task_cols[task]]
            obs[sl][:, cols] = ep["observations"]
            if filled is not None:
                filled[sl][:, cols] = True
            actions[sl, : spec.act_dim] = ep["actions"]
            rewards[sl] = ep["rewards"] / spec.reward_scale
            rtg[sl] = returns_to_go(ep["rewards"], lengths) / spec.reward_scale
            starts = np.cumsum(lengths) - lengths
            ep_start[sl] = pos + np.repeat(starts, lengths)
            timesteps[sl] = np.arange(m) - np.repeat(starts, lengths)
            task_id[sl] = i
            pos += m
        return DomainData(name, columns, obs, actions, rtg, rewards, timesteps, ep_start, task_id, filled)

    @property
    def steps(self) -> int:
        return sum(len(d) for d in self.domains)


def _first_episodes(ep: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    lengths = ep["lengths"][:n]
    m = int(lengths.sum())
    return {**{k: v[:m] for k, v in ep.items() if k != "lengths"}, "lengths": lengths}


class WindowSampler:
    """Samples batches of K-timestep windows; deterministic given its seed (state is saveable)."""

    def __init__(self, data: TrajectoryData, context_len: int, batch_size: int, seed: int = 0):
        if batch_size < len(data.domains):
            raise ValueError(f"batch_size {batch_size} is smaller than the number of suites ({len(data.domains)})")
        self.data, self.k, self.batch_size = data, int(context_len), int(batch_size)
        self.rng = np.random.default_rng(seed)
        self._back = np.arange(self.k - 1, -1, -1)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict):
        self.rng.bit_generator.state = state

    def sample(self) -> dict[str, np.ndarray]:
        b, k, doms = self.batch_size, self.k, self.data.domains
        counts = np.full(len(doms), b // len(doms))
        counts[: b - counts.sum()] += 1
        state_dim, act_dim = self.data.layout.state_dim, self.data.layout.act_dim
        out = {
            "states": np.zeros((b, k, state_dim), np.float32),
            "actions": np.zeros((b, k, act_dim), np.float32),
            "rtg": np.zeros((b, k), np.float32), "rewards": np.zeros((b, k), np.float32),
            "timesteps": np.zeros((b, k), np.int64), "valid": np.zeros((b, k), bool),
            "task_id": np.zeros(b, np.int64),
        }
        row = 0
        for dom, n in zip(doms, counts):
            end = self.rng.integers(0, len(dom), n)
            idx = end[:, None] - self._back[None]
            valid = idx >= dom.ep_start[end][:, None]
            idx = np.where(valid, idx, end[:, None])
            sl = slice(row, row + n)
            vf = valid[..., None]
            states = dom.obs[idx] * vf
            if dom.filled is not None:
                states *= dom.filled[idx]
            out["states"][sl][..., dom.columns] = states
            out["actions"][sl] = dom.actions[idx] * vf
            out["rtg"][sl] = dom.rtg[idx] * valid
            out["rewards"][sl] = dom.rewards[idx] * valid
            out["timesteps"][sl] = dom.timesteps[idx] * valid
            out["valid"][sl] = valid
            out["task_id"][sl] = dom.task_id[end]
            row += n
        out["action_mask"] = np.arange(act_dim)[None] < self.data.act_dims[out["task_id"]][:, None]
        return out
