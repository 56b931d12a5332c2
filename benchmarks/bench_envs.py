"""Building evaluation environments: one `make_env` per episode (what the evaluator did before
2026-12-05) against the same inside `dtune.tasks.mjcache.compile_once` (each MuJoCo model compiled
once per batch, copied for the other environments of its task). Both sides build the same
environments, in turn, `--rounds` times; the best time of each is printed with the ratio.

    python benchmarks/bench_envs.py [--tasks 40 --episodes 2]   # an adaptation run's MT40 evaluation
    python benchmarks/bench_envs.py --tasks 10 --episodes 10     # a CW10 evaluation
"""

import argparse
import gc

from _common import race
from dtune.tasks import make_env, resolve_tasks
from dtune.tasks.mjcache import compile_once


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=40, help="the first N MT50 tasks (MT40 first, then CW10)")
    p.add_argument("--episodes", type=int, default=2, help="environments per task")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    names = resolve_tasks("mt50")[: args.tasks]

    def build():
        envs = [make_env(n, seed=0) for n in names for _ in range(args.episodes)]
        del envs
        gc.collect()

    def build_once():
        with compile_once():
            build()

    t = race({"plain": build, "compile_once": build_once}, rounds=args.rounds, repeat=1, warmup=0)
    n = len(names) * args.episodes
    print(f"{n} Meta-World environments ({len(names)} tasks x {args.episodes}): one compile each "
          f"{t['plain']:.2f} s ({t['plain'] / n * 1e3:.0f} ms/env) | compiled once per task "
          f"{t['compile_once']:.2f} s ({t['compile_once'] / n * 1e3:.0f} ms/env) | x{t['plain'] / t['compile_once']:.2f}")


if __name__ == "__main__":
    main()
