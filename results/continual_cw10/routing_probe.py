"""How separable are the CW10 tasks for L2M's query? (the figure quoted in README.md)

For the MT40 checkpoint's frozen state embedding, sample 5,120 context windows of the ten CW10
datasets, form L2M's query (mean state embedding over the window), take each task's mean query
direction as an ideal key, and report the cosine between task keys and how often a window's
nearest key is its own task's.

    python results/continual_cw10/routing_probe.py --data-dir /work/runs/data2
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from dtune.data.dataset import TrajectoryData, WindowSampler
from dtune.tasks import resolve_tasks
from dtune.models.io import load_model, run_layout
from dtune.tuners.base import query_from

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", default="results/mt40_small/checkpoint")
p.add_argument("--data-dir", required=True)
args = p.parse_args()
model, config = load_model(args.checkpoint)
tasks = resolve_tasks("cw10")
data = TrajectoryData(args.data_dir, "cw10", state_stats=(model.state_mean.numpy(), model.state_std.numpy()),
                      layout=run_layout(config))
sampler = WindowSampler(data, model.cfg.context_len, 512, seed=0)
queries, ids = [], []
with torch.no_grad():
    for _ in range(10):
        b = sampler.sample()
        queries.append(query_from(model.embed_state(torch.from_numpy(b["states"])), torch.from_numpy(b["valid"])))
        ids.append(torch.from_numpy(b["task_id"]))
q, ids = F.normalize(torch.cat(queries), dim=-1), torch.cat(ids)
keys = torch.stack([F.normalize(q[ids == t].mean(0), dim=0) for t in range(len(tasks))])
cos = keys @ keys.T
off = cos[~torch.eye(len(tasks), dtype=torch.bool)]
right = ((q @ keys.T).argmax(-1) == ids).float()
i, j = divmod(int((cos - 2 * torch.eye(len(tasks))).argmax()), len(tasks))
print(f"windows: {len(ids)}; key cosine between tasks: mean {off.mean():.3f}, max {off.max():.3f} "
      f"({tasks[i]} / {tasks[j]})")
print(f"nearest-key routing right: {right.mean():.3f} of windows; per task: "
      + ", ".join(f"{t.removesuffix('-v3')} {right[ids == k].mean():.2f}" for k, t in enumerate(tasks)))
np.set_printoptions(precision=2, suppress=True, linewidth=140)
print(cos.numpy())
