"""Can L2M's query tell the tasks apart, and from the pre-training tasks? (issue 12, item 2)

For the MT40 checkpoint's frozen state embedding, the L2M query is the mean state embedding over
the context window (K = 5 timesteps). This probe measures, on windows sampled from the datasets,
how often a window's nearest key is its own task's, with ideal keys (each task's mean query
direction, which the key-pull loss converges to), for:

* the query over K timesteps (the paper's) and over longer spans of the episode so far (an
  episode-aggregated query at evaluation: the last H timesteps, H = 20, 50, 200);
* the raw query (the paper's) and the query whitened with the MT40 data's statistics (L2M's
  `query_whitening`);
* CW10 keys alone, and CW10 + MT40 keys (does a CW10 window go to its own key, does an MT40
  window go to an MT40 key, i.e. L2M's "no modulation" route with pre-training keys?).

    python results/l2m_routing/probe.py --cw10-data /work/data/cw10 --mt40-data /work/data/datasets
"""

import argparse

import torch
import torch.nn.functional as F

from dtune.data.dataset import TrajectoryData, WindowSampler
from dtune.models.io import load_model, run_layout
from dtune.tasks import resolve_tasks
from dtune.tuners.base import query_from

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", default="results/mt40_small/checkpoint")
p.add_argument("--cw10-data", required=True)
p.add_argument("--mt40-data", required=True)
p.add_argument("--windows", type=int, default=4096, help="windows per task set and span")
args = p.parse_args()
torch.manual_seed(0)
model, config = load_model(args.checkpoint)
stats = (model.state_mean.numpy(), model.state_std.numpy())


def queries(root, tasks, span):
    data = TrajectoryData(root, tasks, state_stats=stats, layout=run_layout(config), source="expert-noise")
    sampler = WindowSampler(data, span, 512, seed=0)
    qs, ids = [], []
    with torch.no_grad():
        for _ in range(args.windows // 512):
            b = sampler.sample()
            qs.append(query_from(model.embed_state(torch.from_numpy(b["states"])), torch.from_numpy(b["valid"])))
            ids.append(torch.from_numpy(b["task_id"]))
    return torch.cat(qs), torch.cat(ids)


def keys_of(q, ids, n):
    return torch.stack([F.normalize(q[ids == t].mean(0), dim=0) for t in range(n)])


def whitening(q):
    """L2M's `query_whitening`: mean and inverse square root of the covariance of raw queries."""
    mean = q.mean(0)
    cov = torch.cov((q - mean).T)
    cov = cov + 1e-3 * cov.diagonal().mean() * torch.eye(q.shape[1])
    e, v = torch.linalg.eigh(cov)
    return mean, v @ torch.diag(e ** -0.5) @ v.T


cw, mt = resolve_tasks("cw10"), resolve_tasks("mt40")
print("| query | span H | CW10 windows to own key (CW10 keys) | worst CW10 task | CW10 windows to own key "
      "(CW10 + MT40 keys) | MT40 windows to an MT40 key |")
print("|---|---|---|---|---|---|")
for span in (5, 20, 50, 200):
    qc, ic = queries(args.cw10_data, "cw10", span)
    qm, im = queries(args.mt40_data, "mt40", span)
    mean, w = whitening(qm)  # fit on the pre-training data only, as L2M does
    for name, f in (("raw (paper)", lambda q: q), ("whitened", lambda q: (q - mean) @ w)):
        a, b = F.normalize(f(qc), dim=-1), F.normalize(f(qm), dim=-1)
        kc, km = keys_of(a, ic, len(cw)), keys_of(b, im, len(mt))
        right = ((a @ kc.T).argmax(-1) == ic).float()
        per = [right[ic == k].mean().item() for k in range(len(cw))]
        worst = min(range(len(cw)), key=lambda k: per[k])
        both = torch.cat([kc, km])
        right_both = ((a @ both.T).argmax(-1) == ic).float().mean().item()
        mt_to_mt = ((b @ both.T).argmax(-1) >= len(cw)).float().mean().item()
        print(f"| {name} | {span} | {right.mean():.3f} | {cw[worst].removesuffix('-v3')} {per[worst]:.2f} | "
              f"{right_both:.3f} | {mt_to_mt:.3f} |")

# The calibrated "no modulation" route (L2M's --calibrate-margin q): an input goes unmodulated only
# when its best MT40 key beats its best CW10 key by more than the margin at which a fraction q of
# the CW10 windows keep their own key.
print()
print("| query | span H | q | margin | CW10 windows on their own key | MT40 windows unmodulated |")
print("|---|---|---|---|---|---|")
for span in (5, 200):
    qc, ic = queries(args.cw10_data, "cw10", span)
    qm, im = queries(args.mt40_data, "mt40", span)
    mean, w = whitening(qm)
    for name, f in (("raw (paper)", lambda q: q), ("whitened", lambda q: (q - mean) @ w)):
        a, b = F.normalize(f(qc), dim=-1), F.normalize(f(qm), dim=-1)
        kc, km = keys_of(a, ic, len(cw)), keys_of(b, im, len(mt))
        gap_c = (a @ km.T).max(-1).values - (a @ kc.T).max(-1).values
        gap_m = (b @ km.T).max(-1).values - (b @ kc.T).max(-1).values
        for q in (0.0, 0.9, 0.95, 0.99):
            margin = 0.0 if q == 0 else float(torch.quantile(gap_c, q))
            own = ((gap_c <= margin) & ((a @ kc.T).argmax(-1) == ic)).float().mean().item()
            print(f"| {name} | {span} | {'- (margin 0)' if q == 0 else q} | {margin:.3f} | {own:.3f} | "
                  f"{(gap_m > margin).float().mean().item():.3f} |")
