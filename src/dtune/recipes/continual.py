"""Continual learning: one pre-trained model adapts to a sequence of tasks, one after the other.

Only the current task's dataset is loaded and sampled. Every method of `dtune.tuners` works:
its parameters persist across tasks (L2P and L2M keep their pools; the selection-count penalty
steers each new task to fresh keys), a fresh optimiser starts at every task, and the L2/EWC
anchor is renewed at every task switch (EWC adds the Fisher of the task just learned; before the
first task the anchor is the pre-trained model, with the Fisher of its pre-training data; with
`ewc_mode="separate"`, the reference code's, EWC starts at the second task and keeps only the
last task's Fisher).

After every task all tasks of the sequence are evaluated, building the score matrix (see
:mod:`dtune.report.metrics`); with `eval_pretrain` the pre-training tasks are evaluated
before the first task and after the last (every task with `eval_pretrain_every`).

Outputs in `out`: `config.json`, `progress.json` (matrix so far, timings), `metrics.csv`
/ `metrics.jsonl` (training losses, with the task), `evals/` (every evaluation),
`adapter/` (the final adapter: `dtune evaluate --adapter`), `matrix.csv`, `metrics.json`,
`summary.md`, `matrix.png` and `curves.png`. `train_state.safetensors` + `.json` hold
the engine's resumable state (task, step, method tensors, optimiser, sampler and torch RNG,
anchor); with `resume` an interrupted run continues at the task and step where it stopped and
produces what the uninterrupted run would have. Resuming a finished run recomputes its metrics
and outputs (e.g. once `reference` results exist).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass

import torch

from dtune import __version__, tuners
from dtune.data.dataset import WindowSampler, check_replay_from, is_replay_buffer
from dtune.models.io import load_model, weights_digest
from dtune.recipes.common import (abspath, check_resume, fit, resolve_data_dir, resume_config, saved_config, start_fresh,
                                  task_statistics, trained_precision)
from dtune.recipes.tuning import (TuneSettings, cached_eval, calibrate_routing, evaluate_model, optim_settings,
                                  peak_lr, prepare_method, resumed_method_config, seen_columns,
                                  set_state_clip, task_data)
from dtune.report.metrics import as_matrix, cl_metrics
from dtune.report.routing import write_routing
from dtune.runtime.device import resolve_device, resolve_precision
from dtune.runtime.dist import single_process
from dtune.runtime.io import atomic_write_json, atomic_write_text
from dtune.runtime.runs import claim_out
from dtune.tasks import get_task, resolve_tasks
from dtune.train.engine import (STATE_J, ActionLoss, AnchorPenalty, Trainer, TunerLoss, load_state, read_state_meta,
                                rng_states, save_state, to_torch)
from dtune.train.log import MetricsLog
from dtune.tuners.penalty import Anchor

PROGRESS = "progress.json"


@dataclass
class ContinualConfig(TuneSettings):
    """Adapt a pre-trained checkpoint to a sequence of tasks, one after the other."""

    sequence: str = "cw10"
    """Task sequence: a named set (`cw10` in the paper's order, `dmc6`) or comma-separated tasks."""
    out: str = "runs/continual"
    """Output directory (must not hold another run)."""
    steps_per_task: int = 1000
    """Optimiser updates per task."""
    eval_episodes: int = 10
    """Evaluation episodes per task of the sequence, after every task."""
    eval_pretrain: bool = False
    """Also evaluate the pre-training tasks before the first task and after the last (retention)."""
    eval_pretrain_every: bool = False
    """With eval_pretrain: after every task, not only the last (a retention curve; costs one
    pre-training evaluation per task)."""
    pretrain_episodes: int = 3
    """Evaluation episodes per pre-training task."""
    reference: str | None = None
    """Directory with single-task `dtune adapt` runs (searched recursively for result.json) of the
    same method and base checkpoint, for forward transfer."""
    ckpt_every: int = 250
    """Steps between resumable checkpoints within a task (and one at every task end)."""
    resume: bool = False
    """Continue the interrupted run in `out`, with its own settings."""


RESUME_KEYS = ("checkpoint", "sequence", "method", "steps_per_task", "batch_size", "lr", "min_lr", "warmup_steps",
               "weight_decay", "grad_clip", "max_episodes", "replay_from", "data_ratio", "source", "seed", "eval_episodes", "eval_pretrain",
               "pretrain_episodes", "eval_pretrain_every", "eval_seed", "horizon", "eval_precision", "state_clip", "new_columns")


def sequence_tasks(sequence: str) -> list[str]:
    tasks = resolve_tasks(sequence)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"sequence {sequence!r} names a task twice")
    return tasks


def resume(out: str, **overrides) -> dict:
    """Continue the continual run in `out` with its own settings (method options included)."""
    return continual(resume_config(ContinualConfig, out, "continual", "continual", **overrides))


def _saved_setup(out) -> dict:
    """What the run's first invocation recorded of the method's set-up (kept when it resumes)."""
    try:
        return json.loads((out / "config.json").read_text()).get("resolved", {}).get("method_setup", {})
    except (OSError, ValueError):
        return {}

class ContinualRun:
    def __init__(self, cfg: ContinualConfig, method_config=None):
        self.cfg = cfg
        self.tasks = sequence_tasks(cfg.sequence)
        self.out = claim_out(cfg.out, "continual", cfg.resume)
        cfg.out, cfg.checkpoint = str(self.out), abspath(cfg.checkpoint)
        self.method, _ = tuners.resolve_method(cfg.method)
        if cfg.steps_per_task <= 0:
            raise ValueError(f"--steps-per-task must be positive, got {cfg.steps_per_task}")
        if cfg.eval_episodes <= 0:
            raise ValueError("--eval-episodes must be positive: the score matrix needs evaluations")
        if cfg.resume:
            saved = saved_config(self.out, "continual")
            check_resume(saved["continual"], cfg, RESUME_KEYS, self.out)
            method_config = resumed_method_config(saved, method_config, self.out)
            if read_state_meta(self.out) is None:
                raise ValueError(f"--resume: the run in {self.out} has no checkpoint yet (or was made by dtune 0.1); "
                                 "run the same command without --resume to start it over")
        else:
            start_fresh(self.out, "continual", (PROGRESS, STATE_J))
        self.method_config = method_config or tuners.make_config(cfg.method)
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)

    def _progress(self) -> dict:
        path = self.out / PROGRESS
        return json.loads(path.read_text()) if path.exists() else {"rows": [], "pretrain_rows": [], "task_times": []}

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, tasks = self.cfg, self.tasks
        for t in tasks:
            get_task(t)
        model, run_config = load_model(cfg.checkpoint, "cpu")
        set_state_clip(model, cfg)
        tuners.check_config(model, cfg.method, self.method_config)
        root = resolve_data_dir(cfg.data_dir, run_config)
        cfg.data_dir = abspath(cfg.data_dir)
        info = task_statistics(root, tasks, cfg.source)  # whole datasets (targets); the data loads at its task's turn
        check_replay_from(cfg.replay_from, {t: info[t]["source"] for t in tasks})  # the sequence's, not each task's
        eval_config = {**run_config, "task_info": {**run_config.get("task_info", {}), **info}}
        model = model.to(self.device)
        pre_tasks = list(run_config["tasks"])
        progress = self._progress()
        before_file = self.out / "evals" / "pretrain_before.json"  # per task and domain (reports)
        if cfg.eval_pretrain and ("pretrain_before" not in progress or not before_file.exists()):
            before = cached_eval(cfg.checkpoint, model, run_config, pre_tasks, cfg.pretrain_episodes, cfg.eval_seed,
                                 cfg.horizon, cfg.progress, cfg.env_workers, cfg.eval_precision)
            # a run begun before runs kept this file gets it, if it is the evaluation that run recorded
            if progress.setdefault("pretrain_before", before["mean_score"]) == before["mean_score"]:
                before_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(before_file, before)

        torch.manual_seed(cfg.seed)
        tuner = tuners.attach(model, cfg.method, self.method_config)
        model.to(self.device)
        anchor = Anchor(model, self.method_config.l2_lambda, self.method_config.ewc_lambda, self.method_config.ewc_mode)
        penalty = AnchorPenalty(anchor)
        counts = tuners.parameter_counts(model)
        state = read_state_meta(self.out) if cfg.resume else None
        setup = {}
        if state is None:
            setup = prepare_method(model, tuner, self.method_config, anchor, run_config, root, self.device, cfg,
                                   continual=True)
        else:  # method tensors, tuner state, anchor and torch RNG; optimiser and sampler come with their task
            _, tensors = load_state(self.out, objectives=[penalty], device=self.device)
            model.load_state_dict(tensors, strict=False)
            tuner.load_extra_state(state["tuner"])
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", {
            "kind": "continual", "dtune_version": __version__, "continual": asdict(cfg), "tasks": tasks,
            "method": self.method, "method_config": dataclasses.asdict(self.method_config),
            "method_config_resolved": dataclasses.asdict(tuner.config),
            "resolved": {"device": str(self.device),
                         "precision": trained_precision(self.out, state is not None, self.precision, cfg.precision),
                         "lr": peak_lr(cfg, run_config),
                         "data_dir": str(root), **counts,
                         "method_setup": setup if state is None else _saved_setup(self.out)},
        })
        first, start_step = (state["task"], state["step"]) if state is not None else (len(progress["rows"]), 0)
        progress["rows"] = progress["rows"][:first]
        progress["pretrain_rows"] = [r for r in progress["pretrain_rows"] if r["after"] < first]
        progress["task_times"] = progress["task_times"][:first]
        log = MetricsLog(self.out, (lambda r: r["task_index"] < first or (r["task_index"] == first and r["step"] <= start_step))
                         if state is not None else None)
        (self.out / "evals").mkdir(parents=True, exist_ok=True)

        for i in range(first, len(tasks)):
            task = tasks[i]
            source = info[task]["source"]  # --replay-from cuts the sequence's replay buffers, keeps its other tasks whole
            data = task_data(model, run_config, root, task, cfg, source, cfg.replay_from if is_replay_buffer(source) else 0.0,
                             seen=seen_columns(run_config, tasks[:i]))  # earlier tasks' columns keep their statistics
            progress.setdefault("state_scale", {})[task] = data.task_info[task]["state_scale"]  # saved with the progress
            sampler = WindowSampler(data, model.cfg.context_len, cfg.batch_size, seed=cfg.seed + 1000 * i)
            trainer = Trainer(model, sampler, [ActionLoss(), TunerLoss(), penalty], optim_settings(cfg, run_config),
                              cfg.steps_per_task, self.device, self.precision, log=log, log_every=cfg.log_every,
                              row_extra={"task_index": i, "task": task, "global_step": i * cfg.steps_per_task},
                              desc=f"[{i + 1}/{len(tasks)}] {self.method} {task}", progress=cfg.progress,
                              compile=cfg.compile)
            if state is not None and state["task"] == i and state["step"] > 0:
                trainer.load(self.out)
            state = None
            tuner.begin_task(task)  # (again, after a resume: it only names the current task)

            def checkpoint(step: int, i=i, trainer=trainer):
                trainer.save(self.out, {"task": i, "tuner": tuner.extra_state()}, tuners.adapter_state(model))

            fit(trainer, cfg.steps_per_task, checkpoint, cfg.ckpt_every, "continual", self.out,
                f"task {i + 1}/{len(tasks)} ({task}), step {{step}}")
            train_s = trainer.train_s  # the task's training seconds, before an interruption too
            tuner.end_task()
            calibrate_routing(model, tuner, sampler.data, self.device, cfg.seed + i)
            if anchor.active and i < len(tasks) - 1:  # task switch: anchor here, EWC adds (or takes) its Fisher
                batches = [to_torch(sampler.sample(), self.device) for _ in range(self.method_config.ewc_batches)] \
                    if anchor.ewc_lambda > 0 else None
                anchor.consolidate(model, batches, lambda b: model.loss(b)[0])
            t0 = time.perf_counter()
            res = evaluate_model(model, eval_config, tasks, cfg.eval_episodes, cfg.eval_seed, cfg.horizon,
                                 env_workers=cfg.env_workers, precision=cfg.eval_precision)
            atomic_write_json(self.out / "evals" / f"after_{i:02d}_{task}.json", res)
            progress["rows"].append([res["tasks"][t]["score"] for t in tasks])
            if cfg.eval_pretrain and (cfg.eval_pretrain_every or i == len(tasks) - 1):
                pre = evaluate_model(model, eval_config, pre_tasks, cfg.pretrain_episodes, cfg.eval_seed, cfg.horizon,
                                     cfg.progress, desc=f"evaluate pre-training tasks after {task}",
                                     env_workers=cfg.env_workers, precision=cfg.eval_precision)
                atomic_write_json(self.out / "evals" / f"pretrain_after_{i:02d}_{task}.json", pre)
                progress["pretrain_rows"].append({"after": i, "score": pre["mean_score"]})
            progress["task_times"].append({"task": task, "train_s": train_s, "eval_s": time.perf_counter() - t0})
            # progress first, then the state that points past it: a crash in between re-runs only the eval
            atomic_write_json(self.out / PROGRESS, progress)
            save_state(self.out, 0, objectives=[penalty], extra={"task": i + 1, "tuner": tuner.extra_state()},
                       model_tensors=tuners.adapter_state(model), rng=rng_states(self.device))  # CUDA's too
        log.close()
        return self.finish(model, info, progress)

    def finish(self, model, task_info: dict, progress) -> dict:
        from dtune.report.continual import reference_scores, summary_markdown
        from dtune.report.plots import plot_curves, plot_matrix

        cfg, tasks = self.cfg, self.tasks
        matrix = as_matrix(progress["rows"])
        pre_after = progress["pretrain_rows"][-1]["score"] if progress["pretrain_rows"] else None
        digest = weights_digest(cfg.checkpoint)
        metrics = cl_metrics(matrix, reference_scores(cfg.reference, cfg.method, tasks, digest),
                             progress.get("pretrain_before"), pre_after)
        counts = tuners.parameter_counts(model)
        summary = {"method": cfg.method, "seed": cfg.seed, "sequence": cfg.sequence, "tasks": tasks,
                   "pool_size": getattr(self.method_config, "pool_size", None),
                   "steps_per_task": cfg.steps_per_task, "matrix": progress["rows"], "base_checkpoint": cfg.checkpoint,
                   "base_digest": digest, "pretrain_rows": progress["pretrain_rows"], **metrics, **counts,
                   "train_s": sum(t["train_s"] for t in progress["task_times"]),
                   "eval_s": sum(t["eval_s"] for t in progress["task_times"])}
        scales = progress.get("state_scale", {})  # each task's, from the invocation that trained it
        task_info = {t: {**v, **({"state_scale": scales[t]} if t in scales else {})} for t, v in task_info.items()}
        tuners.save_adapter(self.out / "adapter", model, {
            "base_checkpoint": cfg.checkpoint, "base_digest": digest, "tasks": tasks, "task_info": task_info})
        atomic_write_json(self.out / "metrics.json", summary)
        header = "after task," + ",".join(tasks)
        lines = [header] + [f"{tasks[i]}," + ",".join("" if v is None else f"{v:.4f}" for v in row)
                            for i, row in enumerate(progress["rows"])]
        atomic_write_text(self.out / "matrix.csv", "\n".join(lines) + "\n")
        atomic_write_text(self.out / "summary.md", summary_markdown(summary) + "\n")
        last = len(tasks) - 1
        finals = [self.out / "evals" / f"pretrain_after_{last:02d}_{tasks[-1]}.json",
                  self.out / "evals" / f"after_{last:02d}_{tasks[-1]}.json"]
        write_routing(self.out, [json.loads(f.read_text()) for f in finals if f.exists()],
                      f"{cfg.method}, seed {cfg.seed}, after the sequence: pool entry chosen per task")
        plot_matrix(matrix, tasks, self.out / "matrix.png", title=f"{cfg.method}, seed {cfg.seed}")
        plot_curves(matrix, tasks, self.out / "curves.png", title=f"{cfg.method}, seed {cfg.seed}")
        return summary


def continual(cfg: ContinualConfig, method_config=None) -> dict:
    single_process("dtune continual")
    return ContinualRun(cfg, method_config).run()


__all__ = ["ContinualConfig", "ContinualRun", "continual", "resume", "sequence_tasks"]
