"""Adaptation: one pre-trained model, one new task, any method of ``dtune.tuners``.

The base model keeps its state normalisation (the new task's states are z-scored with the
pre-training statistics). The method's parameters train with AdamW (warm-up + cosine, gradient
clipping, bf16 autocast as in pre-training); the loss is the task loss plus the method's own
term (key-pull loss of L2P/L2M) plus the L2/EWC penalty when switched on. Afterwards the
adapted model is evaluated on the new task and (``pretrain_eval``) on the pre-training tasks,
whose score before adaptation is computed once per checkpoint and evaluation setting and cached
in ``CHECKPOINT/eval_cache/``.

Outputs in ``out``: ``adapter.safetensors`` + ``adapter.json`` (only what the method trained),
``config.json`` (every setting, resolved), ``metrics.csv``/``metrics.jsonl``, ``result.json``
and ``result.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dtune import __version__
from dtune.data.dataset import TrajectoryData, WindowSampler
from dtune.data.storage import data_root
from dtune.tasks import get_task
from dtune.train import checkpoint as ckpt
from dtune.train.pretrain import (PRESET_LR, MetricsLog, cosine_lr, make_optimizer, resolve_device, resolve_precision,
                                  set_lr, to_torch)

@dataclass
class TuneSettings:
    """What single-task and continual adaptation share: the base, the method, the optimiser,
    the evaluation seed and length, the machine."""

    checkpoint: str = "runs/pretrain"
    """Run directory of the pre-trained model (from ``dtune pretrain``)."""
    method: str = "l2m"
    """Adaptation method or named variant (``dtune adapt --list-methods``)."""
    batch_size: int = 64
    """Windows per update."""
    lr: float | None = None
    """Peak learning rate of each task's schedule (default: 1e-3 for tiny/small base models, 1e-4
    for paper, the reference's)."""
    min_lr: float = 1e-6
    """Learning rate at the end of each task's cosine decay."""
    warmup_steps: int = 100
    """Linear warm-up steps at the start of each task (capped at a tenth of its steps)."""
    weight_decay: float = 0.01
    """AdamW weight decay on weight matrices."""
    grad_clip: float = 0.25
    """Gradient-norm clip."""
    max_episodes: int | None = None
    """Use only the first N episodes of each task's dataset."""
    seed: int = 0
    """Seed of the method's initialisation, sampling and dropout."""
    eval_seed: int = 1000
    """Base seed of the evaluation episodes."""
    horizon: int | None = None
    """Evaluation episode length (default: each task's)."""
    precision: str = "auto"
    """``auto``, ``bf16`` or ``fp32``."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    data_dir: str | None = None
    """Data root (default: ``$DTUNE_DATA_DIR``, else the data root the checkpoint was trained from
    if it still exists, else ``~/.dtune/datasets``)."""
    log_every: int = 100
    """Steps between metric rows."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class AdaptConfig(TuneSettings):
    """Adapt a pre-trained checkpoint to a new task with one adaptation method."""

    task: str = "hammer-v3"
    """The new task."""
    out: str = "runs/adapt"
    """Output directory (must not hold an adapter yet)."""
    steps: int = 2000
    """Optimiser updates."""
    eval_episodes: int = 10
    """Evaluation episodes on the new task (0 = no evaluation)."""
    pretrain_eval: bool = True
    """Also evaluate the pre-training tasks before and after (retention)."""
    pretrain_episodes: int = 5
    """Evaluation episodes per pre-training task."""


def peak_lr(cfg: TuneSettings, run_config: dict) -> float:
    """``cfg.lr``, else the pre-training preset's default."""
    return cfg.lr if cfg.lr is not None else PRESET_LR.get(run_config["train"].get("model"), 1e-4)


def resolve_data_dir(data_dir: str | None, run_config: dict) -> Path:
    if data_dir is None and not os.environ.get("DTUNE_DATA_DIR"):
        recorded = run_config.get("resolved", {}).get("data_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return data_root(data_dir)


def train_steps(model, sampler, optimizer, anchor, cfg, peak: float, total: int, start: int, stop: int, device,
                autocast, log, bar, row_extra: dict | None = None, on_step=None) -> None:
    """Optimiser updates ``start+1 .. stop`` of a schedule of ``total`` steps on ``sampler``'s task:
    task loss + the tuner's own loss + the anchor's penalty. ``cfg`` supplies ``warmup_steps``,
    ``min_lr``, ``grad_clip`` and ``log_every``; ``on_step(step)`` runs after every update
    (checkpoints)."""
    tuner = model.tuner
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    acc: dict[str, float] = {}
    n_acc, t0 = 0, time.perf_counter()
    for step in range(start + 1, stop + 1):
        lr = cosine_lr(step - 1, total, peak, cfg.warmup_steps, cfg.min_lr)
        set_lr(optimizer, lr)
        batch = to_torch(sampler.sample(), device)
        with autocast:
            loss, metrics = model.loss(batch)
        aux = tuner.aux_loss()
        if aux is not None:
            loss = loss + aux
            metrics["key_loss"] = aux.detach()
        if anchor.active:
            pen = anchor.penalty(model)
            loss = loss + pen
            metrics["penalty"] = pen.detach()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        for k, v in metrics.items():
            acc[k] = acc.get(k, 0.0) + float(v)
        n_acc += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == stop:
            row = {**(row_extra or {}), "step": step, **{k: v / n_acc for k, v in acc.items()}, "lr": lr,
                   "steps_per_s": n_acc / max(time.perf_counter() - t0, 1e-9)}
            log.write(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            acc, n_acc, t0 = {}, 0, time.perf_counter()
        if on_step is not None:
            on_step(step)
    model.eval()


def model_stats(model) -> tuple[np.ndarray, np.ndarray]:
    return model.state_mean.cpu().numpy(), model.state_std.cpu().numpy()


def pretrain_batches(model, run_config: dict, root: Path, n: int, batch_size: int, seed: int):
    """``n`` batches of the checkpoint's own pre-training data (for EWC's Fisher, L2M's pre-training keys)."""
    data = TrajectoryData(root, run_config["tasks"], run_config["train"].get("max_episodes"),
                          state_stats=model_stats(model))
    sampler = WindowSampler(data, model.cfg.context_len, batch_size, seed=seed + 7919)
    return data, [sampler.sample() for _ in range(n)]


def fit_pretrain_keys(model, tuner, run_config: dict, root: Path, device, seed: int, batches: int = 40):
    """One "no modulation" key per pre-training task from the queries of its windows."""
    from dtune.tuners.base import query_from

    data, raw = pretrain_batches(model, run_config, root, batches, 64, seed)
    by_task: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for b in raw:
            bt = to_torch(b, device)
            q = query_from(model.embed_state(bt["states"]), bt["valid"])
            for t in bt["task_id"].unique().tolist():
                by_task.setdefault(t, []).append(q[bt["task_id"] == t])
    tuner.fit_pretrain_keys([torch.cat(v) for _, v in sorted(by_task.items())])
    return {"pretrain_keys": len(by_task), "from_windows": sum(len(b["task_id"]) for b in raw)}


def cached_eval(checkpoint: str, model, run_config: dict, tasks: list[str], episodes: int, seed: int,
                horizon: int | None, progress: bool) -> dict:
    """Evaluation of the *unadapted* checkpoint, cached by weights digest and settings."""
    from dtune.eval.rollout import EvalConfig, evaluate
    from dtune.tuners import base_digest

    key = hashlib.sha256(json.dumps([base_digest(checkpoint), sorted(tasks), episodes, seed, horizon]).encode()).hexdigest()[:16]
    path = Path(checkpoint) / "eval_cache" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    res = evaluate(EvalConfig(checkpoint=checkpoint, tasks=",".join(tasks), episodes=episodes, seed=seed,
                              horizon=horizon, progress=progress), model=model, config=run_config)
    try:
        path.parent.mkdir(exist_ok=True)
        ckpt.atomic_write_text(path, json.dumps(res, indent=1))
    except OSError:
        pass  # a read-only checkpoint directory: no cache, same result
    return res


def adapt(cfg: AdaptConfig, method_config=None) -> dict:
    """Adapt, save the adapter, evaluate; returns the result dict (also ``out/result.json``)."""
    from tqdm import tqdm

    from dtune import tuners
    from dtune.eval.rollout import EvalConfig, evaluate
    from dtune.tuners.penalty import Anchor

    method, _ = tuners.resolve_method(cfg.method)
    method_config = method_config or tuners.make_config(cfg.method)
    if cfg.steps <= 0:
        raise ValueError(f"--steps must be positive, got {cfg.steps}")
    out = Path(cfg.out)
    if (out / tuners.ADAPTER_CONFIG).exists() or (out / "result.json").exists():
        raise ValueError(f"{out} already holds an adapter; choose another --out or delete it")
    get_task(cfg.task)  # unknown names fail here, with suggestions
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model, run_config = ckpt.load_model(cfg.checkpoint, "cpu")
    tuners.check_config(model, cfg.method, method_config)  # bad options fail now, not after the evaluations
    if cfg.task in run_config["tasks"]:
        print(f"note: {cfg.task} is one of the checkpoint's pre-training tasks")
    root = resolve_data_dir(cfg.data_dir, run_config)
    data = TrajectoryData(root, cfg.task, cfg.max_episodes, state_stats=model_stats(model))
    if int(data.domains[0].timesteps.max()) + 1 > model.cfg.max_timestep:
        raise ValueError(f"episodes of {cfg.task} are longer than the model's timestep table ({model.cfg.max_timestep})")
    model = model.to(device)
    pre_tasks = list(run_config["tasks"])
    t_eval = 0.0
    before_pre = None
    if cfg.pretrain_eval:
        t0 = time.perf_counter()
        before_pre = cached_eval(cfg.checkpoint, model, run_config, pre_tasks, cfg.pretrain_episodes, cfg.eval_seed,
                                 cfg.horizon, cfg.progress)
        t_eval += time.perf_counter() - t0
    task_info = {**run_config.get("task_info", {}), **data.task_info}
    eval_config = {**run_config, "task_info": task_info}
    before_new = None
    if cfg.eval_episodes > 0:
        before_new = evaluate(EvalConfig(checkpoint=cfg.checkpoint, tasks=cfg.task, episodes=cfg.eval_episodes,
                                         seed=cfg.eval_seed, horizon=cfg.horizon, progress=False), model=model, config=eval_config)

    torch.manual_seed(cfg.seed)
    tuner = tuners.attach(model, cfg.method, method_config)
    model.to(device)
    tuner.begin_task(cfg.task)
    extra = {}
    if getattr(method_config, "pretrain_keys", False):
        extra = fit_pretrain_keys(model, tuner, run_config, root, device, cfg.seed)
    anchor = Anchor(model, method_config.l2_lambda, method_config.ewc_lambda)
    if anchor.active:
        batches = None
        if anchor.ewc_lambda > 0:
            _, raw = pretrain_batches(model, run_config, root, method_config.ewc_batches, cfg.batch_size, cfg.seed)
            batches = [to_torch(b, device) for b in raw]
        anchor.consolidate(model, batches, lambda b: model.loss(b)[0])

    peak = peak_lr(cfg, run_config)
    optimizer = make_optimizer(model, peak, cfg.weight_decay)
    sampler = WindowSampler(data, model.cfg.context_len, cfg.batch_size, seed=cfg.seed)
    counts = tuners.parameter_counts(model)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "dtune_version": __version__, "adapt": asdict(cfg), "method": method,
        "method_config": dataclasses.asdict(method_config),
        "resolved": {"device": str(device), "precision": precision, "lr": peak, "data_dir": str(root), **counts, **extra},
    }
    ckpt.atomic_write_text(out / "config.json", json.dumps(settings, indent=1))
    log = MetricsLog(out, None, False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    bar = tqdm(total=cfg.steps, desc=f"adapt {method} on {cfg.task}", disable=not cfg.progress, unit="step")
    t_start = time.perf_counter()
    train_steps(model, sampler, optimizer, anchor, cfg, peak, cfg.steps, 0, cfg.steps, device, autocast, log, bar)
    bar.close()
    log.close()
    train_s = time.perf_counter() - t_start
    tuner.end_task()

    meta = {"base_checkpoint": str(Path(cfg.checkpoint).resolve()), "base_digest": tuners.base_digest(cfg.checkpoint),
            "tasks": [cfg.task], "task_info": {cfg.task: data.task_info[cfg.task]}, "steps": cfg.steps}
    tuners.save_adapter(out, model, meta)

    result = {"method": cfg.method, "task": cfg.task, "steps": cfg.steps, **counts,
              "train_s": train_s, "steps_per_s": cfg.steps / max(train_s, 1e-9)}
    if (pool := getattr(tuner, "pool", None)) is not None:  # L2P / L2M: the keys this task chose
        result["pool_entries_used"] = torch.nonzero(pool.prev_counts).flatten().tolist()
    t0 = time.perf_counter()
    if cfg.eval_episodes > 0:
        after_new = evaluate(EvalConfig(checkpoint=cfg.checkpoint, tasks=cfg.task, episodes=cfg.eval_episodes,
                                        seed=cfg.eval_seed, horizon=cfg.horizon, progress=False), model=model, config=eval_config)
        result.update(new_task_before=before_new["tasks"][cfg.task]["score"],
                      new_task_score=after_new["tasks"][cfg.task]["score"],
                      new_task_return=after_new["tasks"][cfg.task]["return_mean"])
        ckpt.atomic_write_text(out / "eval_task.json", json.dumps(after_new, indent=1))
    if cfg.pretrain_eval:
        after_pre = evaluate(EvalConfig(checkpoint=cfg.checkpoint, tasks=",".join(pre_tasks),
                                        episodes=cfg.pretrain_episodes, seed=cfg.eval_seed, horizon=cfg.horizon,
                                        progress=cfg.progress),
                             model=model, config=eval_config)
        b, a = before_pre["mean_score"], after_pre["mean_score"]
        result.update(pretrain_before=b, pretrain_after=a,
                      retention=(a / b) if (a is not None and b) else None,
                      pretrain_episodes=cfg.pretrain_episodes)
        ckpt.atomic_write_text(out / "eval_pretrain.json", json.dumps(after_pre, indent=1))
    t_eval += time.perf_counter() - t0
    result["eval_s"] = t_eval
    result["wall_s"] = train_s + t_eval
    ckpt.atomic_write_text(out / "result.json", json.dumps(result, indent=1))
    ckpt.atomic_write_text(out / "result.md", result_table([result]) + "\n")
    return result


def _fmt(v, pct=False):
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.3g}" if isinstance(v, float) else str(v)


def result_table(results: list[dict]) -> str:
    from dtune.report import markdown_table

    rows = []
    for r in results:
        rows.append([r["method"], r["task"], r["steps"], _fmt(r.get("new_task_before"), True),
                     _fmt(r.get("new_task_score"), True), _fmt(r.get("pretrain_before"), True),
                     _fmt(r.get("pretrain_after"), True), f"{r['trainable']:,}", f"{r['trainable_pct']:.2f}%",
                     f"{r['per_task_pct']:.2f}%", f"{r['train_s']:.0f}s"])
    return markdown_table(["method", "task", "steps", "task before", "task after", "pre-train before",
                           "pre-train after", "trainable", "trainable %", "per task %", "train time"], rows)


def list_methods() -> str:
    from dtune import tuners
    from dtune.report import markdown_table

    rows = []
    for name in tuners.METHODS + list(tuners.PRESETS):
        method, over = tuners.resolve_method(name)
        cls = tuners.REGISTRY[method]
        doc = (cls.config_class.__doc__ or "").strip().splitlines()[0]
        if over:
            doc = f"{method} with " + ", ".join(f"{k}={v}" for k, v in over.items())
        rows.append([name, doc])
    return markdown_table(["method", "what trains"], rows)


__all__ = ["TuneSettings", "AdaptConfig", "adapt", "result_table", "list_methods"]
