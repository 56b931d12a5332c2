"""Why BC scores about 2 on halfcheetah medium-replay: the size of its actions against the data's.

Loads a finished (not kept: it needs the weights) `dtune baselines` run and prints the mean |action|
of the data, of the policy on the data's states, and of the policy in one 1,000-step episode, with
that episode's return.

    python results/offline_rl/bc_actions.py runs/offline_rl/halfcheetah-medium-replay/bc/s0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished baseline run directory (with checkpoint/)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rollout's reset")
    args = ap.parse_args()

    from dtune.recipes.baselines import _load, _quiet_d3rlpy, built_algo, mdp_dataset
    from dtune.tasks import make_env

    _quiet_d3rlpy()
    cfg = json.loads((args.run / "config.json").read_text())["baseline"]
    ds, _ = mdp_dataset(Path(cfg["data_dir"]), cfg["task"], cfg["source"], cfg["data_ratio"], cfg["seed"],
                        cfg.get("replay_from", 0.0))
    algo = built_algo(cfg["algo"], cfg["batch_size"], ds)
    step, _ = _load(args.run, algo)
    obs = np.concatenate([e.observations for e in ds.episodes]).astype(np.float32)
    act = np.concatenate([e.actions for e in ds.episodes])
    pred = algo.predict(obs)
    env = make_env(cfg["task"], args.seed)
    o = env.reset(args.seed)
    ret, sizes, done = 0.0, [], False
    while not done:
        a = np.clip(algo.predict(np.asarray(o, np.float32)[None])[0], -1.0, 1.0)
        sizes.append(np.abs(a).mean())
        o, r, term, trunc, _success = env.step(a)
        ret, done = ret + float(r), term or trunc
    print(f"{cfg['algo']} after {step} updates on {cfg['task']} {cfg['source']}:")
    print(f"  mean |action|: data {np.abs(act).mean():.3f}, policy on the data's states {np.abs(pred).mean():.3f}, "
          f"policy in an episode {np.mean(sizes):.3f} ({len(sizes)} steps, return {ret:.1f})")


if __name__ == "__main__":
    main()
