"""Datasets on disk, in Minari's format.

Each task is one Minari dataset with id ``dtune/<domain>/<task>-v0`` under the data root, so
``MINARI_DATASETS_PATH=<root> python -c "import minari; minari.load_dataset('dtune/metaworld/hammer-v3-v0')"``
reads what dtune writes. Datasets are built in a hidden temporary folder and renamed into place
only when complete: an interrupted write never leaves a folder that looks like a dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtune.tasks import get_task

NAMESPACE = "dtune"
VERSION = 0
DEFAULT_ROOT = Path("~/.dtune/datasets")


class DatasetError(RuntimeError):
    """A dataset that is missing, incomplete or unreadable."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$DTUNE_DATA_DIR``, else ``~/.dtune/datasets``."""
    root = data_dir or os.environ.get("DTUNE_DATA_DIR") or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def dataset_id(task: str) -> str:
    return f"{NAMESPACE}/{get_task(task).domain}/{task}-v{VERSION}"


def dataset_dir(root: Path, task: str) -> Path:
    return Path(root) / dataset_id(task)


@dataclass
class Episode:
    """One episode: ``observations`` has one more row than ``actions`` (the final observation)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    success: np.ndarray
    seed: int
    truncated: bool = True

    def __len__(self) -> int:
        return len(self.rewards)


def write_dataset(root: Path, task: str, episodes: list[Episode], metadata: dict, overwrite: bool = False) -> Path:
    """Write ``episodes`` as the Minari dataset of ``task``, atomically. Returns its folder."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    spec = get_task(task)
    final = dataset_dir(Path(root).resolve(), task)  # Minari's HDF5 storage needs absolute paths
    if final.exists() and not overwrite:
        raise DatasetError(f"dataset {dataset_id(task)} already exists at {final}; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "data").mkdir(parents=True)
        storage = MinariStorage.new(
            tmp / "data",
            observation_space=gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32),
            action_space=gym.spaces.Box(-1.0, 1.0, (spec.act_dim,), np.float32),
        )
        buffers = []
        for i, ep in enumerate(episodes):
            n = len(ep)
            buffers.append(EpisodeBuffer(
                id=i, seed=int(ep.seed),
                observations=ep.observations.astype(np.float32),
                actions=ep.actions.astype(np.float32),
                rewards=ep.rewards.astype(np.float64),
                terminations=np.zeros(n, dtype=bool),
                truncations=np.r_[np.zeros(n - 1, dtype=bool), ep.truncated],
                infos={"success": ep.success.astype(bool)},
            ))
        storage.update_episodes(buffers)
        storage.update_metadata({
            "dataset_id": dataset_id(task),
            "minari_version": minari.__version__,
            "algorithm_name": str(metadata.get("policy", "")),
            "author": {"dtune"},
            "dtune": json.dumps(metadata),
            **({"ref_min_score": float(metadata["ref_min_score"])} if metadata.get("ref_min_score") is not None else {}),
            **({"ref_max_score": float(metadata["ref_max_score"])} if metadata.get("ref_max_score") is not None else {}),
        })
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_metadata(root: Path, task: str) -> dict:
    """Minari metadata of the task's dataset, with dtune's own block decoded under ``dtune``."""
    path = dataset_dir(root, task) / "data" / "metadata.json"
    if not path.exists():
        raise DatasetError(
            f"no dataset for {task!r} under {Path(root)} (looked for {path}). Collect it with "
            f"`dtune data collect --tasks {task} --data-dir {root}` or point --data-dir / DTUNE_DATA_DIR at it."
        )
    try:
        meta = json.loads(path.read_text())
        meta["dtune"] = json.loads(meta.get("dtune", "{}"))
    except (json.JSONDecodeError, TypeError) as e:
        raise DatasetError(f"dataset {dataset_id(task)} has unreadable metadata ({path}: {e}); delete the folder and collect again") from e
    return meta


def read_episodes(root: Path, task: str) -> dict[str, np.ndarray]:
    """All episodes of a task as flat arrays (final observations dropped).

    Returns ``observations (N, obs_dim)``, ``actions (N, act_dim)``, ``rewards (N,)``,
    ``success (N,)`` and ``lengths (E,)``, episodes in id order.
    """
    import h5py

    spec = get_task(task)
    meta = read_metadata(root, task)
    file = dataset_dir(root, task) / "data" / "main_data.hdf5"
    obs, act, rew, suc, lengths = [], [], [], [], []
    try:
        with h5py.File(file, "r") as f:
            n_eps = int(meta["total_episodes"])
            for i in range(n_eps):
                g = f[f"episode_{i}"]
                r = g["rewards"][()]
                rew.append(r)
                lengths.append(len(r))
                obs.append(g["observations"][: len(r)])
                act.append(g["actions"][()])
                suc.append(g["infos/success"][()] if "infos" in g and "success" in g["infos"] else np.zeros(len(r), bool))
    except (OSError, KeyError) as e:
        raise DatasetError(
            f"dataset {dataset_id(task)} at {file} is corrupt or incomplete ({type(e).__name__}: {e}); "
            f"delete {dataset_dir(root, task)} and collect it again"
        ) from e
    out = {
        "observations": np.concatenate(obs).astype(np.float32),
        "actions": np.concatenate(act).astype(np.float32),
        "rewards": np.concatenate(rew).astype(np.float32),
        "success": np.concatenate(suc).astype(bool),
        "lengths": np.asarray(lengths, dtype=np.int64),
    }
    if out["observations"].shape[1] != spec.obs_dim or out["actions"].shape[1] != spec.act_dim:
        raise DatasetError(
            f"dataset {dataset_id(task)} has observation/action sizes {out['observations'].shape[1]}/"
            f"{out['actions'].shape[1]}, but task {task} has {spec.obs_dim}/{spec.act_dim}; collect it again"
        )
    return out


def list_datasets(root: Path) -> list[str]:
    """Task names that have a complete dataset under ``root``."""
    base = Path(root) / NAMESPACE
    if not base.exists():
        return []
    tasks = []
    for meta in sorted(base.glob(f"*/*-v{VERSION}/data/metadata.json")):
        tasks.append(meta.parent.parent.name[: -len(f"-v{VERSION}")])
    return tasks


def episode_returns(rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted return of each of the back-to-back episodes in flat ``rewards``."""
    if not len(lengths):
        return np.zeros(0)
    return np.add.reduceat(np.asarray(rewards, dtype=np.float64), np.cumsum(lengths) - lengths)


def episode_stats(ep: dict[str, np.ndarray]) -> dict[str, float]:
    """Episode count, steps, return and any-step success statistics of flat episode arrays."""
    lengths = ep["lengths"]
    returns = episode_returns(ep["rewards"], lengths)
    success = np.logical_or.reduceat(ep["success"], np.cumsum(lengths) - lengths) if len(lengths) else np.zeros(0, bool)
    return {
        "episodes": int(len(lengths)),
        "steps": int(lengths.sum()),
        "return_mean": float(returns.mean()) if len(returns) else 0.0,
        "return_std": float(returns.std()) if len(returns) else 0.0,
        "return_min": float(returns.min()) if len(returns) else 0.0,
        "return_max": float(returns.max()) if len(returns) else 0.0,
        "success_rate": float(success.mean()) if len(success) else 0.0,
    }
