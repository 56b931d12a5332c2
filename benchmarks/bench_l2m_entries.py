"""L2M's pool entries on a batch that mixes entries (an evaluation batch: the environments of many
tasks, most unmodulated, the rest on a few entries): a copy of the chosen entry's weights per
sample, contracted with einsum (what dtune did before 2026-12-05, the reference here), against one
product per distinct entry (`dtune.tuners.l2m`). Both compute the same output; the best time of
each over `--rounds` is printed with the ratio, for a LoRA entry (`PoolLora`) and a whole-Linear
entry (`PoolDelta`, `entry_modules` io).

    python benchmarks/bench_l2m_entries.py                      # 80 environments, 4 tasks on entries
    python benchmarks/bench_l2m_entries.py --batch 40 --entries 10
"""

import argparse

import torch

from _common import race
from dtune.tuners.l2m import PoolDelta, PoolLora


def gathered_lora(pool: PoolLora, x, idx):
    on, sel = idx >= 0, idx.clamp_min(0)
    h = torch.einsum("bti,bri->btr", x, pool.lora_A[sel])
    return torch.einsum("btr,bor->bto", h, pool.lora_B[sel]) * (pool.scaling * on.to(x.dtype))[:, None, None]


def gathered_linear(pool: PoolDelta, x, idx):
    on, sel = (idx >= 0).to(x.dtype)[:, None, None], idx.clamp_min(0)
    return (torch.einsum("bti,boi->bto", x, pool.weight[sel]) + pool.bias[sel][:, None]) * on


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=80, help="windows (environments) in the batch")
    p.add_argument("--context", type=int, default=60, help="tokens per window")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--entries", type=int, default=4, help="distinct entries among the windows")
    p.add_argument("--unmodulated", type=float, default=0.5, help="share of windows on no entry")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    base = torch.nn.Linear(args.width, 4 * args.width)
    lora, linear = PoolLora(base, 10, 32, 64.0, 0.0), PoolDelta(base, 10)
    with torch.no_grad():
        for prm in list(lora.parameters()) + list(linear.parameters()):
            prm.normal_()
    x = torch.randn(args.batch, args.context, args.width)
    off = int(args.batch * args.unmodulated)
    idx = torch.cat([torch.full((off,), -1), torch.arange(args.batch - off) % args.entries])[torch.randperm(args.batch)]
    with torch.no_grad():
        for name, pool, ref in (("LoRA entry (r 32)", lora, gathered_lora), ("Linear entry", linear, gathered_linear)):
            new = (lambda: pool(x, idx)) if name.startswith("LoRA") else (lambda: pool(x, idx, x.dtype))
            assert torch.allclose(new(), ref(pool, x, idx), atol=1e-3, rtol=1e-4)
            t = race({"gathered": lambda: ref(pool, x, idx), "per entry": new}, rounds=args.rounds, repeat=10, warmup=2)
            print(f"{name}, {args.batch} windows x {args.context} tokens, {args.entries} entries + {off} unmodulated: "
                  f"a weight copy per window {t['gathered'] * 1e3:.1f} ms | one product per entry "
                  f"{t['per entry'] * 1e3:.1f} ms | x{t['gathered'] / t['per entry']:.2f}")


if __name__ == "__main__":
    main()
