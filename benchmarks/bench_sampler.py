"""Sampler windows/s: the vectorised WindowSampler against a per-sample Python loop (reference).

    DTUNE_DATA_DIR=... python benchmarks/bench_sampler.py   # uses MT40 data there if present
"""

import os

import numpy as np

from _common import data_dir_with, timed
from dtune.data.dataset import TrajectoryData, WindowSampler

def main():
    TASKS = os.environ.get("BENCH_TASKS", "mt40")
    K, B = 5, 256
    data = TrajectoryData(data_dir_with(TASKS, episodes=10), TASKS)
    sampler = WindowSampler(data, K, B, seed=0)

    def loop_reference(rng=np.random.default_rng(0)):
        """The same windows built one sample at a time, the way a naive Dataset.__getitem__ does."""
        dom = data.domains[0]
        out = []
        for _ in range(B):
            end = int(rng.integers(0, len(dom)))
            t = dom.tasks[int(np.searchsorted(dom.offsets, end, side="right")) - 1]
            local = end - t.offset
            first = int(t.starts[np.searchsorted(t.starts, local, side="right") - 1])
            start = max(first, local - K + 1)
            s = np.zeros((K, data.layout.state_dim), np.float32)
            a = np.zeros((K, data.layout.act_dim), np.float32)
            n = local - start + 1
            s[K - n:, t.columns] = (t.obs[start:local + 1] - data.state_mean[t.columns]) / data.state_std[t.columns]
            a[K - n:, : t.spec.act_dim] = t.actions[start:local + 1]
            out.append((s, a, t.rtg[start:local + 1] / t.spec.reward_scale, np.arange(start, local + 1) - first))
        return out

    t_vec = timed(sampler.sample, repeat=50, warmup=2)
    t_loop = timed(loop_reference, repeat=5, warmup=1)
    print(f"data: {len(data.tasks)} tasks, {data.steps} steps")
    print(f"per-sample loop : {B / t_loop:10.0f} windows/s")
    print(f"WindowSampler   : {B / t_vec:10.0f} windows/s  (x{t_loop / t_vec:.1f})")


if __name__ == "__main__":  # spawned workers import this file: run only as a script
    main()
