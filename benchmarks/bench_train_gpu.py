"""Training speed on a CUDA GPU: the engine's GPU measures A/B, one at a time, against the engine
before them (the reference, measured in the same run), for the presets at the paper's batch; then
`--compile`; then where the time goes (torch's profiler) and the share of the GPU's measured
bf16 matmul peak.

The measures: no waiting (metrics stay on the GPU until a row is logged, and the padding flag
is read on the host; before, the host read them from the GPU at every update and so waited for
it), fused AdamW (a few kernels per update instead of several per parameter tensor), and one
tried and left out of the engine: pinned batches (asynchronous copies). Variants are timed in
turn, `--rounds` times, best kept.

Batches are made up (the Meta-World + DMC layout: 154-dim states, 6 action dims, every tenth
window left-padded) and cycled, so the figures are the engine's and the model's, not the
sampler's (`bench_sampler.py`: about 1 ms for a batch of 256 from 40 tasks, on the host).

    python benchmarks/bench_train_gpu.py [--models small,paper] [--kind mddt] [--batch 512]
        [--steps 100] [--rounds 3] [--no-compile]
"""

import argparse
import time

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from _common import race, timed
from dtune.models import build_model, preset
from dtune.runtime.device import autocast
from dtune.train.engine import ActionLoss, OptimSettings, Trainer, to_torch
from dtune.train.optim import make_optimizer

NOW = "no waiting, fused AdamW (the engine now)"
VARIANTS = {  # label: (wait, pin, fused)
    "host waits every update, foreach AdamW (reference: the engine before)": (True, False, False),
    "no waiting": (False, False, False),
    "no waiting, pinned batches": (False, True, False),
    NOW: (False, False, True),
    "no waiting, pinned, fused": (False, True, True),
}


class CycledBatches:
    """A sampler of `n` fixed made-up batches, in turn."""

    def __init__(self, b: int, k: int, state_dim: int = 154, act_dim: int = 6, n: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.batches, self.i = [], 0
        for _ in range(n):
            valid = np.ones((b, k), bool)
            valid[::10, : k // 2] = False  # left padding, as windows at the start of episodes have
            self.batches.append({
                "states": rng.standard_normal((b, k, state_dim), dtype=np.float32),
                "actions": rng.uniform(-1, 1, (b, k, act_dim)).astype(np.float32),
                "action_mask": np.ones((b, act_dim), bool),
                "rtg": rng.standard_normal((b, k), dtype=np.float32),
                "rewards": rng.standard_normal((b, k), dtype=np.float32),
                "timesteps": (rng.integers(0, 190, (b, 1)) + np.arange(k)).astype(np.int64),
                "valid": valid})

    def sample(self):
        self.i = (self.i + 1) % len(self.batches)
        return self.batches[self.i]

    def state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


class Variant(Trainer):
    """The engine with some of its GPU measures taken out: `wait` reads every update's metrics as
    floats and lets the model read the padding flag from the GPU; `pin` pins batches; `fused`
    AdamW."""

    def __init__(self, *a, wait: bool, pin: bool, fused: bool, **kw):
        super().__init__(*a, **kw)
        self.wait, self.pin = wait, pin
        self.optimizer = make_optimizer(self.model, self.optim.lr, self.optim.weight_decay, fused=fused)

    def _batch(self):
        raw = self.sampler.sample()
        if self.pin and self.device.type == "cuda":  # pinned host copies, then asynchronous transfers
            batch = {k: torch.from_numpy(v).pin_memory().to(self.device, non_blocking=True) for k, v in raw.items()}
            batch["all_valid"] = bool(raw["valid"].all())
        else:
            batch = to_torch(raw, self.device)
        if self.wait:
            del batch["all_valid"]
        return batch

    def run(self, n):
        if self.wait:
            self.model.train()  # as `fit` does (it leaves the shared model in eval mode: no dropout)
            for _ in range(n):
                self.train_step()
        else:
            self.fit(self.step + n)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timer(trainer, n):
    def go():
        trainer.run(n)
        sync()
    return go


def matmul_peak(dev, repeat=10):
    n = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync()
    return 2 * n ** 3 * repeat / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="small,paper")
    p.add_argument("--kind", default="mddt", choices=["mddt", "dt"])
    p.add_argument("--batch", type=int, default=512, help="windows per update (the paper: 256 Meta-World + 256 DMC)")
    p.add_argument("--steps", type=int, default=100, help="updates per timing")
    p.add_argument("--rounds", type=int, default=3, help="timings of each variant, taken in turn; best kept")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--device", default="cuda", help="`cpu` only to try the script out")
    args = p.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench_train_gpu.py: no CUDA GPU here, skipped (`--device cpu` only tries the script out)")
        return
    gpu = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"{gpu}, torch {torch.__version__}, batch {args.batch}, bf16 autocast")
    peak = matmul_peak(dev)
    print(f"bf16 matmul peak (square matmul): {peak / 1e12:.0f} TFLOP/s")
    for name in args.models.split(","):
        torch.manual_seed(0)
        cfg = preset(name, kind=args.kind, state_dim=154, act_dim=6)
        model = build_model(cfg).to(dev)
        k, n = cfg.context_len, args.steps
        sampler = CycledBatches(args.batch, k)
        common = dict(optim=OptimSettings(lr=1e-4), total_steps=10 ** 6, device=dev, precision="bf16",
                      log_every=10 ** 6, progress=False)
        trainers = {label: Variant(model, sampler, [ActionLoss()], wait=w, pin=pn, fused=f, **common)
                    for label, (w, pn, f) in VARIANTS.items()}
        per_run = race({label: timer(t, n) for label, t in trainers.items()}, rounds=args.rounds, repeat=1, warmup=1)
        rows = {label: t / n for label, t in per_run.items()}
        if not args.no_compile:
            compiled = Variant(model, sampler, [ActionLoss()], wait=False, pin=False, fused=True, compile=True, **common)
            t0 = time.perf_counter()
            compiled.run(20)
            sync()
            print(f"{name}: compile warm-up {time.perf_counter() - t0:.0f} s")
            go = timer(compiled, n)
            rows["the engine now, --compile"] = min(timed(go) for _ in range(args.rounds)) / n
        batch = to_torch(sampler.sample(), dev)
        with FlopCounterMode(display=False) as fc:
            with autocast(dev, "bf16"):
                loss, _ = model.loss(batch)
            loss.backward()
        flops = fc.get_total_flops()
        tokens = args.batch * k * model.tokens_per_step
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n{name} {args.kind} ({n_params / 1e6:.1f}M parameters, K={k}, {tokens:,} tokens per update, "
              f"{flops / 1e12:.2f} TFLOP forward + backward)")
        ref = next(iter(rows.values()))
        print("| | steps/s | tokens/s | TFLOP/s | share of matmul peak | vs reference |\n|---|---|---|---|---|---|")
        for label, t in rows.items():
            print(f"| {label} | {1 / t:.1f} | {tokens / t:,.0f} | {flops / t / 1e12:.0f} | {flops / t / peak:.1%} "
                  f"| x{ref / t:.2f} |")
        if dev.type != "cuda":
            continue
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            trainers[NOW].run(20)
            sync()
        gpu_us = sum(e.self_device_time_total for e in prof.events()
                     if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
        cpu_us = sum(e.self_cpu_time_total for e in prof.events() if e.device_type == DeviceType.CPU)
        print(f"\nUnder the profiler, per update ({NOW}): GPU kernels {gpu_us / 20 / 1e3:.2f} ms, host operators "
              f"{cpu_us / 20 / 1e3:.2f} ms, update {rows[NOW] * 1e3:.2f} ms unprofiled. Top operators by GPU time:")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=10, max_name_column_width=50))


if __name__ == "__main__":
    main()
