"""Where the time of a `small` MDDT training step goes: the operator table of torch's profiler,
the step's FLOPs (torch's FlopCounterMode) and the share of this CPU's measured matmul peak that
the step reaches, eager and with `--compile`.

    python benchmarks/profile_train.py [--batch 64] [--no-compile]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from _common import matmul_rate, timed
from dtune.models import build_model, preset
from dtune.runtime.device import autocast
from dtune.train.optim import make_optimizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    b, k, s, a = args.batch, 5, 154, 6
    model = build_model(preset("small", state_dim=s, act_dim=a)).train()
    batch = {"states": torch.randn(b, k, s), "actions": torch.rand(b, k, a) * 2 - 1,
             "action_mask": torch.ones(b, a, dtype=torch.bool), "rtg": torch.randn(b, k), "rewards": torch.randn(b, k),
             "timesteps": torch.randint(0, 190, (b, 1)) + torch.arange(k), "valid": torch.ones(b, k, dtype=torch.bool)}
    opt = make_optimizer(model, 1e-3, 0.01)
    cpu = torch.device("cpu")

    def stepper(loss_fn):
        def step():
            with autocast(cpu, "bf16"):
                loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
        return step

    eager = stepper(lambda: model.loss(batch)[0])
    eager()
    with FlopCounterMode(display=False) as fc:
        eager()
    flops = fc.get_total_flops()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            eager()
    print(f"small MDDT, batch {b}, K {k}, {b * k * model.tokens_per_step} tokens per step, bf16 autocast")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    peak = matmul_rate(torch.bfloat16, 2048, 2048, 2048)  # the practical peak of this CPU
    rows = [("eager", timed(eager, repeat=args.steps, warmup=2))]
    if not args.no_compile:
        compiled = stepper(torch.compile(lambda: model.loss(batch)[0]))
        t0 = time.perf_counter()
        compiled()
        print(f"compile warm-up: {time.perf_counter() - t0:.0f} s")
        rows.append(("--compile", timed(compiled, repeat=args.steps, warmup=2)))
    print(f"step: {flops / 1e9:.2f} GFLOP (forward + backward); bf16 matmul peak {peak / 1e9:.0f} GFLOP/s (2048^3)")
    for name, t in rows:
        print(f"{name:10s}: {1 / t:5.1f} steps/s, {flops / t / 1e9:6.1f} GFLOP/s = {flops / t / peak:.1%} of the matmul peak")
    if len(rows) == 2:
        print(f"--compile / eager: x{rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
