"""Pre-training: many tasks, one Decision Transformer.

The run's input layout comes from its tasks (see :class:`dtune.tasks.InputLayout`) and is stored
in `config.json`. Training runs on the engine (:mod:`dtune.train.engine`): AdamW (weight decay
on weight matrices only), linear warm-up then cosine decay to `min_lr`, gradient clipping,
bf16 autocast on CPUs with native bf16 and on CUDA. Checkpoints every `ckpt_every` steps, at
the end and on Ctrl-C / SIGTERM; `resume` continues exactly (same batches, dropout masks and
losses as an uninterrupted run). Metrics go to `metrics.csv` and `metrics.jsonl` (and
TensorBoard with `tensorboard`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from dtune import __version__
from dtune.data.dataset import STATE_CLIP, TrajectoryData, WindowSampler, state_clip_value
from dtune.models import ModelConfig, build_model, preset
from dtune.models.io import WEIGHTS, load_model, read_config, run_layout, save_weights
from dtune.recipes.common import (abspath, check_resume, dataset_statistics, fit, recorded_sources, resolve_data_dir,
                                  resume_command, resume_config, start_fresh, trained_precision)
from dtune.runtime.device import resolve_device, resolve_precision
from dtune.runtime.dist import init_distributed, main_first, shutdown
from dtune.runtime.io import atomic_write_json
from dtune.runtime.runs import claim_out
from dtune.tasks import layout_for
from dtune.train.engine import STATE_J, ActionLoss, OptimSettings, Trainer, read_state_meta
from dtune.train.log import MetricsLog
from dtune.train.optim import PRESET_LR


@dataclass
class ArchConfig:
    """Changes to the size preset's backbone (unset: the preset's value)."""

    n_layer: int | None = None
    """Number of transformer blocks."""
    n_head: int | None = None
    """Attention heads per block."""
    n_embd: int | None = None
    """Width (divisible by n_head)."""
    dropout: float | None = None
    """Dropout on embeddings, attention weights and residual branches."""


@dataclass
class PretrainConfig:
    """Pre-train a (multi-domain) Decision Transformer on the datasets of many tasks."""

    out: str = "runs/pretrain"
    """Run directory: checkpoints, config.json and logs are written here."""
    tasks: str = "mt40"
    """Training tasks: names or sets, comma separated (`mt40`, `mt40,dmc10`...)."""
    source: str | None = None
    """Dataset source of the tasks (`expert-noise`, `sac-replay`, `random`...; a comma-separated list
    takes per task the first it has, e.g. `expert-noise,sac-replay` for MT40 + DMC10; unset: the one
    each task has)."""
    model: Literal["tiny", "small", "paper"] = "small"
    """Size preset: `tiny` (tests), `small` (CPU studies), `paper` (6 layers, 12 heads, width 768)."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    """Changes to the preset's backbone."""
    kind: Literal["mddt", "dt"] = "mddt"
    """`mddt` (discrete per-dimension action tokens) or `dt` (continuous actions)."""
    context_len: int | None = None
    """Context K in timesteps (unset: 5 for mddt, 20 for dt)."""
    layout: Literal["suite", "tasks"] = "suite"
    """Input layout: `suite` (every state slot and the largest action size of the tasks' suites,
    so any task of those suites can be adapted to later) or `tasks` (only what these tasks need)."""
    steps: int = 10_000
    """Optimiser updates."""
    batch_size: int = 64
    """Windows per update (split evenly over the suites present)."""
    lr: float | None = None
    """Peak learning rate (unset: the preset's, 1e-3 for tiny/small, 1e-4 for paper as in the paper)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 1000
    """Linear warm-up steps (capped at a tenth of `steps`)."""
    weight_decay: float = 0.01
    """AdamW weight decay, on weight matrices only."""
    grad_clip: float = 0.25
    """Gradient-norm clip."""
    max_episodes: int | None = None
    """Use only the first N episodes of each task's dataset (after `replay_from`), in collection order: for
    a SAC replay buffer (`sac-replay`) the earliest, least skilled ones (`data_ratio` draws a random subset)."""
    replay_from: float = 0.0
    """Train on each replay buffer's later episodes: drop the first `int(replay_from x E)` of its
    `E` episodes (0.5: its second half, the agent after it learned). Applies to replay-buffer
    datasets only (`sac-replay`, `medium-replay`; other datasets are whole; a run with none is
    refused), before `max_episodes` and `data_ratio`. A 100K-step SAC buffer is about half learning phase, the paper's 1M-step
    buffers a tenth. Evaluation targets and normalised scores keep the whole dataset's references."""
    data_ratio: float = 1.0
    """Keep this fraction of each task's whole trajectories, a random subset seeded by `seed`
    (LaMo's low-data regime: 0.005, 0.01, 0.1, 1); the same seed gives the same subset in every run."""
    state_clip: float | None = STATE_CLIP
    """Clip the z-scored states to this many standard deviations, in training and in every later
    use of the model (kept in its config; stable-baselines3's VecNormalize bound); 0 or None: no
    clipping (runs made before 2026-12-06 have none). Bounds the inputs of a new task whose states
    lie far outside a feature's pre-training spread."""
    seed: int = 0
    """Seed of initialisation, sampling and dropout."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto` (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), `bf16` or `fp32`."""
    device: str = "auto"
    """`auto` (CUDA if available), `cpu`, `cuda` or `cuda:N`."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""
    log_every: int = 100
    """Steps between metric rows."""
    ckpt_every: int = 1000
    """Steps between checkpoints."""
    resume: bool = False
    """Continue the run in `out` from its last checkpoint, with its own settings."""
    tensorboard: bool = False
    """Also log to TensorBoard (`out/tb`)."""
    compile: bool = False
    """Run the loss through `torch.compile` (inductor): faster updates after a warm-up of about a
    minute (CPU needs a C++ compiler); numerically close to, not identical with, eager runs."""
    progress: bool = True
    """Show a progress bar."""

    LEGACY: ClassVar[dict] = {"state_clip": None}
    """Runs made before `state_clip` existed were not clipped."""


RESUME_KEYS = ("tasks", "model", "kind", "context_len", "batch_size", "lr", "min_lr", "warmup_steps",
               "weight_decay", "grad_clip", "max_episodes", "replay_from", "data_ratio", "source", "state_clip", "seed")

DATA_FACTS = ("episodes", "steps", "return_mean", "return_max")
"""What a resumed run checks of each task's data against what the run recorded when it started."""


def peak_lr(cfg: PretrainConfig) -> float:
    return cfg.lr if cfg.lr is not None else PRESET_LR.get(cfg.model, 1e-4)


def model_config(cfg: PretrainConfig, layout):
    overrides = {"state_clip": cfg.state_clip or None}
    if cfg.context_len is not None:
        overrides["context_len"] = cfg.context_len
    mc = preset(cfg.model, cfg.kind, state_dim=layout.state_dim, act_dim=layout.act_dim, **overrides)
    arch = cfg.arch if isinstance(cfg.arch, ArchConfig) else ArchConfig(**(cfg.arch or {}))
    for k, v in asdict(arch).items():
        if v is not None:
            setattr(mc.gpt, k, v)
    mc.gpt.__post_init__()
    return mc


def resume(out: str, **overrides) -> dict:
    """Continue the pre-training run in `out` with its own settings and `overrides` (e.g.
    `steps=60000` to extend it): what `dtune pretrain --out OUT --resume ...` does."""
    return pretrain(resume_config(PretrainConfig, out, "train", "pretrain", **overrides))


def pretrain(cfg: PretrainConfig) -> dict:
    """Train; returns a summary dict (also written to `out/summary.json`). Under `torchrun`
    with several processes, trains with DistributedDataParallel (see :mod:`dtune.runtime.dist`)."""
    if cfg.steps <= 0:
        raise ValueError(f"--steps must be positive, got {cfg.steps}")
    dist = init_distributed(cfg.device)
    try:
        return _pretrain(cfg, dist)
    finally:
        shutdown(dist)


def _pretrain(cfg: PretrainConfig, dist) -> dict:
    main = dist is None or dist.main
    if dist is not None and cfg.batch_size % dist.world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world} processes")
    out = claim_out(cfg.out, "pretrain", cfg.resume)
    cfg.out = str(out)
    device = dist.device if dist is not None else resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    saved = None
    cfg.state_clip = state_clip_value(cfg.state_clip, "--state-clip")
    if cfg.resume:
        saved = read_config(out)
        if "state_clip" in saved["train"]:
            saved["train"]["state_clip"] = state_clip_value(saved["train"]["state_clip"])
        state = read_state_meta(out)
        if state is None or not (out / WEIGHTS).exists():
            raise ValueError(f"--resume: the run in {out} has no checkpoint yet (it was stopped before its first one); "
                             "run the same command without --resume to start it over")
        check_resume(saved["train"], cfg, RESUME_KEYS, out)
        if state["step"] >= cfg.steps:
            print(f"the run in {out} is finished ({state['step']} steps); extend it with "
                  f"`{resume_command('pretrain', out)} --steps N` (N > {state['step']})")
            return {"steps": state["step"], "steps_this_session": 0, "finished": True}
        layout = run_layout(saved)
        recorded = saved.get("resolved", {}).get("data_dir")
        root = Path(recorded) if cfg.data_dir == saved["train"].get("data_dir") and recorded else resolve_data_dir(cfg.data_dir)
    else:
        if main:
            start_fresh(out, "pretrain", (WEIGHTS, STATE_J))
        if dist is not None:
            dist.barrier()
        layout = layout_for(cfg.tasks, cfg.layout)
        root = resolve_data_dir(cfg.data_dir)
    cfg.data_dir = abspath(cfg.data_dir)
    model_cfg = model_config(cfg, layout)
    if saved is not None and ModelConfig(**saved["model"]).to_dict() != model_cfg.to_dict():
        raise ValueError(f"--resume with a model config that differs from the run in {out}")

    recorded_info = saved.get("task_info", {}) if saved is not None else {}
    source = (recorded_sources(saved) if saved is not None else None) or cfg.source  # the data the run trained on
    with main_first(dist):  # rank 0 builds the data cache, the other ranks open it
        data = TrajectoryData(root, cfg.tasks, cfg.max_episodes, layout=layout, source=source,
                              data_ratio=cfg.data_ratio, ratio_seed=cfg.seed, replay_from=cfg.replay_from,
                              state_clip=model_cfg.state_clip)
    # evaluation statistics (target returns) of each task's whole dataset, not of the part trained on
    task_info = {t: {**data.task_info[t], **dataset_statistics(root, t, data.sources[t])} for t in data.tasks}
    changed = [t for t in data.tasks if t in recorded_info and any(
        k in recorded_info[t] and recorded_info[t][k] != task_info[t][k] for k in DATA_FACTS)]
    if changed:
        raise ValueError(f"--resume: the data of {', '.join(changed)} under {root} is not what the run in {out} trained "
                         f"on (episodes, steps or returns differ from its config.json: the dataset was replaced); "
                         "point --data-dir at the original data, or start a new run")
    if data.max_timestep > model_cfg.max_timestep:
        raise ValueError(f"episodes of {data.max_timestep} steps exceed the model's timestep table ({model_cfg.max_timestep})")

    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    model.state_mean.copy_(torch.from_numpy(data.state_mean))
    model.state_std.copy_(torch.from_numpy(data.state_std))
    model = model.to(device)
    sampler = WindowSampler(data, model_cfg.context_len, cfg.batch_size, seed=cfg.seed)
    optim = OptimSettings(peak_lr(cfg), cfg.min_lr, cfg.warmup_steps, cfg.weight_decay, cfg.grad_clip)
    trainer = Trainer(model, sampler, [ActionLoss()], optim, cfg.steps, device, precision, log_every=cfg.log_every,
                      desc="pretrain", progress=cfg.progress and main, dist=dist, compile=cfg.compile,
                      tokens_per_batch=cfg.batch_size * model_cfg.context_len * model.tokens_per_step)
    if cfg.resume:
        model.load_state_dict(load_model(out, device)[0].state_dict())
        trainer.load(out, weights_file=WEIGHTS)
    start_step = trainer.step
    n_params = sum(p.numel() for p in model.parameters())
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {
            "kind": "pretrain", "dtune_version": __version__, "model": model_cfg.to_dict(), "train": asdict(cfg),
            "layout": layout.to_dict(),
            "resolved": {"device": str(device), "precision": trained_precision(out, cfg.resume, precision, cfg.precision),
                         "lr": peak_lr(cfg), "data_dir": str(root),
                         "n_params": n_params, "processes": 1 if dist is None else dist.world},
            "tasks": data.tasks, "task_info": task_info,
        })
        trainer.log = MetricsLog(out, (lambda r: r["step"] <= start_step) if cfg.resume else None, cfg.tensorboard)

    def checkpoint(step: int):
        if trainer.main:
            save_weights(model, out, step)
        trainer.save(out)

    t0 = time.perf_counter()
    fit(trainer, cfg.steps, checkpoint, cfg.ckpt_every, "pretrain", out, f"step {{step}} of {cfg.steps}")
    if cfg.steps % cfg.ckpt_every:
        checkpoint(cfg.steps)
    wall = time.perf_counter() - t0
    summary = {"steps": trainer.step, "steps_this_session": trainer.step - start_step, "wall_s": wall,
               "train_s": trainer.train_s,  # the run's training seconds, over every invocation
               "steps_per_s": (trainer.step - start_step) / max(wall, 1e-9), "n_params": n_params,
               "precision": precision, "device": str(device), "train_steps_in_data": data.steps, "out": str(out),
               "processes": 1 if dist is None else dist.world}
    if main:
        trainer.log.close()
        atomic_write_json(out / "summary.json", summary)
    return summary


__all__ = ["PretrainConfig", "ArchConfig", "pretrain", "resume", "peak_lr"]
