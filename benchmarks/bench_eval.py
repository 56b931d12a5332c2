"""Evaluation env steps/s: key/value cache against recomputing the context, against raw env
stepping with random actions (the ceiling: no model at all), and the same with the
environments in worker processes (`env_workers`, dtune.eval.vecenv) against raw env stepping
in as many processes.

Same tasks, episodes, seeds and horizon for all; the model is a freshly initialised MDDT of
the chosen preset (speed does not depend on the weights). Environments (in this process and in
the workers) are built once, before timing. The worker evaluator's returns and successes are
checked to equal the in-process evaluator's.

    python benchmarks/bench_eval.py [--model small --tasks 8 --episodes 5 --horizon 100 --workers 2]
    python benchmarks/bench_eval.py --tasks 40 --episodes 10 --horizon 200 --skip-recompute   # full MT40
"""

import argparse
import os
import time

import numpy as np

from _common import timed


def _raw_worker(keys, seeds, horizon, barrier, done):
    """One process of the raw reference: build its envs, wait for the others, step them."""
    from dtune.tasks import make_env

    envs = [make_env(name, seed=0, horizon=h) for name, h, _ in keys]
    rng = np.random.default_rng(0)
    barrier.wait()
    for env, sd in zip(envs, seeds):
        env.reset(sd)
    for _ in range(horizon):
        for env, (_, _, act_dim) in zip(envs, keys):
            env.step(rng.uniform(-1, 1, act_dim))
    done.put(os.getpid())


def raw_processes(specs, seeds, horizon: int, workers: int) -> float:
    """Seconds for raw env stepping (random actions) of `specs` split over `workers` processes
    (contiguous slices, as VecEnv splits them), timed from a common start."""
    import multiprocessing as mp

    from dtune.eval.vecenv import split_bounds

    ctx = mp.get_context("spawn")
    barrier, done = ctx.Barrier(workers + 1), ctx.Queue()
    b = split_bounds(len(specs), workers)
    procs = [ctx.Process(target=_raw_worker, args=([(s.name, s.horizon, s.act_dim) for s in specs[b[w]:b[w + 1]]],
                                                   seeds[b[w]:b[w + 1]], horizon, barrier, done), daemon=True)
             for w in range(workers)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=600)
        t = time.perf_counter()
        for _ in procs:
            done.get(timeout=600)
        return time.perf_counter() - t
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def run_overlapped(make_agent, specs, seeds, targets, venv) -> dict:
    """Prototype (not in dtune): two agents, one per half of the envs (the slices of worker 0 and
    worker 1), so that the model acts for one half while the other half steps. Same episodes
    as run_episodes when the agent's actions do not depend on the batch it is run in."""
    n, horizon = len(specs), specs[0].horizon
    b = venv.bounds
    halves = [(b[0], b[1]), (b[1], b[2])]
    agents = [make_agent() for _ in halves]
    obs = venv.reset(seeds)
    for agent, (lo, hi) in zip(agents, halves):
        agent.start(specs[lo:hi], targets[lo:hi])
    returns, success, alive = np.zeros(n), np.zeros(n, bool), np.ones(n, bool)
    actions = np.zeros((n, max(s.act_dim for s in specs)), np.float32)
    env_steps, pending = 0, None  # the half in flight

    def finish(k):
        nonlocal env_steps, obs
        lo, hi = halves[k]
        o, rew, term, trunc, succ = venv.step_wait()
        obs[lo:hi] = o[lo:hi]
        live = lo + np.flatnonzero(alive[lo:hi])
        rewards = np.zeros(n, np.float32)
        rewards[live] = rew[live]
        returns[live] += rew[live]
        success[live] |= succ[live]
        env_steps += len(live)
        alive[live[term[live] | trunc[live]]] = False
        agents[k].observe(rewards[lo:hi])

    for t in range(horizon):
        for k, (lo, hi) in enumerate(halves):
            actions[lo:hi] = agents[k].act(obs[lo:hi], t)  # while the other half steps
            if pending is not None:
                finish(pending)
            venv.step_async(actions, alive, workers=[k])
            pending = k
    finish(pending)
    return {"returns": returns, "success": success, "env_steps": env_steps}


def rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="small")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="env worker processes (and raw reference processes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of this process (0: torch's default)")
    p.add_argument("--skip-recompute", action="store_true", help="skip the recompute-context evaluator (slow)")
    args = p.parse_args()

    # Heavy imports here, not at the top: spawned workers import this file.
    import torch

    from dtune.eval.agents import DTAgent
    from dtune.eval.rollout import pooled_envs, run_episodes
    from dtune.eval.vecenv import shared_vecenv
    from dtune.models import build_model, preset
    from dtune.tasks import TASK_SETS, get_task, layout_for

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = TASK_SETS["mt40"][: args.tasks]
    specs = [get_task(t, args.horizon) for t in tasks for _ in range(args.episodes)]
    seeds = list(range(len(specs)))
    targets = [s.target_return for s in specs]
    torch.manual_seed(0)
    layout = layout_for("mt40")
    model = build_model(preset(args.model, state_dim=layout.state_dim, act_dim=layout.act_dim)).eval()

    envs = pooled_envs(specs)  # built once, outside the timings; run_episodes reuses them
    venv = shared_vecenv(specs, args.workers)  # the env workers and their envs, likewise

    def raw():
        for env, sd in zip(envs, seeds):
            env.reset(sd)
        rng = np.random.default_rng(0)
        for _ in range(args.horizon):
            for env in envs:
                env.step(rng.uniform(-1, 1, 4))

    def vec_raw():
        venv.reset(seeds)
        rng = np.random.default_rng(0)
        for _ in range(args.horizon):
            venv.step(rng.uniform(-1, 1, (len(specs), 4)))

    n_steps = len(specs) * args.horizon
    res, out = {}, {}

    def evaluate(key, **kw):
        def run():
            out[key] = run_episodes(DTAgent(model, layout, use_cache=key != "recompute"), specs, seeds, targets, **kw)
        res[key] = timed(run)

    t_raw = timed(raw)
    t_raw_n = raw_processes(specs, seeds, args.horizon, args.workers)
    t_vec_raw = timed(vec_raw)
    evaluate("cache")
    evaluate("workers", env_workers=args.workers)
    if args.workers == 2:
        res["overlap"] = timed(lambda: out.__setitem__("overlap", run_overlapped(
            lambda: DTAgent(model, layout), specs, seeds, targets, venv)))
    if not args.skip_recompute:
        evaluate("recompute")
    same = all(np.array_equal(out["cache"][k], out["workers"][k]) for k in ("returns", "success", "env_steps"))

    w = args.workers
    print(f"{len(specs)} envs x {args.horizon} steps, model {args.model}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs")
    print(f"raw env stepping (random actions) : {n_steps / t_raw:7.0f} steps/s")
    print(f"raw env stepping, {w} processes    : {n_steps / t_raw_n:7.0f} steps/s  (x{t_raw / t_raw_n:.2f} vs 1 process)")
    print(f"VecEnv stepping, {w} workers       : {n_steps / t_vec_raw:7.0f} steps/s  "
          f"({t_raw_n / t_vec_raw:.2f} of raw in {w} processes)")
    if "recompute" in res:
        print(f"evaluate, recompute context       : {n_steps / res['recompute']:7.0f} steps/s")
        vs = f"x{res['recompute'] / res['cache']:.2f} vs recompute, "
    else:
        vs = ""
    print(f"evaluate, key/value cache         : {n_steps / res['cache']:7.0f} steps/s  "
          f"({vs}{t_raw / res['cache']:.2f} of raw)")
    print(f"evaluate, cache, {w} env workers   : {n_steps / res['workers']:7.0f} steps/s  "
          f"(x{res['cache'] / res['workers']:.2f} vs in-process, {t_raw_n / res['workers']:.2f} of raw in {w} processes)"
          f"; results {'identical' if same else 'DIFFER'}")
    if "overlap" in res:
        same_o = all(np.array_equal(out["cache"][k], out["overlap"][k]) for k in ("returns", "success", "env_steps"))
        print(f"  halves overlapped (prototype)  : {n_steps / res['overlap']:7.0f} steps/s  "
              f"(x{res['cache'] / res['overlap']:.2f} vs in-process, {t_raw_n / res['overlap']:.2f} of raw in {w} "
              f"processes); results {'identical' if same_o else 'DIFFER'}")
    b = venv.bounds
    for i, pid in enumerate(venv.pids):
        mb = rss_mb(pid)
        if mb is not None:
            print(f"env worker {i}: {mb:.0f} MB RSS, {b[i + 1] - b[i]} envs in use, {venv.cached_envs[i]} cached")


if __name__ == "__main__":  # spawned workers import this file: run only as a script
    main()
