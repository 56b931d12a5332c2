"""SAC replay-buffer datasets, the data of the L2M paper's DeepMind Control tasks.

Per task a Soft Actor-Critic agent (stable-baselines3) learns from scratch, and every transition
it experienced, from its first uniformly random actions to its last near-expert ones, becomes the
task's dataset `dtune/<suite>/<task>/sac-replay-v0`, episodes in the order they happened (so the
dataset's episode returns are the agent's learning curve). The paper's buffers hold 1M steps per
task; `--steps` sets the budget (default 100K: about 26 minutes per task on one CPU core).

A run is resumable mid-training. Every `checkpoint_every` steps (rounded up to a whole episode)
the worker writes a checkpoint folder `ckpt-<steps>` into `<data root>/.work/sac-replay/<task>/`:

* `agent.safetensors`: actor, critics, target critics, entropy coefficient;
* `optim.pt`: the three Adam states and torch's RNG state (read back with
  `torch.load(weights_only=True)`: tensors and plain containers only, never pickled objects);
* `buffer.npz`: the replay buffer, `episodes.npz`: the finished episodes with their seeds;

then `state.json` beside it (counters, the numpy, Python and action-space RNG states, and the name
of the folder it goes with), atomically and last, then deletes older folders. A process killed at
any point of a save leaves the previous checkpoint whole and named by `state.json`.

Running the same command again continues from there, and the result equals an uninterrupted run:
episode seeds come from (seed, task, episode index), checkpoints fall between episodes, and every
random state SAC uses is restored (tested). When the budget is reached the dataset is written, the
final agent is stored in its `agent/` folder (safetensors + JSON) so more data can be drawn from
it, and the work folder is removed.

The random reference of the normalised score, `(R - random) / (dataset mean - random)`, is
measured here once per task: `random_episodes` episodes of uniform actions with their own fixed
seeds, stored in the dataset's metadata as `ref_min_score` (and the dataset's mean return as
`ref_max_score`). A task whose agent did not learn (its last tenth of episodes no better than
random) is flagged `sac_learned: false` in the metadata, reported by `dtune data list` and in
the return value, not hidden.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtune import __version__
from dtune.data.storage import (DatasetError, Episode, dataset_dir, dataset_status, episode_stats, read_metadata,
                                write_dataset)
from dtune.runtime.io import atomic_write_text, checkpoint_files, checkpoint_folder
from dtune.runtime.optional import quiet_legacy_gym
from dtune.runtime.seeds import episode_seed, global_rng_state, set_global_rng_state
from dtune.tasks import ensure_registered, get_suite, get_task, make_env, resolve_tasks

SOURCE = "sac-replay"
WORK = ".work"


@dataclass
class SACConfig:
    """Train one SAC agent per task and keep its whole replay buffer as the task's dataset."""

    tasks: str = "dmc16"
    """Task names or sets, comma separated (`dmc16`, `dmc10`, `walker-walk`...); continuous-action
    tasks of any suite."""
    steps: int = 100_000
    """Environment steps per task: the dataset's size, rounded up to whole episodes (the paper:
    1,000,000)."""
    seed: int = 0
    """Seed of the agent, its exploration and every episode's environment."""
    learning_starts: int = 5_000
    """Steps of uniform random actions before SAC starts learning."""
    batch_size: int = 256
    """SAC minibatch."""
    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and entropy coefficient."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Target-critic update rate."""
    hidden: int = 256
    """Width of the two hidden layers of actor and critics."""
    horizon: int | None = None
    """Episode length (unset: the task's; DMC 1000)."""
    checkpoint_every: int = 10_000
    """Steps between resumable checkpoints (rounded up to whole episodes)."""
    session_steps: int | None = None
    """Stop after this many steps per task in this invocation, leaving a checkpoint to resume
    from (unset: run to `steps`); for machines that are lent for a limited time."""
    random_episodes: int = 10
    """Episodes of uniform random actions that measure the task's random reference return."""
    source: str = SOURCE
    """Name of the dataset written (`sac-replay`; `medium-replay` with `--stop-at medium`)."""
    stop_at: str | None = None
    """Stop training early, D4RL-style, once the agent's evaluation return reaches a level: a
    level its suite defines (`medium`: Hopper 1400, HalfCheetah 4800, Walker2d 3000) or a number.
    The agent is evaluated at every checkpoint (deterministic actions, `eval_episodes` episodes
    on their own fixed seeds); the replay buffer up to then is the dataset (D4RL's
    medium-replay), `steps` the most it may take. Unset: train for `steps`."""
    eval_episodes: int = 5
    """Evaluation episodes of `stop_at`."""
    workers: int = 0
    """Parallel processes, one task each, one torch thread each; 0 = one per CPU core."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""
    overwrite: bool = False
    """Replace a finished dataset, or an unfinished run, that has other settings."""
    keep_checkpoint: bool = True
    """Keep the finished run's last checkpoint (agent, optimisers, replay state: about the
    dataset's size, in `.work/<source>/<task>` of the data root), so that a later call with a
    larger `--steps` (or another `--stop-at`) continues the run exactly instead of starting
    over, and rewrites the dataset. Delete the folder, or pass `--no-keep-checkpoint`, to save
    the space."""
    progress: bool = True
    """Show a progress bar (with the latest episode return)."""


EXTENDABLE = ("steps", "stop_at_return", "eval_episodes")
"""Settings a finished run can be continued with other values of (a larger budget, another stop)."""


def _settings(cfg: SACConfig, task: str) -> dict:
    """What identifies a task's run: a finished or unfinished run with other settings conflicts."""
    keys = ("steps", "seed", "learning_starts", "batch_size", "learning_rate", "gamma", "tau", "hidden",
            "random_episodes")
    out = {"task": task, "source": cfg.source, "horizon": get_task(task, cfg.horizon).horizon,
           **{k: getattr(cfg, k) for k in keys}}
    if cfg.stop_at is not None:
        out.update(stop_at_return=stop_return(cfg.stop_at, task), eval_episodes=cfg.eval_episodes)
    return out


def stop_return(level: str, task: str) -> float:
    """The return `level` stands for on `task`: a number, or a level its suite defines."""
    try:
        return float(level)
    except ValueError:
        pass
    spec = get_task(task)
    levels = get_suite(spec.suite).quality_returns(spec)
    if level not in levels:
        have = ", ".join(levels) or "none"
        raise ValueError(f"--stop-at {level!r}: suite {spec.suite!r} defines no such level for {task} "
                         f"(it has: {have}); give a return instead, e.g. --stop-at 1500")
    return float(levels[level])


def work_dir(root: Path, task: str, source: str = SOURCE) -> Path:
    return Path(root) / WORK / source / task


# -- the environment SAC sees -------------------------------------------------------------------
def _gym_env(task: str, seed: int, horizon: int | None, episodes: list):
    """A gymnasium env over the dtune task whose `k`-th reset uses `episode_seed(seed, task, k)`
    (k = episodes finished so far) and which records every finished episode into `episodes`."""
    import gymnasium as gym

    spec = get_task(task, horizon)
    env = make_env(task, seed=seed, horizon=spec.horizon)

    class RecordingEnv(gym.Env):
        metadata = {"render_modes": []}
        observation_space = gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (spec.act_dim,), np.float32)

        def reset(self, *, seed=None, options=None):
            self.eseed = episode_seed(seed_, task, len(episodes))
            self.obs, self.acts, self.rews, self.succ = [env.reset(self.eseed)], [], [], []
            return np.asarray(self.obs[0], np.float32), {}

        def in_episode(self) -> bool:
            return bool(getattr(self, "acts", None))

        def step(self, action):
            a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
            o, r, term, trunc, s = env.step(a)
            self.obs.append(o), self.acts.append(a), self.rews.append(r), self.succ.append(s)
            if term or trunc:
                episodes.append(Episode(np.asarray(self.obs), np.asarray(self.acts), np.asarray(self.rews),
                                        np.asarray(self.succ, bool), self.eseed, terminated=bool(term),
                                        truncated=not term))
            return np.asarray(o, np.float32), float(r), bool(term), bool(trunc), {"success": bool(s)}

    seed_ = seed
    return RecordingEnv(), spec


# -- checkpoints --------------------------------------------------------------------------------
def _save_episodes(path: Path, episodes: list[Episode]) -> None:
    lengths = np.asarray([len(e) for e in episodes], np.int64)
    arrays = {"lengths": lengths, "seeds": np.asarray([e.seed for e in episodes], np.int64),
              "terminated": np.asarray([e.terminated for e in episodes], bool)}
    if episodes:
        arrays.update(observations=np.concatenate([e.observations for e in episodes]),
                      actions=np.concatenate([e.actions for e in episodes]),
                      rewards=np.concatenate([e.rewards for e in episodes]),
                      success=np.concatenate([e.success for e in episodes]))
    _atomic_npz(path, arrays)


def _load_episodes(path: Path) -> list[Episode]:
    with np.load(path) as z:
        lengths, seeds, term = z["lengths"], z["seeds"], z["terminated"]
        if not len(lengths):
            return []
        obs, act, rew, suc = z["observations"], z["actions"], z["rewards"], z["success"]
    out, o, s = [], 0, 0
    for n, seed, t in zip(lengths, seeds, term):
        out.append(Episode(obs[o: o + n + 1], act[s: s + n], rew[s: s + n], suc[s: s + n], int(seed),
                           terminated=bool(t), truncated=not t))
        o, s = o + n + 1, s + n
    return out


def _atomic_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _agent_tensors(model) -> dict:
    tensors = {f"policy.{k}": v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    if getattr(model, "log_ent_coef", None) is not None:
        tensors["log_ent_coef"] = model.log_ent_coef.detach().cpu().contiguous()
    return tensors


def _load_agent_tensors(model, tensors: dict) -> None:
    import torch

    model.policy.load_state_dict({k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")})
    if "log_ent_coef" in tensors:
        with torch.no_grad():
            model.log_ent_coef.copy_(tensors["log_ent_coef"])


def _optimizers(model) -> dict:
    opts = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
    if getattr(model, "ent_coef_optimizer", None) is not None:
        opts["ent_coef"] = model.ent_coef_optimizer
    return opts


CHECKPOINT_FILES = ("agent.safetensors", "optim.pt", "buffer.npz", "episodes.npz")


def _save_checkpoint(wd: Path, model, episodes: list[Episode], settings: dict, wall_s: float,
                     evals: list | None = None) -> None:
    """The files of a checkpoint into a new folder `ckpt-<env steps>`, then `state.json` naming it
    (atomically, last), then older folders (and the top-level files of dtune 0.2's layout) are
    deleted (:func:`dtune.runtime.io.checkpoint_folder`)."""
    import torch
    from safetensors.torch import save_file

    rb = model.replay_buffer
    state = {
        "settings": settings, "dtune_version": __version__,
        "num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num), "episodes": len(episodes), "wall_s": wall_s,
        "evaluations": evals or [],
        "buffer_pos": int(rb.pos), "buffer_full": bool(rb.full),
        **global_rng_state(),
        "action_space_rng": model.action_space.np_random.bit_generator.state,
    }
    with checkpoint_folder(wd, str(int(model.num_timesteps)), state, CHECKPOINT_FILES) as tmp:
        save_file(_agent_tensors(model), str(tmp / "agent.safetensors"))
        opt = {name_: o.state_dict() for name_, o in _optimizers(model).items()}
        opt["torch_rng"] = torch.get_rng_state()
        torch.save(opt, tmp / "optim.pt")
        n = rb.buffer_size if rb.full else rb.pos
        _atomic_npz(tmp / "buffer.npz", {k: getattr(rb, k)[:n] for k in
                                         ("observations", "next_observations", "actions", "rewards", "dones",
                                          "timeouts")})
        _save_episodes(tmp / "episodes.npz", episodes)


def _load_checkpoint(wd: Path, model) -> tuple[list[Episode], float, list]:
    import torch
    from safetensors.torch import load_file

    state, files = checkpoint_files(wd)  # dtune 0.2: the files beside state.json
    _load_agent_tensors(model, load_file(str(files / "agent.safetensors")))
    opt = torch.load(files / "optim.pt", weights_only=True)
    for name, o in _optimizers(model).items():
        o.load_state_dict(opt[name])
    rb = model.replay_buffer
    with np.load(files / "buffer.npz") as z:
        for k in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            getattr(rb, k)[: len(z[k])] = z[k]
    rb.pos, rb.full = state["buffer_pos"], state["buffer_full"]
    model.num_timesteps, model._n_updates = state["num_timesteps"], state["n_updates"]
    model._episode_num = state["episode_num"]
    set_global_rng_state(state)
    model.action_space.np_random.bit_generator.state = state["action_space_rng"]
    torch.set_rng_state(opt["torch_rng"])
    episodes = _load_episodes(files / "episodes.npz")
    if len(episodes) != state["episodes"]:
        raise DatasetError(f"the SAC checkpoint in {wd} is inconsistent ({len(episodes)} episodes stored, "
                           f"{state['episodes']} recorded); delete the folder to start the task again")
    return episodes, float(state.get("wall_s", 0.0)), [tuple(e) for e in state.get("evaluations", [])]


def _new_agent(cfg: SACConfig, env, horizon: int):
    quiet_legacy_gym()
    from stable_baselines3 import SAC

    from stable_baselines3.common.logger import Logger

    model = SAC("MlpPolicy", env, learning_rate=cfg.learning_rate, buffer_size=cfg.steps + horizon,
                learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
                train_freq=1, gradient_steps=1, policy_kwargs={"net_arch": [cfg.hidden, cfg.hidden]},
                seed=cfg.seed, device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # else every learn() makes a /tmp/SB3-* folder
    return model


# -- one task -----------------------------------------------------------------------------------
def random_reference(task: str, episodes: int, seed: int, horizon: int | None = None) -> tuple[float, float]:
    """Mean and std of the return of uniform random actions over `episodes` fixed-seed episodes
    (seeds apart from the SAC run's: `episode_seed(seed, task + "/random-reference", i)`)."""
    spec = get_task(task, horizon)
    env = make_env(task, seed=seed, horizon=spec.horizon)
    returns = []
    for i in range(episodes):
        eseed = episode_seed(seed, f"{task}/random-reference", i)
        rng = np.random.default_rng(eseed)
        env.reset(eseed)
        total = 0.0
        for _ in range(spec.horizon):
            _, r, term, trunc, _ = env.step(rng.uniform(-1.0, 1.0, spec.act_dim))
            total += r
            if term or trunc:
                break
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def evaluate_agent_return(model, task: str, episodes: int, seed: int, horizon: int | None = None) -> float:
    """Mean return of `model`'s deterministic actions over `episodes` episodes on their own fixed
    seeds (`episode_seed(seed, task + "/eval", i)`); draws no random numbers, so a run that
    evaluates stays identical to its resumed continuation."""
    spec = get_task(task, horizon)
    env = make_env(task, seed=seed, horizon=spec.horizon)
    returns = []
    for i in range(episodes):
        obs, total = env.reset(episode_seed(seed, f"{task}/eval", i)), 0.0
        for _ in range(spec.horizon):
            action, _ = model.predict(np.asarray(obs, np.float32), deterministic=True)
            obs, r, term, trunc, _ = env.step(np.clip(action, -1.0, 1.0))
            total += r
            if term or trunc:
                break
        returns.append(total)
    return float(np.mean(returns))


def learned(returns: np.ndarray, random_mean: float, random_std: float, random_episodes: int = 1) -> tuple[bool, float]:
    """Whether the agent learned: the mean return of the last tenth of its episodes beats the random
    reference's mean (over `random_episodes` episodes of spread `random_std`) by more than 3 standard
    errors of that difference and 5% of |random|. Also returns that improvement. (Until 2026-12-05 the
    bar was 3 standard deviations of single random episodes, which on a sparse task such as
    finger-turn_easy, random 146 ± 285, lay above the best return a DMC task allows.)"""
    if not len(returns):
        return False, 0.0
    tail = np.asarray(returns[-max(1, len(returns) // 10):], np.float64)
    gain = float(tail.mean()) - random_mean
    se = np.sqrt(random_std ** 2 / max(random_episodes, 1) + (tail.var(ddof=1) if len(tail) > 1 else 0.0) / len(tail))
    return bool(gain > max(3 * se, 0.05 * abs(random_mean), 1e-6)), gain


def train_task(cfg: SACConfig, task: str, progress=None) -> dict:
    """Train (or continue) the SAC run of one task; write the dataset when its budget is reached.
    Returns a summary: `done`, `steps`, `episodes`, and for finished tasks the dataset's
    statistics, random reference and `sac_learned`."""
    import torch

    torch.set_num_threads(1)
    root = Path(cfg.data_dir)
    spec = get_task(task, cfg.horizon)
    wd = work_dir(root, task, cfg.source)
    settings = _settings(cfg, task)
    goal = settings.get("stop_at_return")
    # a finished run continued to a larger budget replaces its own dataset (decided before training:
    # afterwards its step count may pass the new budget, since runs end on whole episodes)
    extending = dataset_dir(root, task, cfg.source).exists() and _extends(root, task, cfg)
    episodes: list[Episode] = []
    env, _ = _gym_env(task, cfg.seed, cfg.horizon, episodes)
    model = _new_agent(cfg, env, spec.horizon)
    wall_before, evals = 0.0, []
    if (wd / "state.json").exists():
        restored, wall_before, evals = _load_checkpoint(wd, model)
        episodes.extend(restored)
    wd.mkdir(parents=True, exist_ok=True)
    t0, start = time.perf_counter(), int(model.num_timesteps)
    limit = cfg.steps if cfg.session_steps is None else min(cfg.steps, start + cfg.session_steps)
    reported = len(episodes)

    def report():
        nonlocal reported
        if progress is not None:
            for ep in episodes[reported:]:
                progress.put(len(ep))
                progress.info({"task": task, "episode": reported, "return": float(ep.rewards.sum())})
                reported += 1

    callback = _callback(report)
    reached = goal is not None and bool(evals) and evals[-1][1] >= goal
    while model.num_timesteps < limit and not reached:
        target = min(model.num_timesteps + cfg.checkpoint_every, limit)
        model.learn(total_timesteps=target - model.num_timesteps, reset_num_timesteps=False, callback=callback)
        while env.in_episode():  # run on to the end of the episode: checkpoints fall between episodes
            model.learn(total_timesteps=1, reset_num_timesteps=False, callback=callback)
        if goal is not None:
            evals.append((int(model.num_timesteps),
                          evaluate_agent_return(model, task, cfg.eval_episodes, cfg.seed, cfg.horizon)))
            reached = evals[-1][1] >= goal
            if progress is not None:
                progress.info({"task": task, "episode": len(episodes) - 1, "return": evals[-1][1], "eval": True})
        _save_checkpoint(wd, model, episodes, settings, wall_before + time.perf_counter() - t0, evals)
    report()
    done = model.num_timesteps >= cfg.steps or reached
    summary = {"task": task, "done": done, "steps": int(model.num_timesteps),
               "episodes": len(episodes), "steps_per_s": (model.num_timesteps - start) / max(time.perf_counter() - t0, 1e-9)}
    if not done:
        return summary
    r_mean, r_std = random_reference(task, cfg.random_episodes, cfg.seed, cfg.horizon)
    flat = {"rewards": np.concatenate([e.rewards for e in episodes]),
            "success": np.concatenate([e.success for e in episodes]),
            "lengths": np.asarray([len(e) for e in episodes])}
    stats = episode_stats(flat)
    returns = np.asarray([e.rewards.sum() for e in episodes])
    ok, gain = learned(returns, r_mean, r_std, cfg.random_episodes)
    meta = {**settings, "dtune_version": __version__, "stats": stats, "ref_min_score": r_mean,
            "ref_min_std": r_std, "ref_max_score": stats["return_mean"], "sac_learned": ok, "sac_gain": gain,
            "episodes": len(episodes), "sac_wall_s": wall_before + time.perf_counter() - t0, "algorithm": f"stable-baselines3 SAC {_sb3_version()}, one env, "
            "train_freq 1, one gradient step per env step",
            "random_reference": f"{cfg.random_episodes} episodes of uniform random actions, seeds "
                                f"episode_seed({cfg.seed}, '{task}/random-reference', i)"}
    if goal is not None:
        meta.update(evaluations=evals, stopped_early=reached,
                    stop_rule=f"evaluated every {cfg.checkpoint_every} steps ({cfg.eval_episodes} episodes, "
                              f"deterministic actions); stop once the mean return reaches {goal}")
        summary["evaluations"] = evals
    agent_dir = wd / "agent"
    _export_agent(model, agent_dir, cfg, task)
    write_dataset(root, task, cfg.source, episodes, meta, overwrite=cfg.overwrite or extending,
                  attach={"agent": agent_dir})
    shutil.rmtree(agent_dir, ignore_errors=True)
    if not cfg.keep_checkpoint:
        remove_checkpoint(root, task, cfg.source)
    return {**summary, "stats": stats, "ref_min_score": r_mean, "sac_learned": ok, "sac_gain": gain}


def remove_checkpoint(root: Path, task: str, source: str = SOURCE) -> None:
    """Delete a task's SAC checkpoint (and `.work/<source>`, `.work` once empty)."""
    wd = work_dir(root, task, source)
    shutil.rmtree(wd, ignore_errors=True)
    for parent in (wd.parent, wd.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break


def _extends(root: Path, task: str, cfg: SACConfig) -> bool:
    """Whether the kept checkpoint of a finished run continues into the run `cfg` asks for: the
    same settings but for the budget and stop rule (`EXTENDABLE`), no further than the new budget."""
    state = work_dir(root, task, cfg.source) / "state.json"
    if not state.exists():
        return False
    doc = json.loads(state.read_text())
    have, want = doc.get("settings", {}), _settings(cfg, task)
    same = all(have.get(k) == want.get(k) for k in set(have) | set(want) if k not in EXTENDABLE)
    return same and doc["num_timesteps"] <= cfg.steps


def _callback(report):
    """A stable-baselines3 callback that reports finished episodes as they come."""
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeReport(BaseCallback):
        def _on_step(self) -> bool:
            report()
            return True

    return EpisodeReport()


def _sb3_version() -> str:
    import stable_baselines3

    return stable_baselines3.__version__


def _export_agent(model, out: Path, cfg: SACConfig, task: str) -> None:
    """The final agent as `policy.safetensors` + `agent.json` (how to rebuild it)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(_agent_tensors(model), str(out / "policy.safetensors"))
    atomic_write_text(out / "agent.json", json.dumps({
        "algorithm": "SAC", "library": f"stable-baselines3 {_sb3_version()}", "task": task,
        "net_arch": [cfg.hidden, cfg.hidden], "num_timesteps": int(model.num_timesteps),
        "load": "dtune.data.sac.load_agent(<this folder>)"}, indent=2))


def load_agent(path: str | os.PathLike):
    """The SAC agent stored with a `sac-replay` dataset (its `agent/` folder): a stable-baselines3
    `SAC` whose `predict(obs, deterministic=True)` acts; weights read from safetensors only."""
    from safetensors.torch import load_file

    path = Path(path)
    info = json.loads((path / "agent.json").read_text())
    env, spec = _gym_env(info["task"], 0, None, [])
    model = _new_agent(SACConfig(hidden=info["net_arch"][0], steps=1), env, spec.horizon)
    _load_agent_tensors(model, load_file(str(path / "policy.safetensors")))
    return model


# -- all tasks ----------------------------------------------------------------------------------
def _status(cfg: SACConfig, task: str) -> str:
    """`done` (a dataset with these settings), `todo` (none, or an unfinished run with these
    settings) or `conflict` (a dataset or run with other settings)."""
    root = Path(cfg.data_dir)
    want = _settings(cfg, task)
    status = dataset_status(root, task, cfg.source, want)
    if status == "done":
        return status
    if status == "conflict":  # a finished run with its checkpoint kept may continue into this one
        return "todo" if _extends(root, task, cfg) else "conflict"
    state = work_dir(root, task, cfg.source) / "state.json"
    if state.exists() and json.loads(state.read_text()).get("settings") != want and not _extends(root, task, cfg):
        return "conflict"
    return "todo"


def _train_one(item, progress):
    cfg, task, suite = item
    ensure_registered(suite)
    return train_task(cfg, task, progress)


def collect_sac(cfg: SACConfig) -> list[dict]:
    """Train SAC on every task of `cfg` that has no finished dataset (continuing unfinished runs);
    returns one summary per task trained in this call."""
    from tqdm import tqdm

    from dtune.data.storage import data_root
    from dtune.runtime.workers import run_parallel

    cfg.data_dir = str(data_root(cfg.data_dir))
    tasks = resolve_tasks(cfg.tasks)
    for name, value in (("steps", cfg.steps), ("checkpoint_every", cfg.checkpoint_every),
                        ("batch_size", cfg.batch_size), ("hidden", cfg.hidden)):
        if value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if cfg.session_steps is not None and cfg.session_steps <= 0:
        raise ValueError(f"--session-steps must be positive, got {cfg.session_steps}")
    if cfg.stop_at is not None:
        for t in tasks:
            stop_return(cfg.stop_at, t)  # an unknown level fails here, before any work
        if cfg.eval_episodes <= 0:
            raise ValueError(f"--eval-episodes must be positive, got {cfg.eval_episodes}")
    todo = []
    for t in tasks:
        status = _status(cfg, t)
        if status == "conflict":
            if not cfg.overwrite:
                raise DatasetError(
                    f"a {cfg.source} dataset or unfinished run for {t} exists under {cfg.data_dir} with other settings; "
                    "pass --overwrite to replace it, or use another --data-dir")
            shutil.rmtree(work_dir(Path(cfg.data_dir), t, cfg.source), ignore_errors=True)
        if status != "done":
            todo.append(t)
        elif not cfg.keep_checkpoint:
            remove_checkpoint(Path(cfg.data_dir), t, cfg.source)
    if not todo:
        return []
    done_before = 0
    for t in todo:  # steps of unfinished runs: the bar starts there
        state = work_dir(Path(cfg.data_dir), t, cfg.source) / "state.json"
        done_before += json.loads(state.read_text())["num_timesteps"] if state.exists() else 0
    workers = min(len(todo), cfg.workers or os.cpu_count() or 1)
    bar = tqdm(total=len(todo) * cfg.steps, initial=done_before, unit="step", unit_scale=True,
               desc=f"SAC {len(todo)} task(s)", disable=not cfg.progress)
    latest: dict[str, str] = {}

    def on_info(info):
        kind = "eval" if info.get("eval") else f"ep {info['episode']}"
        latest[info["task"]] = f"{info['task']} {kind}: {info['return']:.0f}"
        bar.set_postfix_str(" | ".join(latest.values()), refresh=False)

    try:
        return run_parallel(_train_one, [(cfg, t, get_suite(get_task(t).suite)) for t in todo], workers,
                            on_progress=bar.update, on_info=on_info)
    finally:
        bar.close()


# -- rollouts of a stored agent (D4RL's medium and expert datasets) ------------------------------
@dataclass
class RolloutConfig:
    """Episodes of the SAC agent stored with a dataset, written as a new dataset (D4RL's
    `medium`: the early-stopped agent's own rollouts)."""

    tasks: str = "mujoco3"
    """Task names or sets, comma separated."""
    agent: str = "medium-replay"
    """Source of the dataset whose agent (its `agent/` folder) acts."""
    source: str = "medium"
    """Name of the dataset written."""
    steps: int = 200_000
    """Environment steps per task, rounded up to whole episodes (D4RL: 1,000,000)."""
    deterministic: bool = False
    """Act with the policy's mean instead of sampling it (D4RL sampled)."""
    min_return: float | None = None
    """Keep only episodes whose return exceeds this (LaMo's Reacher2d data kept returns > 20);
    `steps` then counts the kept episodes' steps. Unset: keep every episode (D4RL)."""
    seed: int = 0
    """Seed of the episodes' environments and of the action sampling."""
    horizon: int | None = None
    """Episode length (unset: the task's)."""
    workers: int = 0
    """Parallel processes, one task each; 0 = one per CPU core."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""
    overwrite: bool = False
    """Replace a dataset of that name that has other settings."""
    progress: bool = True
    """Show a progress bar."""


def _rollout_settings(cfg: RolloutConfig, task: str) -> dict:
    return {"task": task, "source": cfg.source, "agent": cfg.agent, "steps": cfg.steps,
            "deterministic": cfg.deterministic, "seed": cfg.seed, "horizon": get_task(task, cfg.horizon).horizon,
            "min_return": cfg.min_return}


def rollout_task(cfg: RolloutConfig, task: str, progress=None) -> dict:
    """Roll out the stored agent of `(task, cfg.agent)` and write the dataset `(task, cfg.source)`.
    Episode `i` uses environment seed `episode_seed(seed, task + "/rollouts", i)` and seeds torch
    with it before sampling, so a dataset does not depend on the number of workers."""
    import torch

    torch.set_num_threads(1)
    root = Path(cfg.data_dir)
    spec = get_task(task, cfg.horizon)
    agent_dir = dataset_dir(root, task, cfg.agent) / "agent"
    if not (agent_dir / "agent.json").exists():
        raise DatasetError(f"no stored agent in {agent_dir}: make the {cfg.agent} dataset of {task} with "
                           f"`dtune data sac --tasks {task} --source {cfg.agent} ...` first")
    model = load_agent(agent_dir)
    env = make_env(task, seed=cfg.seed, horizon=spec.horizon)
    episodes, steps, t0 = [], 0, time.perf_counter()
    tried, tried_steps = 0, 0
    while steps < cfg.steps:
        if cfg.min_return is not None and tried_steps >= 20 * cfg.steps:
            raise DatasetError(f"{task}: only {len(episodes)} of {tried} rolled-out episodes had a return above "
                               f"--min-return {cfg.min_return}; lower it or use a better agent")
        eseed = episode_seed(cfg.seed, f"{task}/rollouts", tried)
        tried += 1
        torch.manual_seed(eseed)
        obs = [env.reset(eseed)]
        acts, rews, succ = [], [], []
        term = False
        for _ in range(spec.horizon):
            a, _ = model.predict(np.asarray(obs[-1], np.float32), deterministic=cfg.deterministic)
            a = np.clip(np.asarray(a, np.float64), -1.0, 1.0)
            o, r, term, trunc, s = env.step(a)
            obs.append(o), acts.append(a), rews.append(r), succ.append(s)
            if term or trunc:
                break
        tried_steps += len(rews)
        if cfg.min_return is not None and not float(np.sum(rews)) > cfg.min_return:
            continue  # filtered out, as LaMo's Reacher2d data
        episodes.append(Episode(np.asarray(obs), np.asarray(acts), np.asarray(rews), np.asarray(succ, bool), eseed,
                                terminated=bool(term), truncated=not term))
        steps += len(rews)
        if progress is not None:
            progress.put(len(rews))
            progress.info({"task": task, "episode": len(episodes) - 1, "return": float(np.sum(rews))})
    flat = {"rewards": np.concatenate([e.rewards for e in episodes]),
            "success": np.concatenate([e.success for e in episodes]),
            "lengths": np.asarray([len(e) for e in episodes])}
    stats = episode_stats(flat)
    agent_meta = read_metadata(root, task, cfg.agent)["dtune"]
    meta = {**_rollout_settings(cfg, task), "dtune_version": __version__, "stats": stats,
            "ref_min_score": agent_meta.get("ref_min_score"), "ref_max_score": stats["return_mean"],
            "rollouts_of": f"the agent stored with {dataset_dir(root, task, cfg.agent).name} "
                           f"({agent_meta.get('steps')} steps of SAC)", "wall_s": time.perf_counter() - t0,
            "episodes_rolled_out": tried}
    write_dataset(root, task, cfg.source, episodes, meta, overwrite=cfg.overwrite, attach={"agent": agent_dir})
    return {"task": task, "steps": steps, "episodes": len(episodes), "stats": stats}


def _rollout_one(item, progress):
    cfg, task, suite = item
    ensure_registered(suite)
    return rollout_task(cfg, task, progress)


def collect_rollouts(cfg: RolloutConfig) -> list[dict]:
    """Rollout datasets for every task of `cfg` that has none with these settings."""
    from tqdm import tqdm

    from dtune.data.storage import data_root
    from dtune.runtime.workers import run_parallel

    cfg.data_dir = str(data_root(cfg.data_dir))
    if cfg.steps <= 0:
        raise ValueError(f"--steps must be positive, got {cfg.steps}")
    if cfg.source == cfg.agent:
        raise ValueError(f"--source {cfg.source!r} would replace the dataset that holds the agent; name it otherwise")
    todo = []
    for t in resolve_tasks(cfg.tasks):
        status = dataset_status(Path(cfg.data_dir), t, cfg.source, _rollout_settings(cfg, t))
        if status == "done":
            continue
        if status == "conflict" and not cfg.overwrite:
            raise DatasetError(f"a {cfg.source} dataset for {t} exists under {cfg.data_dir} with other settings; "
                               "pass --overwrite to replace it")
        todo.append(t)
    if not todo:
        return []
    workers = min(len(todo), cfg.workers or os.cpu_count() or 1)
    bar = tqdm(total=len(todo) * cfg.steps, unit="step", unit_scale=True, desc=f"rollouts {len(todo)} task(s)",
               disable=not cfg.progress)
    try:
        return run_parallel(_rollout_one, [(cfg, t, get_suite(get_task(t).suite)) for t in todo], workers,
                            on_progress=bar.update)
    finally:
        bar.close()
