"""Multi-task training data: memory-mapped arrays per task and a vectorised window sampler.

Loading: each dataset (task and source) is read once from its Minari file and cached as plain
``.npy`` arrays in a folder next to the datasets (``<root>/.cache``), keyed by the dataset file's
size and mtime; training opens them memory-mapped, so the data of many tasks (66 tasks x 1M
steps) need not fit in RAM: the operating system keeps the pages being read. Per task only the
episode starts are held in memory.

Layout: each task's observation goes into its slots' columns of the run's state vector (its
:class:`~dtune.tasks.InputLayout`: e.g. Meta-World dims 0-38, each DMC (domain, key) its own
slot); actions are padded to the layout's action size.

Normalisation: states are z-scored per state column with statistics of the pre-training data
(columns that are constant keep std 1; padding columns stay 0) and, with ``state_clip``, clipped to
that many standard deviations (:func:`normalise_states`), applied to each window as it is drawn.
Pass ``state_stats`` to reuse the statistics a model was trained with (adaptation to new tasks
keeps them for every column the model saw; :meth:`TrajectoryData.scale_report` says how far a new
task's states lie outside them).

Sampling: a batch is split evenly over the suites present (suites balanced); within a suite
the window's last timestep is uniform over all timesteps of its tasks, i.e. trajectories are
drawn in proportion to their length. Windows cover the K timesteps up to that one and are
left-padded (``valid`` False) at an episode's start. Returns-to-go are undiscounted and, like
rewards, divided by the task's reward scale.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtune.data.storage import (DatasetError, dataset_dir, episode_returns, read_episodes, read_metadata,
                                resolve_sources)
from dtune.tasks import InputLayout, get_task, layout_for, resolve_tasks

CACHE_VERSION = 3

STATE_CLIP = 10.0
"""Bound on z-scored states of new pre-training runs, in standard deviations (stable-baselines3's
VecNormalize bound): a feature nearly constant in the pre-training data (cartpole-balance keeps
its pole upright: sd 4e-5) cannot turn a new task's states into inputs of 10^4."""


def state_clip_value(clip: float | None, name: str = "state_clip") -> float | None:
    """A clip setting as the one value it means: a positive float, or None for no clipping (0 and
    unset alike, so that a resumed run compares them as equal); negative or NaN is refused, naming
    the setting `name` (`--state-clip` on the command line)."""
    if clip is not None and not clip >= 0:  # NaN too
        raise ValueError(f"{name} must be positive (or 0: no clipping), got {clip}")
    return float(clip) if clip else None


def normalise_states(obs: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float | None) -> np.ndarray:
    """`(obs - mean) / std` per column, clipped to `[-clip, clip]` when `clip` is set (the one
    normalisation of training windows and of evaluation rollouts). Columns without statistics
    (mean 0 and sd 1 exactly: no data of the model varied them, e.g. a suite's slots it never saw)
    have no sd to clip in and pass unclipped."""
    z = (obs - mean) / std
    if clip:
        bounded = has_statistics(mean, std)
        if bounded.all():
            np.clip(z, -clip, clip, out=z)
        else:
            z[..., bounded] = np.clip(z[..., bounded], -clip, clip)
    return z


def has_statistics(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Mask of the columns whose statistics came from data (not the placeholder mean 0, sd 1)."""
    return (mean != 0) | (std != 1)


def returns_to_go(rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go of every step of flat, back-to-back episodes (vectorised)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    ends = np.cumsum(lengths)
    csum = np.cumsum(rewards)
    ep_total_before_end = csum[ends - 1]
    ep_of = np.repeat(np.arange(len(lengths)), lengths)
    return (ep_total_before_end[ep_of] - csum + rewards).astype(np.float32)


CACHED = ("observations", "actions", "rewards", "rtg", "lengths")


def _cached_episodes(root: Path, task: str, source: str) -> tuple[dict[str, np.ndarray], dict]:
    """The dataset's flat arrays, memory-mapped from the cache (built when missing or stale), and
    its metadata: ``observations``, ``actions``, ``rewards``, ``rtg`` (raw returns-to-go), ``lengths``."""
    folder = dataset_dir(root, task, source)
    file = folder / "data" / "main_data.hdf5"
    meta = read_metadata(root, task, source)  # clear error if missing
    if not file.exists():
        raise DatasetError(f"dataset {task} ({source}) has no data file at {file}; delete {folder} and collect it again")
    st = file.stat()
    key = hashlib.sha1(f"{CACHE_VERSION}:{task}:{source}:{folder}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(root) / ".cache" / f"{task}-{source}-{key}"
    if cache.is_dir():
        try:
            return _open(cache), meta
        except (OSError, ValueError, EOFError):
            shutil.rmtree(cache, ignore_errors=True)  # a broken cache is rebuilt from the dataset
    ep = read_episodes(root, task, source)
    ep["rtg"] = returns_to_go(ep["rewards"], ep["lengths"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for k in CACHED:
        np.save(tmp / f"{k}.npy", np.ascontiguousarray(ep[k]))
    try:
        os.replace(tmp, cache)
    except OSError:  # another process (a rank of the same run) built it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not cache.is_dir():
            raise
    return _open(cache), meta


def _open(cache: Path) -> dict[str, np.ndarray]:
    """The cached arrays, memory-mapped read-only, as plain ndarray views (np.memmap's indexing
    costs more Python than the read)."""
    return {k: np.load(cache / f"{k}.npy", mmap_mode="r").view(np.ndarray) for k in CACHED}


SUBSET_RULE = "nested-floor"
"""How :func:`trajectory_subset` chooses episodes, recorded with the data statistics of a run on a
subset (`task_info[task]["data_subset"]`), so that `--resume` refuses a run whose subset was chosen
by another rule (before 2026-12-05 each ratio was drawn on its own: the subsets were not nested;
`nested-1`, until 2026-12-05 evening, kept `round(ratio * E)` episodes, one more than LaMo's code
for hopper medium at 0.5%)."""


def check_subset_rule(saved: str | None, current: str | None, out) -> None:
    """Refuse to resume the run in `out` on a data subset another rule chose (`saved`: the rule
    the run recorded, `current`: this dtune's, None for a run on all the data)."""
    if saved != current:
        raise ValueError(f"--resume: the run in {out} trained on a data subset chosen by an older rule of dtune "
                         f"({SUBSET_RULE} now: nested subsets of int(ratio x episodes)); start it again without --resume")


def is_replay_buffer(source: str) -> bool:
    """Whether a dataset source is an agent's replay buffer, its episodes in the order the agent
    collected them while it learned (`sac-replay`, `medium-replay`)."""
    return source.endswith("replay")


def check_replay_from(replay_from: float, sources: dict[str, str] | None = None) -> None:
    """Refuse a `replay_from` outside [0, 1), and one > 0 for a run none of whose datasets
    (`sources`: task -> source, when given) is a replay buffer (it would silently change nothing)."""
    if not 0.0 <= replay_from < 1.0:
        raise ValueError(f"--replay-from must be in [0, 1) (0.5: a replay buffer's second half), got {replay_from}")
    if replay_from > 0.0 and sources is not None and not any(is_replay_buffer(s) for s in sources.values()):
        listed = ", ".join(f"{t}: {s}" for t, s in list(sources.items())[:4]) + (", ..." if len(sources) > 4 else "")
        raise ValueError(f"--replay-from applies to replay buffers (sac-replay, medium-replay) and none of the run's "
                         f"datasets is one ({listed}); drop --replay-from or pick such a --source")


def later_episodes(lengths: np.ndarray, arrays: dict[str, np.ndarray], fraction: float
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The episodes from `fraction` of the way through on: the first `int(fraction * E)` of the `E`
    episodes dropped (a replay buffer's learning phase); views, nothing copied."""
    skip = int(fraction * len(lengths))
    first = int(lengths[:skip].sum())
    return lengths[skip:], {k: v[first:] for k, v in arrays.items()}


def trajectory_subset(lengths: np.ndarray, arrays: dict[str, np.ndarray], ratio: float, seed: int,
                      task: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A seeded random subset of whole trajectories, `max(1, int(ratio * E))` of the `E`
    episodes (rounded down like LaMo's code), in their original order (LaMo's low-data regime).
    One seeded order of the episodes per `(seed, task, E)`, of which a ratio keeps a prefix: the
    same seed gives the same subset in every run and process, and the subsets of one seed are
    nested (0.5% inside 1% inside 10%), so results across ratios differ by the data added, not by
    another draw. The subset's steps are copied into memory (a fraction of the task's data)."""
    from dtune.runtime.seeds import episode_seed

    e = len(lengths)
    keep = max(1, int(ratio * e))
    order = np.random.default_rng(episode_seed(seed, f"{task}/data-ratio", e)).permutation(e)
    chosen = np.sort(order[:keep])
    starts = np.cumsum(lengths) - lengths
    idx = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in chosen])
    return lengths[chosen], {k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()}


@dataclass
class TaskArrays:
    """One task's steps (memory-mapped) and where they sit: in the batch (``columns`` of the state
    vector) and in its suite's index space (``offset``)."""

    index: int  # position in TrajectoryData.tasks
    spec: object
    columns: np.ndarray  # (obs_dim,) state columns
    obs: np.ndarray  # (N, obs_dim) float32, raw
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32, raw
    rtg: np.ndarray  # (N,) float32, raw
    starts: np.ndarray  # (E,) first step of every episode
    offset: int = 0

    def __post_init__(self):
        c = self.columns
        contiguous = np.array_equal(c, np.arange(c[0], c[-1] + 1))
        self.column_slice: slice | np.ndarray = slice(int(c[0]), int(c[-1]) + 1) if contiguous else c
        """The state columns as a slice when contiguous (cheaper to fill), else the index array."""

    def __len__(self) -> int:
        return len(self.rtg)


class SuiteData:
    """The tasks of one suite; a step is addressed by its index over their steps back to back."""

    def __init__(self, name: str, tasks: list[TaskArrays]):
        self.name, self.tasks = name, tasks
        self.offsets = np.cumsum([0] + [len(t) for t in tasks])  # (T + 1,) first step of every task, then the total
        for t, off in zip(tasks, self.offsets):
            t.offset = int(off)
        self.starts = np.concatenate([t.starts + t.offset for t in tasks])  # every episode's first step, suite-wide

    def __len__(self) -> int:
        return int(self.offsets[-1])


class TrajectoryData:
    """The training data of many tasks, grouped by suite, plus per-task statistics.

    `layout`: the run's input layout (default: derived from `tasks`); `source`: which
    dataset of each task (default: the one it has; a comma-separated preference list, or a dict
    task -> source; see :func:`dtune.data.storage.resolve_sources`); `data_ratio` < 1 keeps a
    seeded random subset of each task's whole trajectories (:func:`trajectory_subset`, seed
    `ratio_seed`); `replay_from` > 0 drops that fraction of each replay buffer's first episodes
    (:func:`later_episodes`; other datasets are whole; refused when none is one). Order:
    `replay_from`, then `max_episodes`, then `data_ratio`. `task_info[task]["train_return_mean"]`
    is the mean return of the part kept (the recipes overwrite `return_mean`/`return_max` with the
    whole dataset's, the evaluation references)."""

    def __init__(self, root: str | os.PathLike, tasks: str | list[str], max_episodes: int | None = None,
                 state_stats: tuple[np.ndarray, np.ndarray] | None = None, layout: InputLayout | None = None,
                 source: str | dict[str, str] | None = None, data_ratio: float = 1.0, ratio_seed: int = 0,
                 replay_from: float = 0.0, state_clip: float | None = None):
        if not 0.0 < data_ratio <= 1.0:
            raise ValueError(f"--data-ratio must be in (0, 1], got {data_ratio}")
        check_replay_from(replay_from)
        self.root = Path(root)
        self.tasks = resolve_tasks(tasks)
        self.layout = layout or layout_for(self.tasks)
        for t in self.tasks:
            self.layout.check(get_task(t))
        self.sources = resolve_sources(self.root, self.tasks, source)  # every missing dataset in one error
        check_replay_from(replay_from, self.sources)
        self.task_info: dict[str, dict] = {}
        by_suite: dict[str, list[TaskArrays]] = {}
        self.max_timestep = 0
        for i, task in enumerate(self.tasks):
            ep, meta = _cached_episodes(self.root, task, self.sources[task])
            lengths = np.asarray(ep["lengths"])
            arrays = {k: ep[k] for k in ("observations", "actions", "rewards", "rtg")}
            later = replay_from > 0.0 and is_replay_buffer(self.sources[task])
            if later:
                lengths, arrays = later_episodes(lengths, arrays, replay_from)
            if max_episodes is not None:
                lengths = lengths[:max_episodes]
            n = int(lengths.sum())
            arrays = {k: v[:n] for k, v in arrays.items()}
            if data_ratio < 1.0:
                lengths, arrays = trajectory_subset(lengths, arrays, data_ratio, ratio_seed, task)
                n = int(lengths.sum())
            returns = episode_returns(arrays["rewards"], lengths)
            self.task_info[task] = {
                "episodes": int(len(lengths)), "steps": n, "data_ratio": data_ratio,
                **({"data_subset": SUBSET_RULE} if data_ratio < 1.0 else {}),
                **({"replay_from": replay_from} if later else {}),
                "train_return_mean": float(returns.mean()),
                "return_max": float(returns.max()), "return_mean": float(returns.mean()),
                "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score"),
                "source": self.sources[task],
            }
            spec = get_task(task)
            self.max_timestep = max(self.max_timestep, int(lengths.max()))
            by_suite.setdefault(spec.suite, []).append(TaskArrays(
                i, spec, self.layout.columns(spec), arrays["observations"], arrays["actions"], arrays["rewards"],
                arrays["rtg"], np.cumsum(lengths) - lengths))
        self.domains = [SuiteData(name, items) for name, items in by_suite.items()]
        if state_stats is None:
            state_stats = self.own_stats()
        self.state_mean = np.asarray(state_stats[0], np.float32)
        self.state_std = np.asarray(state_stats[1], np.float32)
        self.state_clip = state_clip_value(state_clip)
        self.act_dims = np.array([get_task(t).act_dim for t in self.tasks], dtype=np.int64)

    STATS_ROWS = 1 << 16
    """Rows of a task's (memory-mapped) observations read at a time for the statistics: a float64
    copy of 65,536 rows, not of the whole task (a paper-scale task of 2M x 39 would need 1.25 GB)."""

    def own_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column mean and std over every step of the tasks that fill the column (two passes,
        in float64, :attr:`STATS_ROWS` rows in memory at a time): these tasks' own statistics,
        whatever statistics the data was given."""
        dim, rows = self.layout.state_dim, self.STATS_ROWS
        count, total, sq = np.zeros(dim), np.zeros(dim), np.zeros(dim)
        tasks = [t for d in self.domains for t in d.tasks]
        for t in tasks:
            count[t.columns] += len(t)
            for lo in range(0, len(t.obs), rows):
                total[t.columns] += np.asarray(t.obs[lo: lo + rows], np.float64).sum(0)
        mean = np.divide(total, count, out=np.zeros(dim), where=count > 0)
        for t in tasks:
            for lo in range(0, len(t.obs), rows):
                sq[t.columns] += ((np.asarray(t.obs[lo: lo + rows], np.float64) - mean[t.columns]) ** 2).sum(0)
        std = np.sqrt(np.divide(sq, count, out=np.ones(dim), where=count > 0))
        std = np.where((count > 0) & (std > 1e-6), std, 1.0)
        return mean.astype(np.float32), std.astype(np.float32)

    @property
    def steps(self) -> int:
        return sum(len(d) for d in self.domains)

    SCALE_LIMIT = 10.0
    """Standard deviations beyond which :meth:`scale_report` counts a z-scored entry as out of scale."""

    def scale_report(self, column_names: list[str] | None = None, rows: int = 100_000) -> dict[str, dict]:
        """How far each task's z-scored states (before clipping) lie outside the statistics: over
        up to `rows` evenly spaced steps of its columns that have statistics (:func:`has_statistics`;
        the others are counted in `columns_without_statistics`), the largest |z|, the fraction of
        entries beyond :attr:`SCALE_LIMIT` and the column of the largest |z| (its name and sd)."""
        out = {}
        for d in self.domains:
            for t in d.tasks:
                cols = t.columns[has_statistics(self.state_mean[t.columns], self.state_std[t.columns])]
                report = {"max_abs_z": 0.0, "frac_beyond_limit": 0.0, "limit": self.SCALE_LIMIT, "worst_column": None,
                          "worst_column_std": None, "clip": self.state_clip,
                          "columns_without_statistics": int(len(t.columns) - len(cols))}
                if len(cols):
                    obs = np.asarray(t.obs[:: max(1, len(t.obs) // rows)], np.float64)[:, np.isin(t.columns, cols)]
                    a = np.abs((obs - self.state_mean[cols]) / self.state_std[cols])
                    worst = int(cols[a.max(0).argmax()])
                    report.update(max_abs_z=float(a.max()), frac_beyond_limit=float((a > self.SCALE_LIMIT).mean()),
                                  worst_column=column_names[worst] if column_names else worst,
                                  worst_column_std=float(self.state_std[worst]))
                out[t.spec.name] = report
        return out


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
        mean, std, clip = self.data.state_mean, self.data.state_std, self.data.state_clip
        out = {
            "states": np.zeros((b, k, state_dim), np.float32),
            "actions": np.zeros((b, k, act_dim), np.float32),
            "rtg": np.zeros((b, k), np.float32), "rewards": np.zeros((b, k), np.float32),
            "timesteps": np.zeros((b, k), np.int64), "valid": np.zeros((b, k), bool),
            "task_id": np.zeros(b, np.int64),
        }
        steps = np.arange(k)
        row = 0
        for dom, n in zip(doms, counts):
            end = self.rng.integers(0, len(dom), n)
            start = dom.starts[np.searchsorted(dom.starts, end, side="right") - 1]
            idx = end[:, None] - self._back[None]
            valid = idx >= start[:, None]
            idx = np.where(valid, idx, end[:, None])
            sl = slice(row, row + n)
            out["timesteps"][sl] = (idx - start[:, None]) * valid
            out["valid"][sl] = valid
            task_pos = np.searchsorted(dom.offsets, end, side="right") - 1
            order = np.argsort(task_pos, kind="stable")
            present, first = np.unique(task_pos[order], return_index=True)
            for j, sel in zip(present, np.split(order, first[1:])):
                t = dom.tasks[j]
                local, v, rows = idx[sel] - t.offset, valid[sel], row + sel
                vf = v[..., None]
                states = normalise_states(t.obs[local], mean[t.columns], std[t.columns], clip) * vf
                cols = t.column_slice
                if isinstance(cols, slice):
                    out["states"][rows, :, cols] = states
                else:
                    out["states"][np.ix_(rows, steps, cols)] = states
                out["actions"][rows, :, : t.spec.act_dim] = t.actions[local] * vf
                out["rtg"][rows] = t.rtg[local] / t.spec.reward_scale * v
                out["rewards"][rows] = t.rewards[local] / t.spec.reward_scale * v
                out["task_id"][rows] = t.index
            row += n
        out["action_mask"] = np.arange(act_dim)[None] < self.data.act_dims[out["task_id"]][:, None]
        return out
