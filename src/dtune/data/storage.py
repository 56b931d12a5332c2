"""Datasets on disk, in Minari's format.

A task can have several datasets, one per *source* (`expert-noise`, `random`, later
`sac-replay`, `medium` ...). Each is one Minari dataset with id
`dtune/<suite>/<task>/<source>-v0` under the data root, so
`MINARI_DATASETS_PATH=<root> python -c "import minari; minari.load_dataset('dtune/metaworld/hammer-v3/expert-noise-v0')"`
reads what dtune writes, and `dataset.recover_environment()` rebuilds the environment
(through `dtune.tasks.gym`). Real terminations and time-limit truncations are stored apart.
Datasets of dtune 0.1 (`dtune/<suite>/<task>-v0`, one per task) are still found and read. Datasets are built in a hidden temporary folder and renamed into place
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
LEGACY_SOURCES = {"expert": "expert-noise", "random": "random"}
"""Datasets written before sources existed (`dtune/<suite>/<task>-v0`): their `policy` -> source."""


class DatasetError(RuntimeError):
    """A dataset that is missing, incomplete or unreadable."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir` if given, else `$DTUNE_DATA_DIR`, else `~/.dtune/datasets` (absolute)."""
    root = data_dir or os.environ.get("DTUNE_DATA_DIR") or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def dataset_id(task: str, source: str) -> str:
    """Minari id `dtune/<suite>/<task>/<source>-v0`: several datasets (sources) per task."""
    return f"{NAMESPACE}/{get_task(task).suite}/{task}/{source}-v{VERSION}"


def _legacy_dir(root: Path, task: str) -> Path:
    return Path(root) / NAMESPACE / get_task(task).suite / f"{task}-v{VERSION}"


def _legacy_source(root: Path, task: str) -> str | None:
    path = _legacy_dir(root, task) / "data" / "metadata.json"
    if not path.exists():
        return None
    try:
        policy = json.loads(json.loads(path.read_text()).get("dtune", "{}")).get("policy")
    except (json.JSONDecodeError, TypeError):
        return None
    return LEGACY_SOURCES.get(policy, policy)


def dataset_dir(root: Path, task: str, source: str) -> Path:
    """Folder of the dataset; a dataset in the layout of dtune <= 0.1 (one per task) is found too."""
    path = Path(root) / dataset_id(task, source)
    if not path.exists() and _legacy_source(root, task) == source:
        return _legacy_dir(root, task)
    return path


def sources(root: Path, task: str) -> list[str]:
    """The sources with a complete dataset of `task` under `root`."""
    base = Path(root) / NAMESPACE / get_task(task).suite / task
    found = sorted(p.parent.parent.name[: -len(f"-v{VERSION}")] for p in base.glob(f"*-v{VERSION}/data/metadata.json")
                   if not p.parent.parent.name.startswith("."))
    legacy = _legacy_source(root, task)
    if legacy is not None and legacy not in found:
        found.append(legacy)
    return found


def resolve_sources(root: Path, tasks: list[str], source: str | dict[str, str] | None = None) -> dict[str, str]:
    """The source of every task's dataset: the one source a task has, or with `source` the first
    of its comma-separated sources that the task has (`expert-noise,sac-replay`: Meta-World's
    scripted data and DMC's SAC data in one run). Every task without (that) dataset is named in
    one error, with the command that makes them. A dict maps each task to its source (what a
    run recorded)."""
    root = Path(root)
    if isinstance(source, dict):  # task -> source, as a run recorded them
        missing = [t for t in tasks if source.get(t) not in sources(root, t)]
        if missing:
            raise DatasetError(f"the recorded datasets of {', '.join(f'{t} ({source.get(t)})' for t in missing)} "
                               f"are not under {root}; point --data-dir / DTUNE_DATA_DIR at the folder that has them")
        return {t: source[t] for t in tasks}
    wanted = [s.strip() for s in source.split(",") if s.strip()] if source else []
    out, missing, ambiguous = {}, [], []
    for t in tasks:
        have = sources(root, t)
        if wanted:
            hit = next((s for s in wanted if s in have), None)
            (out.__setitem__(t, hit) if hit is not None else missing.append(t))
        elif len(have) == 1:
            out[t] = have[0]
        elif not have:
            missing.append(t)
        else:
            ambiguous.append(f"{t} ({', '.join(have)})")
    if missing:
        if wanted == ["sac-replay"]:
            how = f"`dtune data sac --tasks {','.join(missing)} --data-dir {root}`"
        else:
            src = f" --source {wanted[0]}" if len(wanted) == 1 else ""
            how = f"`dtune data collect --tasks {','.join(missing)}{src} --data-dir {root}`"
        raise DatasetError(
            f"no{' ' + source if source else ''} dataset for {len(missing)} task(s) under {root}: {', '.join(missing)}. "
            f"Make them with {how}, or point --data-dir / DTUNE_DATA_DIR at the folder that has them.")
    if ambiguous:
        raise DatasetError(f"several datasets for {'; '.join(ambiguous)} under {root}: choose with --source (a "
                           "comma-separated list, e.g. `expert-noise,sac-replay`, takes per task the first it has)")
    return out


@dataclass
class Episode:
    """One episode: `observations` has one more row than `actions` (the final observation)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    success: np.ndarray
    seed: int
    terminated: bool = False
    """The episode ended in a terminal state (the environment said so)."""
    truncated: bool = True
    """The episode was cut (time limit) without reaching a terminal state."""

    def __len__(self) -> int:
        return len(self.rewards)


def _env_spec(task: str, horizon: int | None = None):
    """The gymnasium EnvSpec Minari stores, so `recover_environment()` can rebuild the env."""
    from gymnasium.envs.registration import EnvSpec

    from dtune.tasks import get_suite, gym as dtune_gym

    spec = get_task(task, horizon)
    g = get_suite(spec.suite).gym_spec(spec)
    if g is None:
        return None
    dtune_gym.register()
    return EnvSpec(id="dtune/Task-v0", entry_point=g["entry_point"], kwargs=g.get("kwargs", {}),
                   max_episode_steps=g.get("max_episode_steps"))


def write_dataset(root: Path, task: str, source: str, episodes: list[Episode], metadata: dict,
                  overwrite: bool = False, attach: dict[str, Path] | None = None) -> Path:
    """Write `episodes` as the Minari dataset `(task, source)`, atomically. Returns its folder.
    `attach` maps folder names to folders copied into the dataset's folder beside `data/` (the
    agent that produced it), within the same atomic write."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    spec = get_task(task)
    root = Path(root).resolve()  # Minari's HDF5 storage needs absolute paths
    final = root / dataset_id(task, source)
    legacy = _legacy_dir(root, task) if _legacy_source(root, task) == source else None
    if (final.exists() or legacy is not None) and not overwrite:
        raise DatasetError(f"dataset {dataset_id(task, source)} already exists at {dataset_dir(root, task, source)}; "
                           "pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "data").mkdir(parents=True)
        storage = MinariStorage.new(
            tmp / "data",
            observation_space=gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32),
            action_space=gym.spaces.Box(-1.0, 1.0, (spec.act_dim,), np.float32),
            env_spec=_env_spec(task, metadata.get("horizon")),
        )
        buffers = []
        for i, ep in enumerate(episodes):
            n = len(ep)
            last = np.zeros(n, dtype=bool)
            last[-1] = True
            buffers.append(EpisodeBuffer(
                id=i, seed=int(ep.seed),
                observations=ep.observations.astype(np.float32),
                actions=ep.actions.astype(np.float32),
                rewards=ep.rewards.astype(np.float64),
                terminations=last & ep.terminated,
                truncations=last & (ep.truncated and not ep.terminated),
                infos={"success": ep.success.astype(bool)},
            ))
        storage.update_episodes(buffers)
        storage.update_metadata({
            "dataset_id": dataset_id(task, source),
            "minari_version": minari.__version__,
            "algorithm_name": source,
            "author": {"dtune"},
            "dtune": json.dumps({**metadata, "source": source}),
            **({"ref_min_score": float(metadata["ref_min_score"])} if metadata.get("ref_min_score") is not None else {}),
            **({"ref_max_score": float(metadata["ref_max_score"])} if metadata.get("ref_max_score") is not None else {}),
        })
        for name, src in (attach or {}).items():
            shutil.copytree(src, tmp / name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if legacy is not None and legacy.exists():  # replaced by the new layout
            shutil.rmtree(legacy)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_metadata(root: Path, task: str, source: str) -> dict:
    """Minari metadata of the dataset, with dtune's own block decoded under `dtune`."""
    path = dataset_dir(root, task, source) / "data" / "metadata.json"
    if not path.exists():
        resolve_sources(root, [task], source)  # raises the error that names the collect command
        raise DatasetError(f"no dataset at {path}")
    try:
        meta = json.loads(path.read_text())
        meta["dtune"] = json.loads(meta.get("dtune", "{}"))
    except (json.JSONDecodeError, TypeError) as e:
        raise DatasetError(f"dataset {dataset_id(task, source)} has unreadable metadata ({path}: {e}); delete the folder and collect again") from e
    return meta


def dataset_status(root: Path, task: str, source: str, settings: dict) -> str:
    """`todo` (no such dataset), `done` (it exists and its metadata has every one of `settings`)
    or `conflict` (it exists with other settings, or its metadata is unreadable): what the
    collectors check before making a dataset again."""
    if not dataset_dir(root, task, source).exists():
        return "todo"
    try:
        meta = read_metadata(root, task, source)["dtune"]
    except DatasetError:
        return "conflict"
    meta = {**meta, "source": source}  # datasets of dtune 0.1 stored the policy, not the source
    return "done" if all(meta.get(k) == v for k, v in settings.items()) else "conflict"


def read_episodes(root: Path, task: str, source: str) -> dict[str, np.ndarray]:
    """All episodes of a dataset as flat arrays (final observations dropped).

    Returns `observations (N, obs_dim)`, `actions (N, act_dim)`, `rewards (N,)`,
    `success (N,)`, `terminals (N,)` (True at a step that ended in a terminal state) and
    `lengths (E,)`, episodes in id order.
    """
    import h5py

    spec = get_task(task)
    meta = read_metadata(root, task, source)
    file = dataset_dir(root, task, source) / "data" / "main_data.hdf5"
    obs, act, rew, suc, term, lengths = [], [], [], [], [], []
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
                term.append(g["terminations"][()].astype(bool) if "terminations" in g else np.zeros(len(r), bool))
                suc.append(g["infos/success"][()] if "infos" in g and "success" in g["infos"] else np.zeros(len(r), bool))
    except (OSError, KeyError) as e:
        raise DatasetError(
            f"dataset {dataset_id(task, source)} at {file} is corrupt or incomplete ({type(e).__name__}: {e}); "
            f"delete {dataset_dir(root, task, source)} and collect it again"
        ) from e
    out = {
        "observations": np.concatenate(obs).astype(np.float32),
        "actions": np.concatenate(act).astype(np.float32),
        "rewards": np.concatenate(rew).astype(np.float32),
        "success": np.concatenate(suc).astype(bool),
        "terminals": np.concatenate(term).astype(bool),
        "lengths": np.asarray(lengths, dtype=np.int64),
    }
    if out["observations"].shape[1] != spec.obs_dim or out["actions"].shape[1] != spec.act_dim:
        raise DatasetError(
            f"dataset {dataset_id(task, source)} has observation/action sizes {out['observations'].shape[1]}/"
            f"{out['actions'].shape[1]}, but task {task} has {spec.obs_dim}/{spec.act_dim}; collect it again"
        )
    return out


def list_datasets(root: Path) -> list[tuple[str, str]]:
    """`(task, source)` of every complete dataset under `root` (tasks of registered suites)."""
    from dtune.tasks import REGISTRY

    base = Path(root) / NAMESPACE
    if not base.exists():
        return []
    found = set()
    for meta in base.glob(f"*/*/*-v{VERSION}/data/metadata.json"):
        task, source = meta.parent.parent.parent.name, meta.parent.parent.name.rsplit("-v", 1)[0]
        if task in REGISTRY and not source.startswith("."):  # hidden: a dataset being written
            found.add((task, source))
    for meta in base.glob(f"*/*-v{VERSION}/data/metadata.json"):
        task = meta.parent.parent.name[: -len(f"-v{VERSION}")]
        if task in REGISTRY and (src := _legacy_source(root, task)) is not None:
            found.add((task, src))
    return sorted(found)


def episode_returns(rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted return of each of the back-to-back episodes in flat `rewards`."""
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
