"""What single-task and continual adaptation share: their common settings, loading the base,
preparing the method (pre-training keys, L2/EWC anchor), evaluations of the base and of the
adapted model."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dtune import __version__
from dtune.data.dataset import TrajectoryData, WindowSampler, state_clip_value
from dtune.eval.agents import DTAgent
from dtune.eval.rollout import evaluate_agent
from dtune.models.io import run_layout
from dtune.recipes.common import recorded_sources
from dtune.runtime.io import atomic_write_json
from dtune.tasks import get_task
from dtune.train.engine import OptimSettings, to_torch
from dtune.train.optim import PRESET_LR


@dataclass
class TuneSettings:
    """What single-task and continual adaptation share: the base, the method, the optimiser,
    the evaluation seed and length, the machine."""

    checkpoint: str = "runs/pretrain"
    """Run directory of the pre-trained model (from `dtune pretrain`)."""
    method: str = "l2m"
    """Adaptation method or named variant (`dtune adapt --list-methods`)."""
    batch_size: int = 64
    """Windows per update."""
    lr: float | None = None
    """Peak learning rate of each task's schedule (unset: 1e-3 for tiny/small base models, 1e-4
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
    """Use only the first N episodes of each task's dataset (after `replay_from`), in collection order: for
    a SAC replay buffer (`sac-replay`) the earliest, least skilled ones (`data_ratio` draws a random subset)."""
    replay_from: float = 0.0
    """Train on each replay buffer's later episodes: drop the first `int(replay_from x E)` of its
    `E` episodes (0.5: its second half, the agent after it learned). Applies to replay-buffer
    datasets only (`sac-replay`, `medium-replay`; other datasets are whole; a run with none is
    refused), before `max_episodes` and `data_ratio`. A 100K-step SAC buffer is about half learning phase, the paper's 1M-step
    buffers a tenth. Evaluation targets and normalised scores keep the whole dataset's references."""
    data_ratio: float = 1.0
    """Keep this fraction of each new task's whole trajectories, a random subset seeded by `seed`
    (the same seed gives the same subset in every run)."""
    source: str | None = None
    """Dataset source of the new tasks (a comma-separated list takes per task the first it has;
    unset: the one each task has)."""
    state_clip: float | None = None
    """Clip the z-scored states to this many standard deviations, new and pre-training tasks alike,
    in training and evaluation (kept in the adapter); unset: the checkpoint's own (10 for `dtune
    pretrain` runs since 2026-12-06, none before); 0: no clipping. `10` bounds the inputs of a new
    task whose states lie far outside a feature's pre-training spread (the run warns of those)."""
    new_columns: Literal["raw", "task"] = "raw"
    """State columns that none of the checkpoint's tasks fills (slots of its suites it never saw,
    e.g. cheetah's after MT40 + DMC10): `raw` leaves them unnormalised; `task` z-scores them with
    the new task's own data, fixed from then on (the pre-training tasks never fill them, so they
    are unaffected). Their embedding weights never trained (weight decay only: about a tenth of the
    others' norm); on DMC6's cheetah-run `task` scored lower with LoRA and within L2M's seed spread
    (see the README's State normalisation)."""
    seed: int = 0
    """Seed of the method's initialisation, sampling and dropout."""
    eval_seed: int = 1000
    """Base seed of the evaluation episodes."""
    horizon: int | None = None
    """Evaluation episode length (unset: each task's)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto`, `bf16` or `fp32`."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR`, else the data root the checkpoint was trained from
    if it still exists, else `~/.dtune/datasets`)."""
    log_every: int = 100
    """Steps between metric rows."""
    env_workers: int = 0
    """Worker processes that step the evaluation environments (0 = in this process)."""
    eval_precision: Literal["fp32", "bf16"] = "fp32"
    """Precision of the evaluations' forwards: `fp32` (the figures in `results/`), or `bf16`
    autocast (about 2x less model time on CPUs with native bf16; see `dtune evaluate --precision`)."""
    compile: bool = False
    """Run the loss through `torch.compile` (inductor): faster updates after a warm-up of about a
    minute (CPU needs a C++ compiler); numerically close to, not identical with, eager runs."""
    progress: bool = True
    """Show progress bars."""


def resumed_method_config(saved: dict, method_config, out):
    """The method options a resumed run continues with: the run's own; options given now must
    equal them."""
    from dtune import tuners

    own = tuners.config_from_dict(saved["method"], saved["method_config"])
    if method_config is not None and dataclasses.asdict(method_config) != dataclasses.asdict(own):
        raise ValueError(f"--resume with method options that differ from the run in {out}")
    return own


def peak_lr(cfg: TuneSettings, run_config: dict) -> float:
    """`cfg.lr`, else the pre-training preset's default."""
    return cfg.lr if cfg.lr is not None else PRESET_LR.get(run_config["train"].get("model"), 1e-4)


def optim_settings(cfg: TuneSettings, run_config: dict) -> OptimSettings:
    return OptimSettings(peak_lr(cfg, run_config), cfg.min_lr, cfg.warmup_steps, cfg.weight_decay, cfg.grad_clip)


def model_stats(model) -> tuple[np.ndarray, np.ndarray]:
    return model.state_mean.cpu().numpy(), model.state_std.cpu().numpy()


def set_state_clip(model, cfg: TuneSettings) -> None:
    """`cfg.state_clip` (when set) replaces the checkpoint's clip; 0 turns clipping off."""
    if cfg.state_clip is not None:
        model.cfg.state_clip = state_clip_value(cfg.state_clip, "--state-clip")


def seen_columns(run_config: dict, tasks=()) -> np.ndarray:
    """Mask of the state columns the checkpoint's tasks (and `tasks`, adapted to already) fill."""
    return run_layout(run_config).mask([get_task(t) for t in [*run_config.get("tasks", []), *tasks]])


SCALE_WARNING = 1e-3
"""Fraction of a new task's z-scored entries beyond 10 standard deviations above which it is warned of."""


def task_data(model, run_config: dict, root: Path, tasks, cfg: TuneSettings, source=None,
              replay_from: float | None = None, seen: np.ndarray | None = None) -> TrajectoryData:
    """New-task data in the base model's layout, z-scored with its statistics and clip (`cfg`: the
    run's data options; `source`, `replay_from`: unset, `cfg`'s). With `cfg.new_columns == "task"`,
    columns outside `seen` (default: those of the checkpoint's tasks) take the new tasks' own
    statistics, in the data and in the model's buffers. Each task's `task_info` gets its
    `state_scale` (:meth:`TrajectoryData.scale_report`); a task far out of scale is warned of."""
    data = TrajectoryData(root, tasks, cfg.max_episodes, state_stats=model_stats(model), layout=run_layout(run_config),
                          source=source or cfg.source, data_ratio=cfg.data_ratio, ratio_seed=cfg.seed,
                          replay_from=cfg.replay_from if replay_from is None else replay_from,
                          state_clip=model.cfg.state_clip)
    if data.max_timestep > model.cfg.max_timestep:
        raise ValueError(f"episodes of {', '.join(data.tasks)} are longer than the model's timestep table "
                         f"({model.cfg.max_timestep})")
    if cfg.new_columns == "task":
        fill = ~(seen_columns(run_config) if seen is None else seen) & data.layout.mask([get_task(t) for t in data.tasks])
        if fill.any():
            own_mean, own_std = data.own_stats()
            data.state_mean = np.where(fill, own_mean, data.state_mean).astype(np.float32)
            data.state_std = np.where(fill, own_std, data.state_std).astype(np.float32)
            model.state_mean.copy_(torch.from_numpy(data.state_mean))
            model.state_std.copy_(torch.from_numpy(data.state_std))
    names = data.layout.column_names()
    for task, scale in data.scale_report(names).items():
        data.task_info[task]["state_scale"] = scale
        if scale["frac_beyond_limit"] > SCALE_WARNING:
            print(f"warning: {task}'s states lie outside the checkpoint's state statistics: "
                  f"{100 * scale['frac_beyond_limit']:.1f}% of the z-scored entries beyond {scale['limit']:g} sd, up to "
                  f"{scale['max_abs_z']:.3g} sd (in {scale['worst_column']}, whose sd is {scale['worst_column_std']:.2g}); "
                  + (f"they are clipped to {scale['clip']:g} sd" if scale["clip"] else
                     "they are not clipped (--state-clip 10 bounds them)"))
    return data


def pretrain_batches(model, run_config: dict, root: Path, n: int, batch_size: int, seed: int, span: int | None = None):
    """`n` batches of the checkpoint's own pre-training data (for EWC's Fisher, L2M's pre-training keys),
    windows of the model's context (`span`: of that many timesteps)."""
    train = run_config["train"]
    data = TrajectoryData(root, run_config["tasks"], train.get("max_episodes"), state_stats=model_stats(model),
                          layout=run_layout(run_config), source=recorded_sources(run_config),  # its own datasets
                          data_ratio=train.get("data_ratio", 1.0), ratio_seed=train.get("seed", 0),
                          replay_from=train.get("replay_from", 0.0), state_clip=model.cfg.state_clip)
    sampler = WindowSampler(data, span or model.cfg.context_len, batch_size, seed=seed + 7919)
    return data, [sampler.sample() for _ in range(n)]


def pretrain_queries(model, run_config: dict, root: Path, device, seed: int, batches: int = 40,
                     span: int | None = None):
    """Raw L2P/L2M queries of windows (of the context, or of `span` timesteps) of the checkpoint's
    pre-training data, per task id, and the number of windows."""
    from dtune.tuners.base import query_from

    _, raw = pretrain_batches(model, run_config, root, batches, 64, seed, span)
    by_task: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for b in raw:
            bt = to_torch(b, device)
            q = query_from(model.query_states(bt["states"]), bt["valid"])
            for t in bt["task_id"].unique().tolist():
                by_task.setdefault(t, []).append(q[bt["task_id"] == t])
    return [torch.cat(v) for _, v in sorted(by_task.items())], sum(len(b["task_id"]) for b in raw)


def fit_pretrain_keys(model, tuner, run_config: dict, root: Path, device, seed: int, batches: int = 40) -> dict:
    """L2M's routing fits from the pre-training data: the query whitening (`query_whitening`),
    then one "no modulation" key per pre-training task (`pretrain_keys`), or one Gaussian per
    pre-training task (`pretrain_gaussians`: 2 x `batches` batches of 64 windows over all the
    pre-training tasks, about 128 per task for MT40's 40, each as long as the evaluation query, like
    the new tasks' windows in `calibrate_routing`, which get 2,560 each)."""
    c = tuner.config
    out = {}
    if getattr(c, "query_whitening", False) or getattr(c, "pretrain_keys", False):
        queries, out["from_windows"] = pretrain_queries(model, run_config, root, device, seed, batches)
        if getattr(c, "query_whitening", False):
            tuner.fit_whitening(torch.cat(queries))
            out["query_whitening"] = True
        if getattr(c, "pretrain_keys", False):
            tuner.fit_pretrain_keys(queries)
            out["pretrain_keys"] = len(queries)
    if getattr(c, "pretrain_gaussians", False):
        queries, _ = pretrain_queries(model, run_config, root, device, seed, 2 * batches, c.query_span)
        out["pretrain_densities"] = tuner.fit_pretrain_densities(queries)
    return out


def _task_queries(model, data, context: int, batches: int, seed: int, device) -> torch.Tensor:
    """Raw L2P/L2M queries of `batches` x 64 windows of `context` timesteps of `data` (their own
    sampler, seeded apart, so the training sampler's stream is untouched)."""
    from dtune.data.dataset import WindowSampler
    from dtune.tuners.base import query_from

    sampler = WindowSampler(data, context, 64, seed=seed + 104729)
    queries = []
    with torch.no_grad():
        for _ in range(batches):
            b = to_torch(sampler.sample(), device)
            queries.append(query_from(model.query_states(b["states"]), b["valid"]))
    return torch.cat(queries)


def calibrate_routing(model, tuner, data, device, seed: int, batches: int = 20) -> float | None:
    """After a task, from windows of that task's data: L2M's `calibrate_margin` (returned; None for
    methods without it) and the task's Gaussian of `task_gaussians` (from twice as many windows,
    each as long as the query spans at evaluation: `query_span` timesteps, else the context)."""
    margin = None
    if getattr(tuner.config, "calibrate_margin", None) is not None:
        margin = tuner.calibrate(_task_queries(model, data, model.cfg.context_len, batches, seed, device))
    if getattr(tuner.config, "task_gaussians", False):
        span = tuner.config.query_span or model.cfg.context_len
        tuner.fit_task_density(tuner.current_task, _task_queries(model, data, span, 2 * batches, seed, device))
    return margin


def prepare_method(model, tuner, method_config, anchor, run_config: dict, root: Path, device, cfg: TuneSettings,
                   continual: bool = False) -> dict:
    """Before the first task: L2M's pre-training keys and the L2/EWC anchor at the pre-trained
    model (EWC: with the Fisher of its pre-training data, except in a `continual` run with
    `ewc_mode="separate"`, whose penalty starts at the second task). Returns facts for the run's config."""
    extra = {}
    if any(getattr(method_config, n, False) for n in ("pretrain_keys", "query_whitening", "pretrain_gaussians")):
        extra = fit_pretrain_keys(model, tuner, run_config, root, device, cfg.seed)
    if anchor.active:
        batches = None
        if continual and anchor.mode == "separate":
            anchor.consolidate(model, with_fisher=False)  # L2 (if any) from the start, EWC from the second task
            return extra
        if anchor.ewc_lambda > 0:
            _, raw = pretrain_batches(model, run_config, root, method_config.ewc_batches, cfg.batch_size, cfg.seed)
            batches = [to_torch(b, device) for b in raw]
        anchor.consolidate(model, batches, lambda b: model.loss(b)[0])
    return extra


def evaluate_model(model, run_config: dict, tasks, episodes: int, seed: int, horizon: int | None,
                   progress: bool = False, desc: str = "evaluate", env_workers: int = 0,
                   precision: str = "fp32") -> dict:
    """Scores of an already loaded (possibly adapted) model."""
    agent = DTAgent(model, run_layout(run_config), precision=precision)
    return evaluate_agent(agent, tasks, episodes, seed, horizon, run_config.get("task_info", {}), progress=progress,
                          desc=desc, env_workers=env_workers)


EVAL_CODE = ("eval", "models", "tasks", "data/dataset.py")
"""The packages (and modules) of dtune whose sources decide an evaluation's result (the evaluator,
the model, the environments, the state normalisation)."""
EVAL_LIBRARIES = ("torch", "numpy", "gymnasium", "metaworld", "dm_control", "mujoco")
"""Libraries whose versions decide it too."""


@functools.lru_cache(maxsize=1)
def eval_code_digest() -> str:
    """sha256 of the sources of the packages in :data:`EVAL_CODE` and of the versions of
    :data:`EVAL_LIBRARIES`: what a cached evaluation was computed with."""
    from importlib import metadata

    import dtune

    h = hashlib.sha256()
    src = Path(dtune.__file__).parent
    for package in EVAL_CODE:
        for path in [src / package] if package.endswith(".py") else sorted((src / package).rglob("*.py")):
            h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in EVAL_LIBRARIES:
        try:
            version = metadata.version(lib)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{lib}={version}\0".encode())
    return h.hexdigest()


def cached_eval(checkpoint: str, model, run_config: dict, tasks: list[str], episodes: int, seed: int,
                horizon: int | None, progress: bool, env_workers: int = 0, precision: str = "fp32",
                desc: str | None = None) -> dict:
    """Evaluation of the *unadapted* checkpoint, cached in `CHECKPOINT/eval_cache/` under a key of
    everything that decides it: the weights, the evaluation settings (tasks, episodes, seed,
    horizon, the tasks' targets and score references, the input layout, the state statistics of
    the tasks' columns and the clip, the device type and precision), the dtune version and the
    digest of the evaluation code (:func:`eval_code_digest`). A cache made by other code or
    settings is not read; it is recomputed."""
    from dtune.models.io import weights_digest

    task_info = run_config.get("task_info", {})
    cols = torch.from_numpy(run_layout(run_config).mask([get_task(t) for t in tasks]))
    norm = hashlib.sha256(model.state_mean.cpu()[cols].numpy().tobytes() + model.state_std.cpu()[cols].numpy().tobytes()
                          + repr(model.cfg.state_clip).encode()).hexdigest()[:16]  # the statistics these tasks use
    key = json.loads(json.dumps({
        "dtune_version": __version__, "code": eval_code_digest(), "weights": weights_digest(checkpoint),
        "tasks": sorted(tasks), "episodes": episodes, "seed": seed, "horizon": horizon,
        "task_info": {t: task_info.get(t) for t in sorted(tasks)}, "layout": run_config.get("layout"),
        "device": next(model.parameters()).device.type, "precision": precision, "state_norm": norm}, sort_keys=True))
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(checkpoint) / "eval_cache" / f"{name}.json"
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            doc = {}
        if isinstance(doc, dict) and doc.get("key") == key and "result" in doc:
            return doc["result"]
    res = evaluate_model(model, run_config, tasks, episodes, seed, horizon, progress,
                         desc=desc or f"evaluate {len(tasks)} task(s), unadapted", env_workers=env_workers,
                         precision=precision)
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write_json(path, {"key": key, "result": res})
    except OSError:
        pass  # a read-only checkpoint directory: no cache, same result
    return res
