"""What a LaMo update costs against the classic DT's, and where the difference goes.

The arms of `results/lamo/commands.sh` at its shapes (halfcheetah: 17-dim states, 6 actions,
K = 20, batch 64, bf16 autocast, one torch thread as the studies run): the classic DT (3 blocks,
1 head, width 128, every weight trains), LaMo on the committed Brown LM (`results/lamo/lm`: 3
blocks, 4 heads, width 128, vocabulary 8,192; LoRA r 16 on q/k/v with dropout 0.1, MLP embeddings
and head, language loss on 2 blocks of 256 tokens), and LaMo without the language loss, then also
with linear embeddings, then also without LoRA (every weight trained: the LM's 4-head blocks
alone), to split the difference. Random windows and token ids: the cost does not depend
on the values. Each arm is a full `Trainer` update (forward, backward, clip, fused AdamW), timed
in turn, best of three rounds.

    python benchmarks/bench_lamo.py [--lm results/lamo/lm] [--threads 1]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from _common import race
from dtune.data.text import BlockSampler
from dtune.recipes.lamo import LamoConfig, _base_model, attach_tuning
from dtune.train.engine import ActionLoss, OptimSettings, Trainer
from dtune.train.language import LanguageLoss

STATE, ACT, HORIZON = 17, 6, 1000


class RandomWindows:
    """A sampler of random K-step windows with the keys of `WindowSampler`'s batches."""

    def __init__(self, batch: int, k: int, seed: int = 0):
        self.rng, self.b, self.k = np.random.default_rng(seed), batch, k

    def sample(self) -> dict:
        b, k, r = self.b, self.k, self.rng
        start = r.integers(0, HORIZON - k, (b, 1))
        return {"states": r.standard_normal((b, k, STATE), dtype=np.float32),
                "actions": r.uniform(-1, 1, (b, k, ACT)).astype(np.float32),
                "rtg": r.standard_normal((b, k), dtype=np.float32), "rewards": r.standard_normal((b, k), dtype=np.float32),
                "timesteps": (start + np.arange(k)).astype(np.int64), "valid": np.ones((b, k), bool),
                "task_id": np.zeros(b, np.int64), "action_mask": np.ones((b, ACT), bool)}

    def state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass


def trainer(lm: str | None, language: bool, mlp: bool, batch: int, k: int, lora: bool = True) -> Trainer:
    cfg = LamoConfig(lm=lm, mlp_embeddings=mlp, language_weight=0.1 if language else 0.0, context_len=k,
                     tuning="lora" if lora and lm is not None else "full")
    model = _base_model(cfg, STATE, ACT, HORIZON)
    attach_tuning(model, cfg)  # as `dtune lamo` does
    objectives = [ActionLoss()]
    if language:
        ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, 200_000)
        objectives.append(LanguageLoss(BlockSampler(ids, 256, 2, seed=0), 0.1))
    optim = OptimSettings(lr=1e-4, min_lr=1e-4, warmup_steps=10, weight_decay=1e-5, grad_clip=0.25)
    return Trainer(model, RandomWindows(batch, k), objectives, optim, 10_000, torch.device("cpu"), "bf16",
                   progress=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lm", default=str(Path(__file__).resolve().parent.parent / "results" / "lamo" / "lm"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arms = {"classic DT (reference)": trainer(None, False, False, args.batch, args.context),
            "LaMo": trainer(args.lm, True, True, args.batch, args.context),
            "LaMo, no language loss": trainer(args.lm, False, True, args.batch, args.context),
            "LaMo, no language loss, linear embeddings": trainer(args.lm, False, False, args.batch, args.context),
            "  the same, every weight trained, no LoRA": trainer(args.lm, False, False, args.batch, args.context, lora=False)}
    best = race({name: t.train_step for name, t in arms.items()}, rounds=3, repeat=15, warmup=3)
    ref = best["classic DT (reference)"]
    print(f"batch {args.batch}, K {args.context}, bf16 autocast, {args.threads} torch thread(s); LM {args.lm}")
    print(f"{'arm':45s} {'s/update':>9s} {'x DT':>6s}")
    for name, s in best.items():
        print(f"{name:45s} {s:9.4f} {s / ref:6.2f}")


if __name__ == "__main__":
    main()
