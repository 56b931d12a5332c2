"""Adaptation: one pre-trained model, one new task, any method of `dtune.tuners`.

The base model keeps its state normalisation and input layout (the new task's states are
z-scored with the pre-training statistics). The method's parameters train on the engine
(:mod:`dtune.train.engine`): task loss + the method's own term (key-pull loss of L2P/L2M) + the
L2/EWC penalty when switched on. Checkpoints every `ckpt_every` steps and on Ctrl-C make
`resume` continue exactly. Afterwards the adapted model is evaluated on the new task and
(`pretrain_eval`) on the pre-training tasks, whose score before adaptation is computed once
per checkpoint and evaluation setting and cached in `CHECKPOINT/eval_cache/`.

Outputs in `out`: `adapter.safetensors` + `adapter.json` (only what the method trained),
`config.json` (every setting, resolved), `metrics.csv`/`metrics.jsonl`, `result.json`
and `result.md`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass

import torch

from dtune import __version__, tuners
from dtune.data.dataset import WindowSampler
from dtune.models.io import load_model, weights_digest
from dtune.recipes.common import (abspath, check_resume, dataset_statistics, fit, resolve_data_dir, resume_config,
                                  saved_config, start_fresh, trained_precision)
from dtune.recipes.tuning import (TuneSettings, cached_eval, calibrate_routing, evaluate_model, optim_settings,
                                  peak_lr, prepare_method, resumed_method_config, set_state_clip,
                                  task_data)
from dtune.report.routing import write_routing
from dtune.runtime.device import resolve_device, resolve_precision
from dtune.runtime.dist import init_distributed, main_first, shutdown
from dtune.runtime.io import atomic_write_json, atomic_write_text
from dtune.runtime.runs import claim_out
from dtune.tasks import get_task
from dtune.train.engine import STATE_J, ActionLoss, AnchorPenalty, Trainer, TunerLoss
from dtune.train.log import MetricsLog
from dtune.tuners.penalty import Anchor


@dataclass
class AdaptConfig(TuneSettings):
    """Adapt a pre-trained checkpoint to a new task with one adaptation method."""

    task: str = "hammer-v3"
    """The new task."""
    out: str = "runs/adapt"
    """Output directory (must not hold another run)."""
    steps: int = 2000
    """Optimiser updates."""
    eval_episodes: int = 10
    """Evaluation episodes on the new task (0 = no evaluation)."""
    pretrain_eval: bool = True
    """Also evaluate the pre-training tasks before and after (retention)."""
    pretrain_episodes: int = 5
    """Evaluation episodes per pre-training task."""
    ckpt_every: int = 500
    """Steps between resumable checkpoints."""
    resume: bool = False
    """Continue the interrupted run in `out`, with its own settings."""


RESUME_KEYS = ("checkpoint", "task", "method", "steps", "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay",
               "grad_clip", "max_episodes", "replay_from", "data_ratio", "source", "seed", "eval_seed", "horizon", "eval_episodes", "pretrain_eval",
               "pretrain_episodes", "eval_precision", "state_clip", "new_columns")


def resume(out: str, **overrides) -> dict:
    """Continue the adaptation run in `out` with its own settings (method options included)."""
    return adapt(resume_config(AdaptConfig, out, "adapt", "adapt", **overrides))


def adapt(cfg: AdaptConfig, method_config=None) -> dict:
    """Adapt, save the adapter, evaluate; returns the result dict (also `out/result.json`).
    Under `torchrun` with several processes the training is distributed (see
    :mod:`dtune.runtime.dist`); rank 0 evaluates and writes the outputs."""
    dist = init_distributed(cfg.device)
    try:
        return _adapt(cfg, method_config, dist)
    finally:
        shutdown(dist)


def _adapt(cfg: AdaptConfig, method_config, dist) -> dict:
    main = dist is None or dist.main
    if dist is not None and cfg.batch_size % dist.world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world} processes")
    method, _ = tuners.resolve_method(cfg.method)
    out = claim_out(cfg.out, "adapt", cfg.resume)
    cfg.out, cfg.checkpoint = str(out), abspath(cfg.checkpoint)
    if cfg.steps <= 0:
        raise ValueError(f"--steps must be positive, got {cfg.steps}")
    get_task(cfg.task)  # unknown names fail here, with suggestions
    if cfg.resume:
        saved = saved_config(out, "adapt")
        check_resume(saved["adapt"], cfg, RESUME_KEYS, out)  # a finished run too: its result is not this command's
        method_config = resumed_method_config(saved, method_config, out)
        if (out / "result.json").exists():
            print(f"the run in {out} is finished; its results are in {out / 'result.json'} "
                  f"(adapt again into another --out for more steps)")
            return json.loads((out / "result.json").read_text())
        if not (out / STATE_J).exists():
            raise ValueError(f"--resume: the run in {out} has no checkpoint yet; run the same command without "
                             "--resume to start it over")
    else:
        if main:
            start_fresh(out, "adapt", (tuners.ADAPTER_CONFIG, "result.json", STATE_J))
        if dist is not None:
            dist.barrier()
        method_config = method_config or tuners.make_config(cfg.method)
    device = dist.device if dist is not None else resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model, run_config = load_model(cfg.checkpoint, "cpu")
    set_state_clip(model, cfg)
    tuners.check_config(model, cfg.method, method_config)  # bad options fail now, not after the evaluations
    if cfg.task in run_config["tasks"]:
        print(f"note: {cfg.task} is one of the checkpoint's pre-training tasks")
    root = resolve_data_dir(cfg.data_dir, run_config)
    cfg.data_dir = abspath(cfg.data_dir)
    with main_first(dist):  # rank 0 builds the data cache, the other ranks open it
        data = task_data(model, run_config, root, cfg.task, cfg)
    model = model.to(device)
    pre_tasks = list(run_config["tasks"])
    t_eval = 0.0
    before_pre = None
    if cfg.pretrain_eval and main:
        t0 = time.perf_counter()
        before_pre = cached_eval(cfg.checkpoint, model, run_config, pre_tasks, cfg.pretrain_episodes, cfg.eval_seed,
                                 cfg.horizon, cfg.progress, cfg.env_workers, cfg.eval_precision)
        t_eval += time.perf_counter() - t0
    # evaluation statistics (target return) of the task's whole dataset, not of the part trained on
    info = {cfg.task: {**data.task_info[cfg.task], **dataset_statistics(root, cfg.task, data.sources[cfg.task])}}
    eval_config = {**run_config, "task_info": {**run_config.get("task_info", {}), **info}}
    before_new = None
    if cfg.eval_episodes > 0 and main:  # the same for every method and seed of a study: cached like before_pre
        t0 = time.perf_counter()
        before_new = cached_eval(cfg.checkpoint, model, eval_config, [cfg.task], cfg.eval_episodes, cfg.eval_seed,
                                 cfg.horizon, cfg.progress, cfg.env_workers, cfg.eval_precision,
                                 desc=f"evaluate {cfg.task}, unadapted")
        t_eval += time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    tuner = tuners.attach(model, cfg.method, method_config)
    model.to(device)
    tuner.begin_task(cfg.task)
    anchor = Anchor(model, method_config.l2_lambda, method_config.ewc_lambda, method_config.ewc_mode)
    # EWC's Fisher, L2M's pre-training keys: the pre-training data's cache too (rank 0 computes them first, then the
    # others; no collectives in there: the pools' all_reduce runs in training mode only, and these run in eval mode)
    with main_first(dist):
        extra = {} if cfg.resume else prepare_method(model, tuner, method_config, anchor, run_config, root, device, cfg)
    sampler = WindowSampler(data, model.cfg.context_len, cfg.batch_size, seed=cfg.seed)
    trainer = Trainer(model, sampler, [ActionLoss(), TunerLoss(), AnchorPenalty(anchor)], optim_settings(cfg, run_config),
                      cfg.steps, device, precision, log_every=cfg.log_every, desc=f"adapt {method} on {cfg.task}",
                      progress=cfg.progress and main, dist=dist, compile=cfg.compile)
    if cfg.resume:
        meta, tensors = trainer.load(out)
        model.load_state_dict(tensors, strict=False)
        tuner.load_extra_state(meta["tuner"])
        extra = saved["resolved"].get("method_setup", {})
    counts = tuners.parameter_counts(model)
    start = trainer.step
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {
            "kind": "adapt", "dtune_version": __version__, "adapt": asdict(cfg), "method": method,
            "method_config": dataclasses.asdict(method_config),
            "method_config_resolved": dataclasses.asdict(tuner.config),
            "resolved": {"device": str(device), "precision": trained_precision(out, cfg.resume, precision, cfg.precision),
                         "lr": peak_lr(cfg, run_config),
                         "data_dir": str(root), **counts, "method_setup": extra,
                         "processes": 1 if dist is None else dist.world},
        })
        trainer.log = MetricsLog(out, (lambda r: r["step"] <= start) if cfg.resume else None)

    def checkpoint(step: int):
        trainer.save(out, {"tuner": tuner.extra_state()}, tuners.adapter_state(model))

    before_s = trainer.train_s  # what the checkpoint it resumed from recorded (0 for a new run)
    fit(trainer, cfg.steps, checkpoint, cfg.ckpt_every, "adapt", out, f"step {{step}} of {cfg.steps}")
    train_s = trainer.train_s  # the run's training seconds, over every invocation
    tuner.end_task()
    margin = calibrate_routing(model, tuner, sampler.data, device, cfg.seed)
    if not main:
        return {"rank": dist.rank, "train_s": train_s}
    trainer.log.close()

    meta = {"base_checkpoint": cfg.checkpoint, "base_digest": weights_digest(cfg.checkpoint),
            "tasks": [cfg.task], "task_info": info, "steps": cfg.steps}
    tuners.save_adapter(out, model, meta)

    result = {"method": cfg.method, "task": cfg.task, "steps": cfg.steps, **counts, "base_checkpoint": cfg.checkpoint,
              "base_digest": meta["base_digest"], "train_s": train_s, "steps_per_s": (cfg.steps - start) / max(train_s - before_s, 1e-9)}
    if (pool := getattr(tuner, "pool", None)) is not None:  # L2P / L2M: the keys this task chose
        result["pool_entries_used"] = torch.nonzero(pool.prev_counts).flatten().tolist()
    if margin is not None:
        result["routing_margin"] = margin
    t0 = time.perf_counter()
    if cfg.eval_episodes > 0:
        after_new = evaluate_model(model, eval_config, cfg.task, cfg.eval_episodes, cfg.eval_seed, cfg.horizon,
                                    env_workers=cfg.env_workers, precision=cfg.eval_precision)
        result.update(new_task_before=before_new["tasks"][cfg.task]["score"],
                      new_task_score=after_new["tasks"][cfg.task]["score"],
                      new_task_return=after_new["tasks"][cfg.task]["return_mean"])
        atomic_write_json(out / "eval_task.json", after_new)
    if cfg.pretrain_eval:
        after_pre = evaluate_model(model, eval_config, pre_tasks, cfg.pretrain_episodes, cfg.eval_seed, cfg.horizon,
                                   cfg.progress, desc=f"evaluate {len(pre_tasks)} pre-training task(s), adapted",
                                   env_workers=cfg.env_workers, precision=cfg.eval_precision)
        b, a = before_pre["mean_score"], after_pre["mean_score"]
        result.update(pretrain_before=b, pretrain_after=a,
                      retention=(a / b) if (a is not None and b) else None,
                      pretrain_episodes=cfg.pretrain_episodes)
        atomic_write_json(out / "eval_pretrain.json", after_pre)
        atomic_write_json(out / "eval_pretrain_before.json", before_pre)  # per task and domain (reports)
    t_eval += time.perf_counter() - t0
    result["eval_s"] = t_eval
    result["wall_s"] = train_s + t_eval
    if write_routing(out, [after_pre if cfg.pretrain_eval else None, after_new if cfg.eval_episodes > 0 else None],
                     f"{cfg.method} adapted to {cfg.task}: pool entry chosen per task") is not None:
        result["routing"] = "routing.md"
    atomic_write_json(out / "result.json", result)
    atomic_write_text(out / "result.md", result_table([result]) + "\n")
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
                           "pre-train after", "trainable", "trainable % of base", "one task trains % of base",
                           "train time"], rows)


def list_methods() -> str:
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


__all__ = ["AdaptConfig", "adapt", "resume", "result_table", "list_methods"]
