"""Normalised data scores of the medium-replay sets three ways: the mean over episodes (the dataset
card's), the mean over steps (what behaviour cloning imitates: long episodes weigh more), and the
last tenth of the episodes (the agent near its stop).

    python results/offline_rl/step_weighted.py --data-dir /work/data/datasets
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--source", default="medium-replay")
    args = ap.parse_args()

    from dtune.data.storage import read_episodes
    from dtune.report import markdown_table
    from dtune.tasks import get_task

    rows = []
    for task in ("hopper", "halfcheetah", "walker2d"):
        ep = read_episodes(args.data_dir, task, args.source)
        lengths = ep["lengths"]
        returns = np.add.reduceat(ep["rewards"].astype(np.float64), np.cumsum(lengths) - lengths)
        spec = get_task(task)
        lo, hi = spec.ref_min_score, spec.ref_max_score
        raw = [returns.mean(), (returns * lengths).sum() / lengths.sum(), returns[-max(1, len(returns) // 10):].mean()]
        rows.append([task, len(lengths), *(f"{100 * (r - lo) / (hi - lo):.1f}" for r in raw)])
    print(markdown_table(["task", "episodes", "per episode", "per step", "last tenth"], rows))


if __name__ == "__main__":
    main()
