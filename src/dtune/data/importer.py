"""Import a Minari dataset that is already on disk (D4RL's kitchen `complete`/`partial`/`mixed`,
D4RL's MuJoCo datasets, anything made with Minari's DataCollector) as dtune's dataset
`(task, source)`. Nothing is downloaded.

The dataset is found by path (its folder, or the `data/` folder inside it) or by Minari id under
`$MINARI_DATASETS_PATH` (default `~/.minari/datasets`). Observations must be flat `Box`es, or
`Dict`s with an `observation` entry (Gymnasium-Robotics' goal-conditioned envs: that entry is
kept, goals dropped); actions a `Box`. Their sizes are checked against the task's
:class:`~dtune.tasks.base.TaskSpec`. Terminations and truncations are kept as Minari stored
them (an episode whose flags fire before its last step is split there); actions outside dtune's
[-1, 1] are clipped (the fraction is recorded in the metadata). A per-step `success` info is kept
where the dataset has one (`success` or `is_success`), else success is all False. The
dataset's reference scores (`ref_min_score`, `ref_max_score`) are stored as dtune's; a suite that
declares its own references (kitchen, mujoco) still scores with those.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from dtune.data.storage import DatasetError, Episode, data_root, dataset_dir, dataset_id, episode_stats, write_dataset
from dtune.tasks import get_suite, get_task

OBS_KEY = "observation"
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _minari_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path("~/.minari/datasets").expanduser())


def find_minari_data(path_or_id: str | os.PathLike) -> Path:
    """The `data/` folder (with `metadata.json`) of a Minari dataset given by folder or id."""
    p = Path(path_or_id).expanduser()
    candidates = [p, p / "data"]
    if not p.is_absolute() and not p.exists():
        candidates += [_minari_root() / str(path_or_id), _minari_root() / str(path_or_id) / "data"]
    for c in candidates:
        if (c / "metadata.json").is_file():
            return c.resolve()
    raise DatasetError(
        f"no Minari dataset at {path_or_id!r}: give the dataset's folder (the one holding data/metadata.json) or "
        f"its id under $MINARI_DATASETS_PATH ({_minari_root()}); nothing is downloaded")


def _obs_array(obs, space, name: str) -> tuple[np.ndarray, str | None]:
    """Flat `(T, d)` observations of one episode and the dict key they came from."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        if OBS_KEY not in space.spaces:
            raise DatasetError(f"{name} has dict observations without an {OBS_KEY!r} entry (keys: "
                               f"{', '.join(space.spaces)}); dtune imports flat Box observations or that entry")
        if not isinstance(space.spaces[OBS_KEY], gym.spaces.Box):
            raise DatasetError(f"{name}'s {OBS_KEY!r} entry holds {type(space.spaces[OBS_KEY]).__name__} observations; "
                               f"dtune imports flat Box observations (or a dict's {OBS_KEY!r} Box)")
        return _obs_array(obs[OBS_KEY], space.spaces[OBS_KEY], name)[0], OBS_KEY
    if not isinstance(space, gym.spaces.Box):
        raise DatasetError(f"{name} has {type(space).__name__} observations; dtune imports flat Box observations "
                           f"(or a dict's {OBS_KEY!r} Box)")
    a = np.asarray(obs)
    return a.reshape(len(a), -1), None


def _obs_size(space) -> tuple[int, str | None]:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict) and isinstance(space.spaces.get(OBS_KEY), gym.spaces.Box):
        return int(np.prod(space.spaces[OBS_KEY].shape)), OBS_KEY
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape)), None
    return -1, None


def _success(infos: dict | None, n: int) -> np.ndarray:
    for key in ("success", "is_success"):
        if infos and key in infos and not isinstance(infos[key], dict):
            s = np.asarray(infos[key]).astype(bool).reshape(-1)
            if len(s) == n + 1:  # Minari's DataCollector also records the info of reset()
                s = s[1:]
            if len(s) == n:
                return s
    return np.zeros(n, dtype=bool)


def _split(obs: np.ndarray, act: np.ndarray, rew: np.ndarray, succ: np.ndarray, term: np.ndarray,
           trunc: np.ndarray, seed: int) -> list[Episode]:
    """One Minari episode as dtune episodes, cut after every step flagged terminal or truncated."""
    ends = sorted(set(np.flatnonzero(term | trunc).tolist()) | {len(rew) - 1})
    out, start = [], 0
    for end in ends:
        sl = slice(start, end + 1)
        terminated = bool(term[end])
        out.append(Episode(obs[start:end + 2], act[sl], rew[sl], succ[sl], seed,
                           terminated=terminated, truncated=bool(trunc[end]) and not terminated))
        start = end + 1
    return out


def import_minari(path_or_id: str | os.PathLike, task: str, source: str,
                  data_dir: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Convert the Minari dataset `path_or_id` (a folder on disk or a local Minari id) into dtune's
    dataset `(task, source)` under `data_dir` (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`).
    Returns the new dataset's folder. Raises :class:`DatasetError` (a missing dataset, sizes that
    do not match the task, an existing dataset without `overwrite`) and
    :class:`~dtune.tasks.UnknownTaskError` (an unknown task)."""
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage

    from dtune import __version__

    spec = get_task(task)
    if not SOURCE_RE.match(source) or re.search(r"-v\d+$", source):
        raise ValueError(f"source {source!r}: use a plain name such as `complete` or `partial` (letters, digits, "
                         "`-`, `_`, `.`; no version suffix: dtune adds `-v0`)")
    root = data_root(data_dir)
    if dataset_dir(root, task, source).exists() and not overwrite:
        raise DatasetError(f"dataset {dataset_id(task, source)} already exists at {dataset_dir(root, task, source)}; "
                           "pass overwrite=True (--overwrite) to replace it")
    data_path = find_minari_data(path_or_id)
    try:
        storage = MinariStorage.read(data_path)
        meta = dict(storage.metadata)
    except Exception as e:  # noqa: BLE001 -- any unreadable file: say which
        raise DatasetError(f"cannot read the Minari dataset at {data_path} ({type(e).__name__}: {e})") from e
    name = f"Minari dataset {meta.get('dataset_id', data_path)}"
    obs_space, act_space = storage.observation_space, storage.action_space
    obs_dim, key = _obs_size(obs_space)
    if obs_dim < 0:
        _obs_array(None, obs_space, name)  # raises the error naming the space
    if not isinstance(act_space, gym.spaces.Box):
        raise DatasetError(f"{name} has {type(act_space).__name__} actions; dtune's tasks have continuous (Box) actions")
    act_dim = int(np.prod(act_space.shape))
    if (obs_dim, act_dim) != (spec.obs_dim, spec.act_dim):
        what = f"its {key!r} entry" if key else "its observations"
        raise DatasetError(
            f"{name} does not fit task {task} (suite {spec.suite}): {what} have {obs_dim} dims and its actions "
            f"{act_dim}, the task has {spec.obs_dim} and {spec.act_dim}; import it as a task with those sizes")
    try:
        get_suite(spec.suite).check_import(spec, obs_space)
    except ValueError as e:
        raise DatasetError(f"{name} does not fit task {task}: {e}") from e
    n_eps = int(storage.total_episodes)
    if n_eps == 0:
        raise DatasetError(f"{name} at {data_path} has no episodes")
    seeds = [m.get("seed") for m in storage.get_episode_metadata(range(n_eps))]

    episodes: list[Episode] = []
    n_clipped = n_act = split = 0
    for ep, seed in zip(storage.get_episodes(range(n_eps)), seeds):
        rew = np.asarray(ep["rewards"], dtype=np.float64).reshape(-1)
        n = len(rew)
        if n == 0:
            continue
        obs = _obs_array(ep["observations"], obs_space, name)[0].astype(np.float32)
        act = np.asarray(ep["actions"], dtype=np.float64)
        term = np.asarray(ep["terminations"], dtype=bool).reshape(-1)
        trunc = np.asarray(ep["truncations"], dtype=bool).reshape(-1)
        if len(obs) != n + 1:
            raise DatasetError(f"{name}: episode {ep['id']} has {len(obs)} observations for {n} steps (expected {n + 1})")
        if act.shape != (n, *act_space.shape) or len(term) != n or len(trunc) != n:
            raise DatasetError(f"{name}: episode {ep['id']} has {n} rewards but actions of shape {act.shape} "
                               f"(expected {(n, *act_space.shape)}), {len(term)} terminations and {len(trunc)} "
                               "truncations; the dataset is malformed: repair or re-record that episode")
        act = act.reshape(n, -1)
        outside = np.abs(act) > 1.0
        n_clipped += int(outside.any(axis=1).sum())
        n_act += n
        act = np.clip(act, -1.0, 1.0).astype(np.float32)
        parts = _split(obs, act, rew, _success(ep.get("infos"), n), term, trunc, -1 if seed is None else int(seed))
        split += len(parts) - 1
        episodes.extend(parts)

    if not episodes:
        raise DatasetError(f"{name} at {data_path} has {n_eps} episode(s), none with a step: nothing to import")
    flat = {"rewards": np.concatenate([e.rewards for e in episodes]),
            "success": np.concatenate([e.success for e in episodes]),
            "lengths": np.asarray([len(e) for e in episodes])}
    stats = episode_stats(flat)
    stats["length_max"] = int(flat["lengths"].max())
    ref = {k: float(meta[k]) for k in ("ref_min_score", "ref_max_score") if meta.get(k) is not None}
    metadata = {
        "task": task, "source": source, "episodes": len(episodes), "dtune_version": __version__, "stats": stats,
        "imported_from": {"dataset_id": meta.get("dataset_id"), "path": str(data_path),
                          "minari_version": meta.get("minari_version"), "observation_key": key,
                          "episodes": n_eps, "episodes_split": split},
        "clipped_action_steps": n_clipped / max(n_act, 1),
        "ref_min_score": ref.get("ref_min_score"), "ref_max_score": ref.get("ref_max_score"),
    }
    return write_dataset(root, task, source, episodes, metadata, overwrite=overwrite)


__all__ = ["import_minari", "find_minari_data"]
