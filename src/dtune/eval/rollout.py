"""Batched evaluation: many environments stepped together, one batched agent call per step.

All episodes of the tasks being evaluated (grouped by horizon, in chunks of `max_envs`) run in
lock-step; at every environment step the agent (:mod:`dtune.eval.agents`) acts for the whole
chunk at once. Scores per task follow the task's suite (:mod:`dtune.eval.scores`).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from dtune.eval.agents import Agent
from dtune.eval.scores import target_return, task_score, undefined_reason
from dtune.runtime.seeds import episode_seed
from dtune.tasks import TaskSpec, get_task, resolve_tasks, reuse_envs

_ENV_POOL: dict[tuple, list] = {}


def pooled_envs(specs: list[TaskSpec]) -> list:
    """One environment per spec, reused across calls in this process (building a Meta-World env
    costs about 0.15 s, most of it compiling its MuJoCo model, done once per task and call;
    evaluations during adaptation run many times): :func:`dtune.tasks.reuse_envs`."""
    return reuse_envs(_ENV_POOL, [(s.name, s.horizon) for s in specs])


def run_episodes(agent: Agent, specs: list[TaskSpec], seeds: list[int], targets: list[float], bar=None,
                 env_workers: int = 0, overlap: bool = False) -> dict:
    """Run one episode per (spec, seed, target) in lock-step. Returns per-episode `returns`,
    `success` (any step) and the count of environment steps taken.

    `env_workers` > 0 steps the environments in that many worker processes
    (:func:`dtune.eval.vecenv.shared_vecenv`, kept for later calls); the results are identical
    to the in-process path (0). With two or more workers and an agent that can `fork` (a fresh
    agent of the same policy), `overlap` gives each worker's environments their own agent and
    runs the policy for one worker's environments while the others step
    (:func:`_run_overlapped`): for machines with cores to spare beside the workers (on 2 cores it
    was x1.05 faster than lock-step with one torch thread, x0.96 with two)."""
    n = len(specs)
    horizon = specs[0].horizon
    if any(s.horizon != horizon for s in specs):
        raise ValueError("run_episodes needs episodes of one horizon; group tasks by horizon")
    if env_workers < 0:
        raise ValueError(f"env_workers must be >= 0, got {env_workers}")
    if env_workers:
        from dtune.eval.vecenv import shared_vecenv

        venv = shared_vecenv(specs, env_workers)
        obs = venv.reset(seeds)
        if overlap and env_workers >= 2 and hasattr(agent, "fork"):
            return _run_overlapped(agent, venv, obs, specs, targets, bar)
    else:
        envs = pooled_envs(specs)
        obs = [env.reset(sd) for env, sd in zip(envs, seeds)]
    agent.start(specs, targets)
    returns, success = np.zeros(n), np.zeros(n, bool)
    alive = np.ones(n, bool)
    env_steps = 0
    for t in range(horizon):
        actions = agent.act(obs, t)
        rewards = np.zeros(n, np.float32)
        if env_workers:
            obs, *step = venv.step(actions, alive)
            live = np.flatnonzero(alive)
            rewards[live] = step[0][live]  # float64 -> float32 as the in-process path's assignment
            env_steps += _tally(live, *step, returns, success, alive)
        else:
            for i in np.flatnonzero(alive):
                o, r, term, trunc, succ = envs[i].step(actions[i, : specs[i].act_dim])
                obs[i], rewards[i] = o, r
                returns[i] += r
                success[i] |= succ
                env_steps += 1
                if term or trunc:
                    alive[i] = False
        agent.observe(rewards)
        if hasattr(agent, "finished"):
            agent.finished(~alive)
        if bar is not None:
            bar.update(1)
        if not alive.any():
            break
    return {"returns": returns, "success": success, "env_steps": env_steps}


def _tally(live, rew, term, trunc, succ, returns, success, alive) -> int:
    """Book one VecEnv step of the envs `live` (those stepped): returns, success, episodes that
    ended; the count of env steps."""
    returns[live] += rew[live]
    success[live] |= succ[live]
    alive[live[term[live] | trunc[live]]] = False
    return len(live)


def _run_overlapped(agent, venv, obs: list, specs: list[TaskSpec], targets: list[float], bar) -> dict:
    """:func:`run_episodes` with one forked agent per env worker: the policy acts for one worker's
    environments while the other workers step theirs, so the model and the environments share the
    cores instead of taking turns. Each environment sees the same observations, actions and
    rewards as in lock-step, in the same order (the results are identical as long as the policy's
    actions for an environment do not depend on the batch it is computed in, true of dtune's
    models, tested). The forks' routing counts and forward counts are merged into `agent`."""
    n = len(specs)
    worker_of = [w for w in range(venv.workers) if len(venv.envs_of(w))]
    groups = [venv.envs_of(w) for w in worker_of]
    forks = [agent.fork() for _ in groups]
    for fork, idx in zip(forks, groups):
        fork.start([specs[i] for i in idx], [targets[i] for i in idx])
    returns, success, alive = np.zeros(n), np.zeros(n, bool), np.ones(n, bool)
    actions = np.zeros((n, max(s.act_dim for s in specs)), np.float32)
    env_steps, pending = 0, None  # pending: the group whose step is in flight

    def finish(g: int) -> None:
        nonlocal env_steps
        o, *step = venv.step_wait()
        idx = groups[g]
        was = alive[idx]
        for i in idx:
            obs[i] = o[i]
        live = idx[was]
        rewards = np.zeros(len(idx), np.float32)
        rewards[was] = step[0][live]  # float64 -> float32 as in lock-step
        env_steps += _tally(live, *step, returns, success, alive)
        forks[g].observe(rewards)
        if hasattr(forks[g], "finished"):
            forks[g].finished(~alive[idx])

    try:
        for t in range(specs[0].horizon):
            for g, idx in enumerate(groups):
                if pending == g:  # no other group in flight to overlap with
                    pending = None
                    finish(g)
                if not alive[idx].any():
                    continue
                a = forks[g].act([obs[i] for i in idx], t)
                w = min(a.shape[1], actions.shape[1])  # at least the act_dim of each of the group's envs
                actions[idx, :w] = a[:, :w]
                if pending is not None:
                    g_done, pending = pending, None
                    finish(g_done)
                venv.step_async(actions, alive, workers=[worker_of[g]])
                pending = g
            if bar is not None:
                bar.update(1)
            if pending is None and not alive.any():
                break
        if pending is not None:
            g_done, pending = pending, None
            finish(g_done)
    except BaseException:
        if pending is not None:  # a step still in flight: collect it, so the shared workers stay in step
            venv.step_wait()
        raise
    if hasattr(agent, "merge"):
        agent.merge(forks)
    return {"returns": returns, "success": success, "env_steps": env_steps}


def evaluate_agent(agent: Agent, tasks, episodes: int = 10, seed: int = 1000, horizon: int | None = None,
                   task_info: dict | None = None, target_scale: float = 1.0, max_envs: int = 512,
                   progress: bool = True, desc: str = "evaluate", env_workers: int = 0,
                   targets: dict[str, float] | None = None, overlap: bool = False) -> dict:
    """Score `agent` on `tasks`: per task the suite's score, mean and std of returns; the mean
    score over the tasks whose score is defined (`scored_tasks` of them; the others carry a
    `score_note` saying why) and per suite; env steps and speed. `env_workers` > 0 steps the
    environments in that many worker processes (same results; see :func:`run_episodes`).
    `targets` gives raw target returns per task (unset: :func:`dtune.eval.scores.target_return`);
    `overlap`: see :func:`run_episodes`."""
    from tqdm import tqdm

    task_info = task_info or {}
    tasks = resolve_tasks(tasks)
    if episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    jobs, task_targets = [], {}  # jobs: (spec, seed, target)
    for task in tasks:
        spec = get_task(task, horizon)
        tgt = targets[task] if targets and task in targets else target_return(spec, task_info.get(task), target_scale)
        task_targets[task] = tgt
        jobs += [(spec, episode_seed(seed, task, e), tgt) for e in range(episodes)]
    groups: dict[int, list] = {}
    for job in jobs:
        groups.setdefault(job[0].horizon, []).append(job)
    chunks = [g[i: i + max_envs] for g in groups.values() for i in range(0, len(g), max_envs)]
    bar = tqdm(total=sum(c[0][0].horizon for c in chunks), desc=desc, unit="step", disable=not progress)
    per_task: dict[str, dict[str, list]] = {t: {"returns": [], "success": []} for t in tasks}
    env_steps, t0 = 0, time.perf_counter()
    if hasattr(agent, "reset_routing"):
        agent.reset_routing()
    for chunk in chunks:
        res = run_episodes(agent, [j[0] for j in chunk], [j[1] for j in chunk], [j[2] for j in chunk], bar,
                           env_workers, overlap)
        env_steps += res["env_steps"]
        for (spec, _, _), ret, suc in zip(chunk, res["returns"], res["success"]):
            per_task[spec.name]["returns"].append(float(ret))
            per_task[spec.name]["success"].append(bool(suc))
    bar.close()
    wall = time.perf_counter() - t0
    results, extra = {}, {}
    for task in tasks:
        spec = get_task(task, horizon)
        rets = np.array(per_task[task]["returns"])
        results[task] = {
            "domain": spec.suite, "score": task_score(spec, rets, np.array(per_task[task]["success"]), task_info.get(task)),
            "score_kind": spec.score,
            "success_rate": float(np.mean(per_task[task]["success"])) if spec.score == "success" else None,
            "return_mean": float(rets.mean()), "return_std": float(rets.std()), "episodes": len(rets),
            "target_return": task_targets[task],
        }
        if results[task]["score"] is None:
            results[task]["score_note"] = undefined_reason(spec, task_info.get(task)) or "undefined score"
        elif spec.score == "normalized" and (task_info.get(task) or {}).get("behaviour_learned") is False:
            results[task]["score_caveat"] = ("the agent that made its data did not learn the task, so the data mean is "
                                             "close to the random reference and the score divides by a small gap")
        data_horizon = (task_info.get(task) or {}).get("horizon")
        if spec.score == "normalized" and data_horizon is not None and int(data_horizon) != spec.horizon:
            results[task]["horizon_note"] = (f"evaluated over {spec.horizon} steps, but its data's episodes (the score's "
                                             f"references and target) run {int(data_horizon)}")
    mismatched = [t for t in tasks if "horizon_note" in results[t]]
    if mismatched:
        warnings.warn(f"{', '.join(mismatched)}: the evaluation horizon differs from the one of the data the normalised "
                      "score is measured against, so the scores are biased (drop --horizon to use each task's own)",
                      stacklevel=2)
    scored = [r["score"] for r in results.values() if r["score"] is not None]
    learned = [r["score"] for r in results.values() if r["score"] is not None and "score_caveat" not in r]
    if len(learned) < len(scored):
        extra["mean_score_learned"] = float(np.mean(learned)) if learned else None
        extra["learned_tasks"] = len(learned)
    by_domain = {}
    for dom in sorted({r["domain"] for r in results.values()}):
        vals = [r["score"] for r in results.values() if r["domain"] == dom and r["score"] is not None]
        by_domain[dom] = float(np.mean(vals)) if vals else None
    routing = getattr(agent, "routing", None)
    if routing:
        extra["routing"] = {t: {str(e): c for e, c in sorted(routing[t].items())} for t in tasks if t in routing}
    return {
        **extra,
        "episodes_per_task": episodes, "seed": seed, "mean_score": float(np.mean(scored)) if scored else None,
        "scored_tasks": len(scored),
        "mean_score_by_domain": by_domain, "tasks": results, "env_steps": env_steps,
        "model_forwards": getattr(agent, "forwards", None), "wall_s": wall, "env_steps_per_s": env_steps / max(wall, 1e-9),
    }


def evaluate_protocol(agent: Agent, tasks, standard_only: bool = False, **kw) -> dict:
    """Evaluate at every target return of each task's protocol (`TaskSpec.target_returns`: the
    DT and LaMo papers evaluate D4RL tasks at 3-4 targets) and report, labelled apart, the score
    at the standard target (the first) and the best over targets, which is what LaMo's reported
    numbers are (its authors said so); users of that code mixed the two up. Tasks without a
    protocol are evaluated at their usual target. `standard_only`: at the standard target only
    (then `best` is that one too; a learning curve's points). `kw` goes to :func:`evaluate_agent`."""
    tasks = resolve_tasks(tasks)
    lists = {t: list(get_task(t, kw.get("horizon")).target_returns) or [None] for t in tasks}  # scaled to a horizon
    if standard_only:
        lists = {t: v[:1] for t, v in lists.items()}
    per_task: dict[str, list[dict]] = {t: [] for t in tasks}
    for i in range(max(len(v) for v in lists.values())):
        these = [t for t in tasks if i < len(lists[t])]
        fixed = {t: lists[t][i] for t in these if lists[t][i] is not None}
        res = evaluate_agent(agent, these, targets=fixed, **kw)
        for t in these:
            r = res["tasks"][t]
            per_task[t].append({"target": r["target_return"], "score": r["score"], "return_mean": r["return_mean"],
                                "return_std": r["return_std"], "episodes": r["episodes"]})
    out = {}
    for t, rows in per_task.items():
        scored = [r for r in rows if r["score"] is not None]
        best = max(scored, key=lambda r: r["score"]) if scored else None
        out[t] = {"standard": rows[0], "best": best, "by_target": rows}
    std = [v["standard"]["score"] for v in out.values() if v["standard"]["score"] is not None]
    best = [v["best"]["score"] for v in out.values() if v["best"] is not None]
    return {"tasks": out, "mean_standard": float(np.mean(std)) if std else None,
            "mean_best": float(np.mean(best)) if best else None}
