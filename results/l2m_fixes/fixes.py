"""Issue 12's defects, before and after their fix (commit 39888f2), on the numbers each one biased:
the measurements that need no training run (results/l2m_fixes/README.md has the table and the runs).

    python results/l2m_fixes/fixes.py decay     # weight decay on pool entries: scale of an earlier task's entry
    python results/l2m_fixes/fixes.py routing --data-dir /work/data/datasets   # batch vote vs per window; bf16 query
    python results/l2m_fixes/fixes.py targets --data-dir /work/data/datasets   # CW10 target returns by start path

`decay` computes what AdamW's decoupled weight decay does to a tensor that gets zero gradient while the later
tasks train, as the rows of an earlier task's entry did when the pool sat in the decayed group (the pool is
one tensor, so its idle rows get zeros, not None): with dtune's fresh optimiser per task, Adam's step of an
idle tensor is zero and each update multiplies it by (1 - lr * wd) (checked against torch's AdamW); the
learning rate follows dtune's per-task schedule (warm-up, cosine to 1e-6) or is constant. An L2M LoRA
entry's update is B A with both factors decayed, so it shrinks by the square. `routing` uses ideal keys
(each CW10 task's mean query direction on the MT40 checkpoint, what the key-pull loss converges to): before,
a training batch (64 windows of one task) took the entry most of its windows voted for, and evaluation routed
each window on its own, so evaluation windows could take an entry their task never trained; after, both route
per window. It also counts the windows whose entry differs between a query computed under bf16 autocast (the
training path before) and in fp32 (evaluation). `targets` prints each CW10 task's target return by the path
that started the evaluation before the fix, and the one every path uses now.
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from dtune.train.optim import cosine_lr

p = argparse.ArgumentParser()
p.add_argument("what", choices=["decay", "routing", "targets"])
p.add_argument("--data-dir", default="/work/data/datasets")
p.add_argument("--checkpoint", default="results/mt40_small/checkpoint")
args = p.parse_args()


def idle_decay(steps: int, lr: float, wd: float, later_tasks: int, schedule: str) -> float:
    """Factor by which AdamW's decoupled weight decay scales a tensor that gets a zero gradient in every
    update of `later_tasks` tasks of `steps` updates. dtune builds a fresh optimiser per task, so Adam's
    moments of an idle tensor stay zero, its Adam step is zero, and each update only multiplies it by
    (1 - lr * wd)."""
    factor = 1.0
    for _ in range(later_tasks):
        for s in range(steps):
            factor *= 1 - wd * (cosine_lr(s, steps, lr, 100, 1e-6) if schedule == "cosine" else lr)
    return factor


def replay(steps: int, lr: float, wd: float, later_tasks: int) -> float:
    """The same with torch's AdamW (betas 0.9/0.95 as dtune's optimiser), one fresh optimiser per task:
    the check that `idle_decay` is what AdamW does."""
    w = torch.nn.Parameter(torch.randn(256, generator=torch.Generator().manual_seed(0)))
    before = float(w.detach().norm())
    for _ in range(later_tasks):
        opt = torch.optim.AdamW([w], lr=lr, betas=(0.9, 0.95), weight_decay=wd)
        for s in range(steps):
            opt.param_groups[0]["lr"] = cosine_lr(s, steps, lr, 100, 1e-6)
            w.grad = torch.zeros(256)
            opt.step()
    return float(w.detach().norm()) / before


if args.what == "decay":
    check = replay(1000, 1e-3, 0.01, 2)
    assert abs(check - idle_decay(1000, 1e-3, 0.01, 2, "cosine")) < 1e-5, check
    print("| budget | learning rate | first task's entry after the 9 later tasks: one tensor (an L2P prompt) / "
          "an L2M LoRA update B A (both factors decayed) | fifth task's (5 later) |")
    print("|---|---|---|---|")
    for steps, lr, schedule in ((1000, 1e-3, "cosine"), (2000, 1e-3, "cosine"), (100_000, 1e-4, "cosine"),
                                (100_000, 1e-4, "constant")):
        first = idle_decay(steps, lr, 0.01, 9, schedule)
        fifth = idle_decay(steps, lr, 0.01, 5, schedule)
        print(f"| {steps:,} updates per task | {lr:g}, {schedule} | x{first:.3f} / x{first ** 2:.3f} | "
              f"x{fifth:.3f} / x{fifth ** 2:.3f} |")
    print("weight decay 0.01 (dtune's default, the paper's); checked against torch's AdamW with a fresh optimiser per "
          f"task (2 idle tasks of 1,000 updates: x{check:.5f}); after the fix every entry is bit-identical once its "
          "task ends (tests/tuners/test_tuners.py: test_weight_decay_leaves_the_pool_entries_of_earlier_tasks_alone_l2m, "
          "..._l2p)")

else:
    from dtune.data.dataset import TrajectoryData, WindowSampler
    from dtune.models.io import load_model, run_layout
    from dtune.tasks import resolve_tasks

    torch.manual_seed(0)
    model, config = load_model(args.checkpoint)
    stats = (model.state_mean.numpy(), model.state_std.numpy())
    cw10 = resolve_tasks("cw10")

if args.what == "routing":
    from dtune.tuners.base import query_from

    K = model.cfg.context_len

    def batches(task: str, n: int, seed: int):
        data = TrajectoryData(args.data_dir, task, state_stats=stats, layout=run_layout(config))
        sampler = WindowSampler(data, K, 64, seed=seed)
        return [sampler.sample() for _ in range(n)]

    def queries(b, bf16: bool = False) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return query_from(model.embed_state(torch.from_numpy(b["states"])), torch.from_numpy(b["valid"]))

    fit = {t: torch.cat([queries(b) for b in batches(t, 20, 0)]) for t in cw10}
    keys = torch.stack([F.normalize(F.normalize(q, dim=-1).mean(0), dim=0) for q in fit.values()])

    def route(q: torch.Tensor) -> torch.Tensor:
        return (F.normalize(q.float(), dim=-1) @ keys.T).argmax(-1)

    print("| task | entries trained: batch vote (before) | eval windows on an entry never trained, before | "
          "after (per window in both) | windows whose entry differs, bf16 vs fp32 query |")
    print("|---|---|---|---|---|")
    before_all, after_all, flip_all = [], [], []
    for t in cw10:
        train = batches(t, 50, 1)  # what a task's training batches route to
        voted = {int(route(queries(b)).mode().values) for b in train}
        per_window = torch.cat([route(queries(b)) for b in train])
        counts = torch.bincount(per_window, minlength=len(cw10)).float() / len(per_window)
        trained_after = {i for i in range(len(cw10)) if counts[i] >= 0.01}  # took at least 1% of its windows
        held = batches(t, 20, 2)
        ev = torch.cat([route(queries(b)) for b in held])
        before = float(np.mean([int(e) not in voted for e in ev]))
        after = float(np.mean([int(e) not in trained_after for e in ev]))
        flips = float(torch.cat([route(queries(b, bf16=True)) != route(queries(b)) for b in held]).float().mean())
        before_all.append(before), after_all.append(after), flip_all.append(flips)
        print(f"| {t} | {sorted(voted)} | {100 * before:.1f}% | {100 * after:.1f}% | {100 * flips:.2f}% |")
    print(f"| mean | | {100 * np.mean(before_all):.1f}% | {100 * np.mean(after_all):.1f}% | {100 * np.mean(flip_all):.2f}% |")

if args.what == "targets":
    from dtune.data.storage import read_episodes, resolve_sources
    from dtune.tasks import get_task

    print("| task | registry default (`dtune evaluate` on a base checkpoint, before) | best of the first 20 episodes "
          "(adapt/continual with --max-episodes 20, before) | best of the whole dataset (every path, after) |")
    print("|---|---|---|---|")
    for t in cw10:
        eps = read_episodes(args.data_dir, t, resolve_sources(args.data_dir, [t])[t])
        returns = [float(r.sum()) for r in np.split(eps["rewards"], np.cumsum(eps["lengths"])[:-1])]
        print(f"| {t} | {get_task(t).target_return:.0f} | {max(returns[:20]):.1f} | {max(returns):.1f} |")
