"""Evaluation env steps/s: key/value cache against recomputing the context, and against raw
env stepping with random actions (the ceiling: no model at all).

Same tasks, episodes, seeds and horizon for all three; the model is a freshly initialised MDDT of
the chosen preset (speed does not depend on the weights). Environments are built once, before
timing, and shared by all three.

    python benchmarks/bench_eval.py [--model small --tasks 8 --episodes 5 --horizon 100]
"""

import argparse

import numpy as np
import torch

from _common import timed
from dtune.eval.agents import DTAgent
from dtune.eval.rollout import pooled_envs, run_episodes
from dtune.models import build_model, preset
from dtune.tasks import TASK_SETS, get_task, layout_for

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="small")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--horizon", type=int, default=100)
    args = p.parse_args()

    tasks = TASK_SETS["mt40"][: args.tasks]
    specs = [get_task(t, args.horizon) for t in tasks for _ in range(args.episodes)]
    seeds = list(range(len(specs)))
    targets = [s.target_return for s in specs]
    torch.manual_seed(0)
    layout = layout_for("mt40")
    model = build_model(preset(args.model, state_dim=layout.state_dim, act_dim=layout.act_dim)).eval()


    envs = pooled_envs(specs)  # built once, outside the timings; run_episodes reuses them


    def raw():
        for env, sd in zip(envs, seeds):
            env.reset(sd)
        rng = np.random.default_rng(0)
        for _ in range(args.horizon):
            for env in envs:
                env.step(rng.uniform(-1, 1, 4))


    n_steps = len(specs) * args.horizon
    res = {}
    t_raw = timed(raw)
    for cache in (True, False):
        res[cache] = timed(lambda: run_episodes(DTAgent(model, layout, use_cache=cache), specs, seeds, targets))
    print(f"{len(specs)} envs x {args.horizon} steps, model {args.model}")
    print(f"raw env stepping (random actions) : {n_steps / t_raw:7.0f} steps/s")
    print(f"evaluate, recompute context       : {n_steps / res[False]:7.0f} steps/s")
    print(f"evaluate, key/value cache         : {n_steps / res[True]:7.0f} steps/s  "
          f"(x{res[False] / res[True]:.2f} vs recompute, {t_raw / res[True]:.2f} of raw)")


if __name__ == "__main__":  # spawned workers import this file: run only as a script
    main()
