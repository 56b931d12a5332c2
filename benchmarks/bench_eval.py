"""Evaluation env steps/s: key/value cache against recomputing the context, against raw env
stepping with random actions (the ceiling: no model at all), and the same with the
environments in worker processes (`env_workers`, dtune.eval.vecenv) against raw env stepping
in as many processes: lock-step (the model waits for the envs and the envs for the model) and
overlapped (`--env-overlap`: one agent per worker, the model acting for one worker's envs while
the other's step), and overlapped in bf16 (`dtune evaluate --precision bf16`); the in-process
evaluator as issue 13 found it (every window token through the final block) is the reference of
its 1.6x target.

Same tasks, episodes, seeds and horizon for all; the model is a freshly initialised MDDT of
the chosen preset (speed does not depend on the weights). Environments (in this process and in
the workers) are built once, before timing; only one set of them is alive at a time (a
Meta-World env holds about 22 MB). The worker evaluator's returns and successes are checked to
equal the in-process evaluator's. Each line gives wall seconds, CPU seconds (this process and
its env workers; Linux) and the seconds spent in the agent (the model); env worker RSS last.

    python benchmarks/bench_eval.py [--model small --tasks 8 --episodes 5 --horizon 100 --workers 2]
    python benchmarks/bench_eval.py --tasks 40 --episodes 10 --horizon 200 --skip-recompute  # MT40
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
    """Seconds for raw env stepping (random actions) of `specs` spread over `workers` processes
    (env `i` in process `i % workers`, as VecEnv spreads them), timed from a common start."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, done = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_raw_worker, args=([(s.name, s.horizon, s.act_dim) for s in specs[w::workers]],
                                                   seeds[w::workers], horizon, barrier, done), daemon=True)
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


class TimedAgent:
    """Wraps an agent; adds the wall seconds spent in its calls to `clock[0]`."""

    def __init__(self, agent, clock: list):
        self.agent, self.clock = agent, clock

    def _timed(self, fn, *a):
        t = time.perf_counter()
        r = fn(*a)
        self.clock[0] += time.perf_counter() - t
        return r

    def start(self, specs, targets):
        return self._timed(self.agent.start, specs, targets)

    def act(self, obs, t):
        return self._timed(self.agent.act, obs, t)

    def observe(self, rewards):
        return self._timed(self.agent.observe, rewards)


def rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of another process so far; 0 where /proc is missing."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def measure(fn, pids=()) -> tuple[float, float]:
    """Wall seconds of `fn()` and the CPU seconds it took in this process and in `pids`."""
    c = time.process_time() + sum(cpu_s(p) for p in pids)
    wall = timed(fn)
    return wall, time.process_time() + sum(cpu_s(p) for p in pids) - c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="small")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--workers", type=int, default=2, help="env worker processes (and raw reference processes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of this process (0: torch's default)")
    p.add_argument("--skip-recompute", action="store_true", help="skip the recompute-context evaluator (slow)")
    p.add_argument("--skip-bf16", action="store_true", help="skip the bf16 evaluator with env workers")
    p.add_argument("--skip-lockstep", action="store_true", help="skip the lock-step evaluator with env workers")
    p.add_argument("--skip-reference", action="store_true",
                   help="skip the in-process evaluator as issue 13 found it (every token through the final block)")
    args = p.parse_args()

    # Heavy imports here, not at the top: spawned workers import this file.
    import gc

    import torch

    from dtune.eval import rollout
    from dtune.eval.agents import DTAgent
    from dtune.eval.rollout import pooled_envs, run_episodes
    from dtune.eval.vecenv import close_shared, shared_vecenv
    from dtune.models import GPT, build_model, preset
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
    n_steps, w = len(specs) * args.horizon, args.workers
    res, out, model_s = {}, {}, {}  # name -> (wall s, cpu s); name -> episodes; name -> [s in the agent]

    def agent(key, cache=True):
        precision = "bf16" if key.endswith("bf16") else "fp32"
        return TimedAgent(DTAgent(model, layout, use_cache=cache, precision=precision), model_s.setdefault(key, [0.0]))

    def evaluate(key, pids=(), **kw):
        def run():
            out[key] = run_episodes(agent(key, key != "recompute"), specs, seeds, targets, **kw)
        res[key] = measure(run, pids)

    def evaluate_reference():
        """The in-process evaluator as issue 13 measured it: the window's every token runs through
        the final block (before `GPT.forward(last=True)`)."""
        forward = GPT.forward
        GPT.forward = lambda self, *a, **k: forward(self, *a, **{**k, "last": False})
        try:
            evaluate("reference")
        finally:
            GPT.forward = forward

    # Phases, so that only one set of environments is alive at a time (a Meta-World env holds
    # about 22 MB; the full MT40 evaluation has 400 of them).
    # 1. raw stepping in `w` processes (they build their envs, then exit)
    res["raw_n"] = (raw_processes(specs, seeds, args.horizon, w), None)

    # 2. in this process: raw stepping, then the evaluator; envs built before timing
    envs = pooled_envs(specs)

    def raw():
        for env, sd in zip(envs, seeds):
            env.reset(sd)
        rng = np.random.default_rng(0)
        for _ in range(args.horizon):
            for env in envs:
                env.step(rng.uniform(-1, 1, 4))

    res["raw"] = measure(raw)
    evaluate("cache")
    if not args.skip_reference:
        evaluate_reference()
    if not args.skip_recompute:
        evaluate("recompute")
    envs.clear()  # drop this process's envs before the workers build theirs
    rollout._ENV_POOL.clear()
    gc.collect()

    # 3. env workers (built before timing): raw stepping through VecEnv, the evaluator, the prototype
    venv = shared_vecenv(specs, w)
    pids = venv.pids

    def vec_raw():
        venv.reset(seeds)
        rng = np.random.default_rng(0)
        for _ in range(args.horizon):
            venv.step(rng.uniform(-1, 1, (len(specs), 4)))

    res["vec_raw"] = measure(vec_raw, pids)
    if not args.skip_lockstep:
        evaluate("lockstep", pids, env_workers=w)
    evaluate("workers", pids, env_workers=w, overlap=True)
    if not args.skip_bf16:
        evaluate("workers_bf16", pids, env_workers=w, overlap=True)
    rss = [(rss_mb(pid), len(venv.envs_of(i)), venv.cached_envs[i]) for i, pid in enumerate(pids)]
    close_shared()

    def same(key):
        return all(np.array_equal(out["cache"][k], out[key][k]) for k in ("returns", "success", "env_steps"))

    def line(label, key, extra=""):
        wall, cpu = res[key]
        cpu_txt = f", {cpu:5.1f} CPU s" if cpu is not None else ""
        if key in model_s:
            cpu_txt += f", agent {model_s[key][0]:5.1f} s"
        print(f"{label:<36}: {n_steps / wall:7.0f} steps/s  ({wall:6.1f} s{cpu_txt}){extra}")

    t_raw, t_raw_n, t_cache = res["raw"][0], res["raw_n"][0], res["cache"][0]
    print(f"{len(specs)} envs x {args.horizon} steps, model {args.model}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    line("raw env stepping (random actions)", "raw")
    line(f"raw env stepping, {w} processes", "raw_n", f"  x{t_raw / t_raw_n:.2f} vs 1 process")
    line(f"VecEnv stepping, {w} workers", "vec_raw", f"  {t_raw_n / res['vec_raw'][0]:.2f} of raw in {w} processes")
    vs = ""
    if "recompute" in res:
        line("evaluate, recompute context", "recompute")
        vs = f"x{res['recompute'][0] / t_cache:.2f} vs recompute, "
    if "reference" in res:
        line("evaluate, as issue 13 found it", "reference",
             f"  results {'identical' if same('reference') else 'DIFFER'}")
    line("evaluate, key/value cache", "cache", f"  {vs}{t_raw / t_cache:.2f} of raw")

    def vs_workers(key):
        return (f"  x{t_cache / res[key][0]:.2f} vs in-process, {t_raw_n / res[key][0]:.2f} of raw in {w} processes"
                + (f", x{res['reference'][0] / res[key][0]:.2f} vs issue 13's" if "reference" in res else ""))

    if "lockstep" in res:
        line(f"evaluate, {w} workers, lock-step", "lockstep",
             f"{vs_workers('lockstep')}; results {'identical' if same('lockstep') else 'DIFFER'}")
    line(f"evaluate, {w} workers, overlapped", "workers",
         f"{vs_workers('workers')}; results {'identical' if same('workers') else 'DIFFER'}")
    if "workers_bf16" in res:
        succ = [out[k]["success"].mean() for k in ("workers", "workers_bf16")]
        line("  the same in bf16 (--precision bf16)", "workers_bf16",
             f"{vs_workers('workers_bf16')}; success {succ[1]:.3f} against fp32's {succ[0]:.3f}")
    for i, (mb, used, cached) in enumerate(rss):
        if mb is not None:
            print(f"env worker {i}: {mb:.0f} MB RSS, {used} envs in use, {cached} cached")


if __name__ == "__main__":  # spawned workers import this file: run only as a script
    main()
