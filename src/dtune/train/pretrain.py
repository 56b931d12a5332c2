"""Pre-training: many tasks, one Decision Transformer.

AdamW (weight decay on weight matrices only), linear warm-up then cosine decay to ``min_lr``,
gradient clipping, bf16 autocast on CPUs that have native bf16 and on CUDA. Checkpoints every
``ckpt_every`` steps and at the end; ``resume`` continues an interrupted run exactly (same
batches, same dropout masks, same losses) because the sampler RNG, the torch RNG and the
optimiser state are all saved. Metrics go to ``metrics.csv`` and ``metrics.jsonl`` (and
TensorBoard with ``tensorboard``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dtune import __version__
from dtune.data.dataset import TrajectoryData, WindowSampler
from dtune.data.storage import data_root
from dtune.models import ModelConfig, build_model, preset
from dtune.train import checkpoint as ckpt


@dataclass
class PretrainConfig:
    """Pre-train a (multi-domain) Decision Transformer on the datasets of many tasks."""

    out: str = "runs/pretrain"
    """Run directory: checkpoints, config.json and logs are written here."""
    tasks: str = "mt40"
    """Training tasks: names or sets, comma separated (``mt40``, ``mt40,dmc10``...)."""
    model: str = "small"
    """Size preset: ``tiny`` (tests), ``small`` (CPU studies), ``paper`` (6 layers, 12 heads, 768)."""
    kind: str = "mddt"
    """``mddt`` (discrete per-dimension action tokens) or ``dt`` (continuous actions)."""
    context_len: int | None = None
    """Context K in timesteps (default: 5 for mddt, 20 for dt)."""
    steps: int = 10_000
    """Optimiser updates."""
    batch_size: int = 64
    """Windows per update (split evenly over the domains present)."""
    lr: float | None = None
    """Peak learning rate (default: the preset's, 1e-3 for tiny/small, 1e-4 for paper as in the paper)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 1000
    """Linear warm-up steps (capped at a tenth of ``steps``)."""
    weight_decay: float = 0.01
    """AdamW weight decay, on weight matrices only."""
    grad_clip: float = 0.25
    """Gradient-norm clip."""
    max_episodes: int | None = None
    """Use only the first N episodes of each task's dataset."""
    seed: int = 0
    """Seed of initialisation, sampling and dropout."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), ``bf16`` or ``fp32``."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu`` or ``cuda``."""
    data_dir: str | None = None
    """Data root (default ``$DTUNE_DATA_DIR`` or ``~/.dtune/datasets``)."""
    log_every: int = 100
    """Steps between metric rows."""
    ckpt_every: int = 1000
    """Steps between checkpoints."""
    resume: bool = False
    """Continue the run in ``out`` from its last checkpoint."""
    tensorboard: bool = False
    """Also log to TensorBoard (``out/tb``)."""
    progress: bool = True
    """Show a progress bar."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, bf16 or fp32")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


PRESET_LR = {"tiny": 1e-3, "small": 1e-3, "paper": 1e-4}


def peak_lr(cfg: PretrainConfig) -> float:
    return cfg.lr if cfg.lr is not None else PRESET_LR.get(cfg.model, 1e-4)


def cosine_lr(step: int, total: int, peak: float, warmup_steps: int, min_lr: float) -> float:
    """Linear warm-up (capped at a tenth of ``total``), then cosine decay to ``min_lr``."""
    warm = min(warmup_steps, max(1, total // 10))
    if step < warm:
        return peak * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: PretrainConfig) -> float:
    return cosine_lr(step, cfg.steps, peak_lr(cfg), cfg.warmup_steps, cfg.min_lr)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: weight decay on weight matrices only (not on
    embeddings, not on L2P/L2M keys); an attached tuner's learning-rate multipliers become each
    group's ``lr_scale`` (applied by :func:`set_lr`). Decayed groups come first."""
    tuner = getattr(model, "tuner", None)
    scales = tuner.lr_scales() if tuner is not None else {}
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.dim() >= 2 and "embed_" not in name and not name.endswith("keys")
            scale = next((v for k, v in scales.items() if name.endswith(k)), 1.0)
            groups.setdefault((decay, scale), []).append(p)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    ordered = sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
    return torch.optim.AdamW([{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
                              for (decay, scale), ps in ordered], lr=lr, betas=(0.9, 0.95))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


class MetricsLog:
    """Append-only CSV + JSONL metrics (truncated back to ``step`` when a run resumes)."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool):
        self.csv, self.jsonl = run_dir / "metrics.csv", run_dir / "metrics.jsonl"
        if resume_step is None:
            self.csv.unlink(missing_ok=True)
            self.jsonl.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def _truncate(self, step: int):
        if self.jsonl.exists():
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            rows = [r for r in rows if r["step"] <= step]
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
            self.csv.unlink(missing_ok=True)
            for r in rows:
                self._csv_row(r)

    def _csv_row(self, row: dict):
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def write(self, row: dict):
        self._csv_row(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _check_resume(out: Path, cfg: PretrainConfig, model_cfg: ModelConfig) -> None:
    saved = ckpt.read_config(out)
    keep = ("tasks", "model", "kind", "context_len", "batch_size", "lr", "min_lr", "warmup_steps",
            "weight_decay", "grad_clip", "max_episodes", "seed")
    diff = [f"{k}: {saved['train'].get(k)!r} -> {getattr(cfg, k)!r}" for k in keep if saved["train"].get(k) != getattr(cfg, k)]
    if saved["model"] != model_cfg.to_dict():
        diff.append("model config")
    if diff:
        raise ckpt.CheckpointError(f"--resume with settings that differ from the run in {out}: {'; '.join(diff)}")


def pretrain(cfg: PretrainConfig) -> dict:
    """Train; returns a summary dict (also written to ``out/summary.json``)."""
    from tqdm import tqdm

    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    overrides = {} if cfg.context_len is None else {"context_len": cfg.context_len}
    model_cfg = preset(cfg.model, cfg.kind, **overrides)
    if cfg.resume:
        _check_resume(out, cfg, model_cfg)
    elif (out / ckpt.WEIGHTS).exists():
        raise ckpt.CheckpointError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    root = data_root(cfg.data_dir)
    data = TrajectoryData(root, cfg.tasks, cfg.max_episodes)
    max_t = max(int(d.timesteps.max()) for d in data.domains) + 1
    if max_t > model_cfg.max_timestep:
        raise ValueError(f"episodes of {max_t} steps exceed the model's timestep table ({model_cfg.max_timestep})")

    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    model.state_mean.copy_(torch.from_numpy(data.state_mean))
    model.state_std.copy_(torch.from_numpy(data.state_std))
    model = model.to(device)
    optimizer = make_optimizer(model, peak_lr(cfg), cfg.weight_decay)
    sampler = WindowSampler(data, model_cfg.context_len, cfg.batch_size, seed=cfg.seed)
    step = 0
    if cfg.resume:
        loaded, _ = ckpt.load_model(out, device)
        model.load_state_dict(loaded.state_dict())
        step, sampler_state = ckpt.load_train_state(out, optimizer)
        sampler.set_state(sampler_state)
    out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    config = {
        "dtune_version": __version__, "model": model_cfg.to_dict(), "train": asdict(cfg),
        "resolved": {"device": str(device), "precision": precision, "lr": peak_lr(cfg), "data_dir": str(root), "n_params": n_params},
        "tasks": data.tasks, "task_info": data.task_info,
    }
    ckpt.atomic_write_text(out / ckpt.CONFIG, json.dumps(config, indent=1))
    log = MetricsLog(out, step if cfg.resume else None, cfg.tensorboard)
    tokens_per_batch = cfg.batch_size * model_cfg.context_len * model.tokens_per_step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", disable=not cfg.progress, unit="step")
    acc: dict[str, float] = {}
    n_acc, t_log, t_start, start_step = 0, time.perf_counter(), time.perf_counter(), step
    while step < cfg.steps:
        lr = lr_at(step, cfg)
        set_lr(optimizer, lr)
        batch = to_torch(sampler.sample(), device)
        with autocast:
            loss, metrics = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        for k, v in metrics.items():
            acc[k] = acc.get(k, 0.0) + float(v)
        acc["grad_norm"] = acc.get("grad_norm", 0.0) + float(gnorm)
        n_acc += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            row = {"step": step, **{k: v / n_acc for k, v in acc.items()}, "lr": lr,
                   "tokens_per_s": n_acc * tokens_per_batch / (now - t_log), "elapsed_s": now - t_start}
            log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            acc, n_acc, t_log = {}, 0, now
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            ckpt.save_weights(model, out, step)
            ckpt.save_train_state(out, step, optimizer, sampler.state())
    bar.close()
    log.close()
    wall = time.perf_counter() - t_start
    summary = {"steps": step, "steps_this_session": step - start_step, "wall_s": wall,
               "steps_per_s": (step - start_step) / max(wall, 1e-9), "n_params": n_params,
               "precision": precision, "device": str(device), "train_steps_in_data": data.steps}
    ckpt.atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return summary
