"""How well does L2M's `task_gaussians` routing (preset `l2m-gauss`) infer the task? (figures quoted in
the L2MConfig docstring and README.md)

For the MT40 checkpoint's frozen state embedding: per CW10 task, the tuner's own `fit_task_density`
on 2,560 windows of the task's data (what `calibrate_routing` fits after the task; `--span 200`:
queries over 200 timesteps, as `l2m-gauss` fits and evaluates them), then on other
windows (another seed) the share routed to the task's own entry, against nearest-key routing with
ideal keys (each task's mean query direction, what the key-pull loss converges to), and the share
of MT40 windows that no task accepts (they run the unmodulated model). With `--pretrain-gaussians` (the
preset `l2m-gauss-pre`): first one Gaussian per MT40 task (`fit_pretrain_densities`, 128 windows each, as
`dtune.recipes.tuning.fit_pretrain_keys` draws them), the "no modulation" class, and no rejection threshold.

    python results/l2m_cw10/density_probe.py --data-dir /work/data/datasets [--span 200] [--pretrain-gaussians]
"""

import argparse

import torch
import torch.nn.functional as F

from dtune import tuners
from dtune.data.dataset import TrajectoryData, WindowSampler
from dtune.models.io import load_model, run_layout
from dtune.tasks import resolve_tasks
from dtune.tuners.base import query_from

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", default="results/mt40_small/checkpoint")
p.add_argument("--data-dir", required=True)
p.add_argument("--windows", type=int, default=2560, help="windows per task to fit each density")
p.add_argument("--shrink", type=float, default=1e-2, help="ridge, times the first task's mean query variance")
p.add_argument("--span", type=int, default=None,
               help="timesteps a query spans (the preset l2m-gauss: 200, fitted and evaluated alike); default: the context K")
p.add_argument("--pretrain-gaussians", action="store_true",
               help="the MT40 tasks' Gaussians as the no-modulation class, no rejection (the preset l2m-gauss-pre)")
args = p.parse_args()
torch.manual_seed(0)
model, config = load_model(args.checkpoint)
stats = (model.state_mean.numpy(), model.state_std.numpy())


def queries(tasks, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = TrajectoryData(args.data_dir, tasks, state_stats=stats, layout=run_layout(config))
    sampler = WindowSampler(data, args.span or model.cfg.context_len, 64, seed=seed)
    qs, ids = [], []
    with torch.no_grad():
        for _ in range(-(-n // 64)):
            b = sampler.sample()
            qs.append(query_from(model.embed_state(torch.from_numpy(b["states"])), torch.from_numpy(b["valid"])))
            ids.append(torch.from_numpy(b["task_id"]))
    return torch.cat(qs), torch.cat(ids)


cw10 = resolve_tasks("cw10")
tuners.attach(model, "l2m-gauss-pre" if args.pretrain_gaussians else "l2m-gauss")
tuner = model.tuner
mt40 = resolve_tasks("mt40")
if args.pretrain_gaussians:
    pre_q, pre_ids = queries("mt40", 128 * len(mt40), 3)
    tuner.fit_pretrain_densities([pre_q[pre_ids == t] for t in range(len(mt40))], shrink=args.shrink)
for task in cw10:
    tuner.begin_task(task)
    tuner.fit_task_density(task, queries(task, args.windows, 0)[0], shrink=args.shrink)
test_q, test_ids = queries("cw10", 512 * len(cw10), 1)
routed = tuner.infer_task(test_q)
right = (routed == test_ids).float()
fit_q, fit_ids = queries("cw10", 512 * len(cw10), 0)
keys = torch.stack([F.normalize(F.normalize(fit_q[fit_ids == t], dim=-1).mean(0), dim=0) for t in range(len(cw10))])
cos_right = ((F.normalize(test_q, dim=-1) @ keys.T).argmax(-1) == test_ids).float()
mt40_q, mt40_ids = queries("mt40", 2048, 2)
mt40_routed = tuner.infer_task(mt40_q)
print(f"CW10 windows to their own task: {right.mean():.3f} (nearest ideal key: {cos_right.mean():.3f}); "
      f"to no modulation: {(routed == -1).float().mean():.3f}; MT40 windows to no modulation: "
      f"{(mt40_routed == -1).float().mean():.3f}")
for k, t in enumerate(mt40):
    lost = (mt40_routed[mt40_ids == k] >= 0).float().mean()
    if lost > 0.02:
        print(f"  MT40 {t} to a CW10 entry: {lost:.2f}")
print("per task (own / nearest key / most confused with):")
for k, t in enumerate(cw10):
    mine = routed[test_ids == k]
    wrong = mine[(mine != k) & (mine >= 0)]
    other = cw10[int(wrong.mode().values)] if len(wrong) else "-"
    print(f"  {t:20s} {right[test_ids == k].mean():.2f} / {cos_right[test_ids == k].mean():.2f} / {other}")
