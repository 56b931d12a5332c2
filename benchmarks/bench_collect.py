"""Collection steps/s (scripted expert + noise + Minari write) against raw env stepping.

Both run the same tasks for the same number of steps in one process; the ratio is the share of
raw simulator speed that collection keeps.

    python benchmarks/bench_collect.py
"""

import shutil
import tempfile

import numpy as np

from _common import timed
from dtune.data.collect import CollectConfig, collect_task
from dtune.tasks import make_env

TASKS = ["reach-v3", "door-open-v3", "pick-place-v3", "drawer-close-v3"]
EPISODES, HORIZON = 10, 200


def main():
    def raw():
        for t in TASKS:
            env = make_env(t, 0, HORIZON)
            for e in range(EPISODES):
                env.reset(e)
                for _ in range(HORIZON):
                    env.step(np.zeros(4))


    def collected():
        root = tempfile.mkdtemp()
        cfg = CollectConfig(tasks=",".join(TASKS), episodes=EPISODES, data_dir=root)
        for t in TASKS:
            collect_task(cfg, t)
        shutil.rmtree(root)


    steps = len(TASKS) * EPISODES * HORIZON
    t_raw, t_col = timed(raw), timed(collected)
    print(f"raw env stepping : {steps / t_raw:8.0f} steps/s")
    print(f"collection       : {steps / t_col:8.0f} steps/s per worker  (ratio to raw {t_raw / t_col:.2f})")


if __name__ == "__main__":  # spawned workers import this file: run only as a script
    main()
