"""The in-RAM training-data loader of dtune 0.1/0.2 (every step of every task in flat per-suite
arrays), frozen here as the reference of `bench_data.py`: the memory-mapped loader of
`dtune.data.dataset` must draw the same samples for the same seed with less resident memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtune.data.dataset import returns_to_go
from dtune.data.storage import episode_returns, read_episodes, read_metadata, resolve_sources
from dtune.tasks import InputLayout, get_task, layout_for, resolve_tasks


def _cached_episodes(root, task, source):
    return read_episodes(root, task, source), read_metadata(root, task, source)


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


class InRamTrajectoryData:
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


class InRamWindowSampler:
    """Samples batches of K-timestep windows; deterministic given its seed (state is saveable)."""

    def __init__(self, data: InRamTrajectoryData, context_len: int, batch_size: int, seed: int = 0):
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
