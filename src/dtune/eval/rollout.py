"""Batched evaluation: many environments stepped together, one batched forward per token.

All episodes of the tasks being evaluated (grouped by horizon, in chunks of ``max_envs``) run in
lock-step; at every environment step the model acts for the whole chunk at once through
:class:`dtune.models.dt.Policy` (key/value cache on by default). The return-to-go starts at the
task's target return and is decremented by every observed reward.

Scores: Meta-World = success at any step of the episode; DMC = data-normalised return
``(R - random) / (data mean - random)`` with the references of the training data (``n/a`` where
the checkpoint has none or they coincide, e.g. random-policy data).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dtune.data.collect import episode_seed
from dtune.tasks import STATE_DIM, TaskSpec, get_task, make_env, resolve_tasks


@dataclass
class EvalConfig:
    """Evaluate a checkpoint on tasks, many environments at once."""

    checkpoint: str = "runs/pretrain"
    """Run directory written by ``dtune pretrain``."""
    adapter: str | None = None
    """Adapter directory written by ``dtune adapt``, applied on top of the checkpoint."""
    tasks: str | None = None
    """Tasks or sets to evaluate (default: the adapter's tasks, else the checkpoint's training tasks)."""
    episodes: int = 10
    """Episodes per task."""
    seed: int = 1000
    """Base seed of the evaluation episodes (kept apart from the data-collection seeds)."""
    horizon: int | None = None
    """Episode length (default: each task's)."""
    target_scale: float = 1.0
    """Multiplies every task's target return."""
    use_cache: bool = True
    """Key/value cache during decoding (off = recompute the context at every forward)."""
    max_envs: int = 512
    """Environments stepped together at most."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    json: str | None = None
    """Write the results as JSON to this file."""
    progress: bool = True
    """Show a progress bar."""


def target_return(spec: TaskSpec, task_info: dict | None, scale: float = 1.0) -> float:
    """The best return in the task's training data if the checkpoint knows it, else the registry's."""
    if task_info and task_info.get("return_max") is not None:
        base = float(task_info["return_max"])
    else:
        base = spec.target_return
    return base * scale


def normalized_score(ret: float, info: dict | None) -> float | None:
    if not info or info.get("ref_min_score") is None or info.get("ref_max_score") is None:
        return None
    lo, hi = float(info["ref_min_score"]), float(info["ref_max_score"])
    if abs(hi - lo) < 1e-6 * max(1.0, abs(hi)):
        return None
    return (ret - lo) / (hi - lo)


_ENV_POOL: dict[tuple[str, int], list] = {}


def pooled_envs(specs: list[TaskSpec]) -> list:
    """One environment per spec, reused across calls in this process (building a Meta-World env
    costs about 0.1 s; evaluations during adaptation run many times). Episodes start with
    ``reset(seed)``, which re-seeds everything an episode depends on."""
    taken: dict[tuple[str, int], int] = {}
    envs = []
    for s in specs:
        key = (s.name, s.horizon)
        pool = _ENV_POOL.setdefault(key, [])
        i = taken.get(key, 0)
        if i == len(pool):
            pool.append(make_env(s.name, seed=0, horizon=s.horizon))
        envs.append(pool[i])
        taken[key] = i + 1
    return envs


def run_episodes(model, specs: list[TaskSpec], seeds: list[int], targets: list[float], use_cache: bool = True,
                 bar=None) -> dict[str, np.ndarray]:
    """Run one episode per (spec, seed, target) in lock-step. Returns per-episode ``returns``,
    ``success`` (any step), ``steps`` and the count of environment steps taken."""
    n = len(specs)
    horizon = specs[0].horizon
    if any(s.horizon != horizon for s in specs):
        raise ValueError("run_episodes needs episodes of one horizon; group tasks by horizon")
    envs = pooled_envs(specs)
    obs = [env.reset(sd) for env, sd in zip(envs, seeds)]
    policy = model.policy([s.act_dim for s in specs], use_cache=use_cache, tasks=[s.name for s in specs])
    scale = np.array([s.reward_scale for s in specs], dtype=np.float32)
    rtg = np.array(targets, dtype=np.float32) / scale
    returns, success = np.zeros(n), np.zeros(n, bool)
    alive = np.ones(n, bool)
    states = np.zeros((n, STATE_DIM), np.float32)
    slots = [np.asarray(s.state_slot) for s in specs]
    mean, std = model.state_mean.cpu().numpy(), model.state_std.cpu().numpy()
    norm = [(mean[sl], std[sl]) for sl in slots]
    env_steps = 0
    for t in range(horizon):
        for i in range(n):
            states[i, slots[i]] = (obs[i] - norm[i][0]) / norm[i][1]
        actions = policy.act(torch.from_numpy(states), torch.from_numpy(rtg), torch.full((n,), t)).cpu().numpy()
        rewards = np.zeros(n, np.float32)
        for i in np.flatnonzero(alive):
            o, r, term, trunc, succ = envs[i].step(actions[i, : specs[i].act_dim])
            obs[i], rewards[i] = o, r
            returns[i] += r
            success[i] |= succ
            env_steps += 1
            if term or trunc:
                alive[i] = False
        rtg = rtg - rewards / scale
        policy.observe(torch.from_numpy(rewards / scale))
        if bar is not None:
            bar.update(1)
        if not alive.any():
            break
    return {"returns": returns, "success": success, "env_steps": env_steps, "forwards": policy.forwards}


def evaluate(cfg: EvalConfig, model=None, config: dict | None = None) -> dict:
    """Evaluate ``cfg.checkpoint`` (or an already loaded ``model`` + ``config``)."""
    from tqdm import tqdm

    from dtune.train.pretrain import resolve_device
    from dtune.tuners import load_adapted

    device = resolve_device(cfg.device)
    adapter = None
    if model is None:
        model, config, adapter = load_adapted(cfg.checkpoint, cfg.adapter, device)
    model.eval()
    task_info = config.get("task_info", {})
    default_tasks = adapter["tasks"] if adapter else config["tasks"]
    tasks = resolve_tasks(cfg.tasks) if cfg.tasks else list(default_tasks)
    if cfg.episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {cfg.episodes}")
    jobs = []  # (spec, seed, target)
    for task in tasks:
        spec = get_task(task, cfg.horizon)
        tgt = target_return(spec, task_info.get(task), cfg.target_scale)
        jobs += [(spec, episode_seed(cfg.seed, task, e), tgt) for e in range(cfg.episodes)]
    groups: dict[int, list] = {}
    for job in jobs:
        groups.setdefault(job[0].horizon, []).append(job)
    chunks = [g[i: i + cfg.max_envs] for g in groups.values() for i in range(0, len(g), cfg.max_envs)]
    bar = tqdm(total=sum(c[0][0].horizon for c in chunks), desc="evaluate", unit="step", disable=not cfg.progress)
    per_task: dict[str, dict[str, list]] = {t: {"returns": [], "success": []} for t in tasks}
    env_steps, forwards, t0 = 0, 0, time.perf_counter()
    for chunk in chunks:
        res = run_episodes(model, [j[0] for j in chunk], [j[1] for j in chunk], [j[2] for j in chunk],
                           cfg.use_cache, bar)
        env_steps += res["env_steps"]
        forwards += res["forwards"]
        for (spec, _, _), ret, suc in zip(chunk, res["returns"], res["success"]):
            per_task[spec.name]["returns"].append(float(ret))
            per_task[spec.name]["success"].append(bool(suc))
    bar.close()
    wall = time.perf_counter() - t0
    results = {}
    for task in tasks:
        spec = get_task(task, cfg.horizon)
        rets = np.array(per_task[task]["returns"])
        if spec.score == "success":
            score = float(np.mean(per_task[task]["success"]))
        else:
            scores = [normalized_score(r, task_info.get(task)) for r in rets]
            score = None if any(s is None for s in scores) else float(np.mean(scores))
        results[task] = {
            "domain": spec.domain, "score": score, "score_kind": spec.score,
            "success_rate": float(np.mean(per_task[task]["success"])) if spec.domain == "metaworld" else None,
            "return_mean": float(rets.mean()), "return_std": float(rets.std()), "episodes": len(rets),
            "target_return": target_return(spec, task_info.get(task), cfg.target_scale),
        }
    scored = [r["score"] for r in results.values() if r["score"] is not None]
    by_domain = {}
    for dom in sorted({r["domain"] for r in results.values()}):
        vals = [r["score"] for r in results.values() if r["domain"] == dom and r["score"] is not None]
        by_domain[dom] = float(np.mean(vals)) if vals else None
    out = {
        "checkpoint": str(cfg.checkpoint), "adapter": cfg.adapter, "episodes_per_task": cfg.episodes, "seed": cfg.seed,
        "use_cache": cfg.use_cache, "mean_score": float(np.mean(scored)) if scored else None,
        "mean_score_by_domain": by_domain, "tasks": results,
        "env_steps": env_steps, "model_forwards": forwards, "wall_s": wall, "env_steps_per_s": env_steps / max(wall, 1e-9),
    }
    if cfg.json:
        path = Path(cfg.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(path)
    return out
