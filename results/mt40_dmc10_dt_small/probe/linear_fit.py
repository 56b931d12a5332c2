"""How predictable a DMC SAC buffer's actions are from the state, over the whole buffer and its later
episodes: the share of the action variance a least-squares fit explains (linear, and with all pairwise
products of the state), and the mean return of each part. Usage (repository root, .venv/bin on PATH):
    python results/mt40_dmc10_dt_small/probe/linear_fit.py [TASK ...]   (default: cartpole-balance point_mass-easy)
"""
import os
import sys

import h5py
import numpy as np

root = os.environ.get("DATA", "/work/data/datasets")
for t in sys.argv[1:] or ["cartpole-balance", "point_mass-easy"]:
    obs, act, ep, ret = [], [], [], []
    with h5py.File(f"{root}/dtune/dmc/{t}/sac-replay-v0/data/main_data.hdf5") as f:
        for i, k in enumerate(sorted((k for k in f if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))):
            a = f[k]["actions"][()]
            obs.append(f[k]["observations"][()][:-1]), act.append(a), ep.append(np.full(len(a), i))
            ret.append(f[k]["rewards"][()].sum())
    obs, act, ep, ret = np.concatenate(obs), np.concatenate(act), np.concatenate(ep), np.array(ret)
    print(f"{t}: {len(ret)} episodes")
    for lo in (0, len(ret) // 2):
        m = ep >= lo
        x = np.c_[obs[m], np.ones(m.sum())]
        quad = np.c_[x, np.einsum("ni,nj->nij", obs[m], obs[m]).reshape(m.sum(), -1)]
        r2 = [1 - (act[m] - f @ np.linalg.lstsq(f, act[m], rcond=None)[0]).var(0) / act[m].var(0) for f in (x, quad)]
        print(f"  episodes {lo}-{len(ret) - 1}: mean return {ret[lo:].mean():.1f}, action variance "
              f"{np.round(act[m].var(0), 4)}, explained: linear {np.round(r2[0], 3)}, quadratic {np.round(r2[1], 3)}")
