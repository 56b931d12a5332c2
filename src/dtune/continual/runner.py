"""Continual learning: one pre-trained model adapts to a sequence of tasks, one after the other.

Only the current task's dataset is loaded and sampled. Every method of ``dtune.tuners`` works:
its parameters persist across tasks (L2P and L2M keep their pools; the selection-count penalty
steers each new task to fresh keys), a fresh optimiser starts at every task, and the L2/EWC
anchor is renewed at every task switch (EWC adds the Fisher of the task just learned; before the
first task the anchor is the pre-trained model, with the Fisher of its pre-training data).

After every task all tasks of the sequence are evaluated, building the score matrix (see
:mod:`dtune.continual.metrics`); with ``eval_pretrain`` the pre-training tasks are evaluated
before the first task and after the last (every task with ``eval_pretrain_every``).

Outputs in ``out``: ``config.json``, ``progress.json`` (matrix so far, timings), ``metrics.csv``
/ ``metrics.jsonl`` (training losses, with the task), ``evals/`` (every evaluation),
``adapter/`` (the final adapter: ``dtune evaluate --adapter``), ``matrix.csv``, ``metrics.json``,
``summary.md``, ``matrix.png`` and ``curves.png``. ``state.safetensors`` + ``state.json`` hold the
resumable state (task, step, method tensors, optimiser, sampler and torch RNG, anchor); with
``resume`` an interrupted run continues at the task and step where it stopped and produces what
the uninterrupted run would have. Resuming a finished run recomputes its metrics and outputs
(e.g. once ``reference`` results exist).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from dtune import __version__
from dtune.continual.metrics import as_matrix, cl_metrics
from dtune.data.dataset import TrajectoryData, WindowSampler
from dtune.data.storage import read_metadata
from dtune.tasks import get_task, resolve_tasks
from dtune.train import checkpoint as ckpt
from dtune.train.adapt import (TuneSettings, cached_eval, fit_pretrain_keys, model_stats, peak_lr, pretrain_batches,
                               resolve_data_dir, train_steps)
from dtune.train.pretrain import MetricsLog, make_optimizer, resolve_device, resolve_precision, to_torch

STATE_T, STATE_J, PROGRESS = "state.safetensors", "state.json", "progress.json"


@dataclass
class ContinualConfig(TuneSettings):
    """Adapt a pre-trained checkpoint to a sequence of tasks, one after the other."""

    sequence: str = "cw10"
    """Task sequence: a named set (``cw10`` in the paper's order, ``dmc6``) or comma-separated tasks."""
    out: str = "runs/continual"
    """Output directory."""
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
    """Directory with single-task ``dtune adapt`` runs (searched recursively for result.json) of the
    same method, for forward transfer."""
    ckpt_every: int = 250
    """Steps between resumable checkpoints within a task (and one at every task end)."""
    resume: bool = False
    """Continue the interrupted run in ``out``."""


_RESUME_KEYS = ("checkpoint", "sequence", "method", "steps_per_task", "batch_size", "lr", "min_lr", "warmup_steps",
                "weight_decay", "grad_clip", "max_episodes", "seed", "eval_episodes", "eval_pretrain",
                "pretrain_episodes", "eval_pretrain_every", "eval_seed", "horizon")


def sequence_tasks(sequence: str) -> list[str]:
    tasks = resolve_tasks(sequence)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"sequence {sequence!r} names a task twice")
    return tasks


def task_targets(root: Path, tasks: list[str]) -> dict[str, dict]:
    """Evaluation statistics of every task of the sequence from its dataset's metadata (the data
    itself is loaded only when its task's turn comes)."""
    info = {}
    for t in tasks:
        meta = read_metadata(root, t)
        st = meta["dtune"].get("stats", {})
        info[t] = {"return_max": st.get("return_max"), "return_mean": st.get("return_mean"),
                   "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score")}
    return info


def reference_scores(ref_dir: str | None, method: str, tasks: list[str]) -> dict[int, float]:
    """Single-task scores of ``method`` per sequence position, from ``dtune adapt`` results."""
    if not ref_dir:
        return {}
    found = {}
    for path in Path(ref_dir).rglob("result.json"):
        r = json.loads(path.read_text())
        if r.get("method") == method and r.get("task") in tasks and r.get("new_task_score") is not None:
            found[tasks.index(r["task"])] = float(r["new_task_score"])
    return found


class ContinualRun:
    def __init__(self, cfg: ContinualConfig, method_config=None):
        from dtune import tuners

        self.cfg = cfg
        self.tasks = sequence_tasks(cfg.sequence)
        self.out = Path(cfg.out)
        self.method, _ = tuners.resolve_method(cfg.method)
        self.method_config = method_config or tuners.make_config(cfg.method)
        if cfg.steps_per_task <= 0:
            raise ValueError(f"--steps-per-task must be positive, got {cfg.steps_per_task}")
        if cfg.eval_episodes <= 0:
            raise ValueError("--eval-episodes must be positive: the score matrix needs evaluations")
        if cfg.resume:
            self._check_resume()
        elif (self.out / PROGRESS).exists() or (self.out / STATE_J).exists():
            raise ValueError(f"{self.out} already holds a continual run; pass --resume to continue it or choose another --out")
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)

    def _check_resume(self):
        path = self.out / "config.json"
        if not path.exists():
            raise ValueError(f"--resume: no continual run in {self.out}")
        saved = json.loads(path.read_text())
        diff = [f"{k}: {saved['continual'].get(k)!r} -> {getattr(self.cfg, k)!r}" for k in _RESUME_KEYS
                if saved["continual"].get(k) != getattr(self.cfg, k)]
        if saved["method_config"] != dataclasses.asdict(self.method_config):
            diff.append("method options")
        if diff:
            raise ValueError(f"--resume with settings that differ from the run in {self.out}: {'; '.join(diff)}")

    # -- state ----------------------------------------------------------------------------------
    def _save_state(self, model, task_i: int, step: int, optimizer, sampler, anchor):
        from dtune import tuners

        tensors = {f"model.{k}": v for k, v in tuners.adapter_state(model).items()}
        opt_t, opt_meta = ckpt.pack_optimizer(optimizer) if optimizer is not None else ({}, None)
        tensors.update(opt_t)
        tensors.update({f"anchor.{k}": v for k, v in anchor.tensors().items()})
        tensors["torch_rng"] = torch.get_rng_state()
        ckpt.atomic_save(tensors, self.out / STATE_T, {"task": str(task_i), "step": str(step)})
        ckpt.atomic_write_text(self.out / STATE_J, json.dumps({
            "task": task_i, "step": step, "optimizer": opt_meta,
            "sampler_rng": sampler.state() if sampler is not None else None,
            "tuner": model.tuner.extra_state(),
        }, indent=1))

    def _load_state(self, model, anchor) -> tuple[dict, dict]:
        from safetensors import safe_open

        try:
            meta = json.loads((self.out / STATE_J).read_text())
            tensors = load_file(str(self.out / STATE_T))
            with safe_open(str(self.out / STATE_T), "pt") as f:
                tag = f.metadata()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot resume {self.out}: state missing or unreadable ({e})") from e
        if int(tag["task"]) != meta["task"] or int(tag["step"]) != meta["step"]:
            raise ValueError(f"state in {self.out} is inconsistent (interrupted while saving); start the run again")
        weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(weights, strict=False)
        model.tuner.load_extra_state(meta["tuner"])
        anchor.load_tensors({k.removeprefix("anchor."): v for k, v in tensors.items() if k.startswith("anchor.")})
        return meta, tensors

    def _progress(self) -> dict:
        path = self.out / PROGRESS
        return json.loads(path.read_text()) if path.exists() else {"rows": [], "pretrain_rows": [], "task_times": []}

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm import tqdm

        from dtune import tuners
        from dtune.eval.rollout import EvalConfig, evaluate
        from dtune.tuners.penalty import Anchor

        cfg, tasks = self.cfg, self.tasks
        for t in tasks:
            get_task(t)
        model, run_config = ckpt.load_model(cfg.checkpoint, "cpu")
        tuners.check_config(model, cfg.method, self.method_config)
        root = resolve_data_dir(cfg.data_dir, run_config)
        info = task_targets(root, tasks)
        eval_config = {**run_config, "task_info": {**run_config.get("task_info", {}), **info}}
        model = model.to(self.device)
        pre_tasks = list(run_config["tasks"])
        progress = self._progress()
        if cfg.eval_pretrain and "pretrain_before" not in progress:
            progress["pretrain_before"] = cached_eval(cfg.checkpoint, model, run_config, pre_tasks, cfg.pretrain_episodes,
                                                      cfg.eval_seed, cfg.horizon, cfg.progress)["mean_score"]

        torch.manual_seed(cfg.seed)
        tuner = tuners.attach(model, cfg.method, self.method_config)
        model.to(self.device)
        anchor = Anchor(model, self.method_config.l2_lambda, self.method_config.ewc_lambda)
        counts = tuners.parameter_counts(model)
        resumed = None
        if cfg.resume and (self.out / STATE_J).exists():
            resumed = self._load_state(model, anchor)
        else:
            if getattr(self.method_config, "pretrain_keys", False):
                fit_pretrain_keys(model, tuner, run_config, root, self.device, cfg.seed)
            if anchor.active:  # before the first task: anchor at the pre-trained model
                batches = None
                if anchor.ewc_lambda > 0:
                    _, raw = pretrain_batches(model, run_config, root, self.method_config.ewc_batches, cfg.batch_size,
                                              cfg.seed)
                    batches = [to_torch(b, self.device) for b in raw]
                anchor.consolidate(model, batches, lambda b: model.loss(b)[0])
        self.out.mkdir(parents=True, exist_ok=True)
        peak = peak_lr(cfg, run_config)
        ckpt.atomic_write_text(self.out / "config.json", json.dumps({
            "dtune_version": __version__, "continual": asdict(cfg), "tasks": tasks, "method": self.method,
            "method_config": dataclasses.asdict(self.method_config),
            "resolved": {"device": str(self.device), "precision": self.precision, "lr": peak, "data_dir": str(root),
                         **counts},
        }, indent=1))
        first = len(progress["rows"])
        start_step = 0
        if resumed is not None:
            meta, _ = resumed
            first, start_step = meta["task"], meta["step"]
            progress["rows"] = progress["rows"][:first]
            progress["pretrain_rows"] = [r for r in progress["pretrain_rows"] if r["after"] < first]
            progress["task_times"] = progress["task_times"][:first]
        log = MetricsLog(self.out, None if resumed is None and first == 0 else self._log_step(first, start_step), False)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        (self.out / "evals").mkdir(exist_ok=True)

        for i in range(first, len(tasks)):
            task = tasks[i]
            data = TrajectoryData(root, task, cfg.max_episodes, state_stats=model_stats(model))
            sampler = WindowSampler(data, model.cfg.context_len, cfg.batch_size, seed=cfg.seed + 1000 * i)
            optimizer = make_optimizer(model, peak, cfg.weight_decay)
            step = 0
            if resumed is not None and resumed[0]["task"] == i:
                meta, tensors = resumed
                step = meta["step"]
                if meta["optimizer"] is not None:
                    ckpt.unpack_optimizer(optimizer, tensors, meta["optimizer"])
                if meta["sampler_rng"] is not None:
                    sampler.set_state(meta["sampler_rng"])
                torch.set_rng_state(tensors["torch_rng"])
                resumed = None
            tuner.begin_task(task)  # (again, after a resume: it only names the current task)
            t0 = time.perf_counter()
            bar = tqdm(total=cfg.steps_per_task, initial=step, desc=f"[{i + 1}/{len(tasks)}] {self.method} {task}",
                       disable=not cfg.progress, unit="step")

            def on_step(s, i=i, optimizer=optimizer, sampler=sampler):
                if s % cfg.ckpt_every == 0 and s < cfg.steps_per_task:
                    self._save_state(model, i, s, optimizer, sampler, anchor)

            train_steps(model, sampler, optimizer, anchor, cfg, peak, cfg.steps_per_task, step, cfg.steps_per_task,
                        self.device, autocast, log, bar, row_extra={"task_index": i, "task": task,
                                                                   "global_step": i * cfg.steps_per_task},
                        on_step=on_step)
            bar.close()
            train_s = time.perf_counter() - t0
            tuner.end_task()
            if anchor.active and i < len(tasks) - 1:  # the task switch: anchor here, EWC adds this task's Fisher
                batches = [to_torch(sampler.sample(), self.device) for _ in range(self.method_config.ewc_batches)] \
                    if anchor.ewc_lambda > 0 else None
                anchor.consolidate(model, batches, lambda b: model.loss(b)[0])
            t0 = time.perf_counter()
            res = evaluate(EvalConfig(checkpoint=cfg.checkpoint, tasks=",".join(tasks), episodes=cfg.eval_episodes,
                                      seed=cfg.eval_seed, horizon=cfg.horizon, progress=False),
                           model=model, config=eval_config)
            ckpt.atomic_write_text(self.out / "evals" / f"after_{i:02d}_{task}.json", json.dumps(res, indent=1))
            progress["rows"].append([res["tasks"][t]["score"] for t in tasks])
            if cfg.eval_pretrain and (cfg.eval_pretrain_every or i == len(tasks) - 1):
                pre = evaluate(EvalConfig(checkpoint=cfg.checkpoint, tasks=",".join(pre_tasks),
                                          episodes=cfg.pretrain_episodes, seed=cfg.eval_seed, horizon=cfg.horizon,
                                          progress=cfg.progress), model=model, config=eval_config)
                ckpt.atomic_write_text(self.out / "evals" / f"pretrain_after_{i:02d}_{task}.json", json.dumps(pre, indent=1))
                progress["pretrain_rows"].append({"after": i, "score": pre["mean_score"]})
            progress["task_times"].append({"task": task, "train_s": train_s, "eval_s": time.perf_counter() - t0})
            # progress first, then the state that points past it: a crash in between re-runs only the eval
            ckpt.atomic_write_text(self.out / PROGRESS, json.dumps(progress, indent=1))
            self._save_state(model, i + 1, 0, None, None, anchor)
        log.close()
        return self.finish(model, info, progress)

    def _log_step(self, task_i: int, step: int) -> int:
        """MetricsLog truncates rows past the resume point; rows are keyed by the step within a task,
        so keep the rows of finished tasks and of this task up to ``step``."""
        path = self.out / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            keep = [r for r in rows if r["task_index"] < task_i or (r["task_index"] == task_i and r["step"] <= step)]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        return 10 ** 12  # nothing further to drop

    def finish(self, model, task_info: dict, progress) -> dict:
        from dtune import tuners
        from dtune.report.plots import plot_curves, plot_matrix

        cfg, tasks = self.cfg, self.tasks
        matrix = as_matrix(progress["rows"])
        pre_after = progress["pretrain_rows"][-1]["score"] if progress["pretrain_rows"] else None
        metrics = cl_metrics(matrix, reference_scores(cfg.reference, cfg.method, tasks),
                             progress.get("pretrain_before"), pre_after)
        counts = tuners.parameter_counts(model)
        summary = {"method": cfg.method, "seed": cfg.seed, "sequence": cfg.sequence, "tasks": tasks,
                   "steps_per_task": cfg.steps_per_task, "matrix": progress["rows"],
                   "pretrain_rows": progress["pretrain_rows"], **metrics, **counts,
                   "train_s": sum(t["train_s"] for t in progress["task_times"]),
                   "eval_s": sum(t["eval_s"] for t in progress["task_times"])}
        tuners.save_adapter(self.out / "adapter", model, {
            "base_checkpoint": str(Path(cfg.checkpoint).resolve()), "base_digest": tuners.base_digest(cfg.checkpoint),
            "tasks": tasks, "task_info": task_info})
        ckpt.atomic_write_text(self.out / "metrics.json", json.dumps(summary, indent=1))
        header = "after task," + ",".join(tasks)
        lines = [header] + [f"{tasks[i]}," + ",".join("" if v is None else f"{v:.4f}" for v in row)
                            for i, row in enumerate(progress["rows"])]
        ckpt.atomic_write_text(self.out / "matrix.csv", "\n".join(lines) + "\n")
        ckpt.atomic_write_text(self.out / "summary.md", summary_markdown(summary) + "\n")
        plot_matrix(matrix, tasks, self.out / "matrix.png", title=f"{cfg.method}, seed {cfg.seed}")
        plot_curves(matrix, tasks, self.out / "curves.png", title=f"{cfg.method}, seed {cfg.seed}")
        return summary


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def summary_markdown(s: dict) -> str:
    from dtune.report import markdown_table

    lines = [f"# Continual run: {s['method']} on {s['sequence']} (seed {s['seed']}, {s['steps_per_task']} steps per task)", ""]
    lines.append(markdown_table(["metric", "value"], [
        ["average score at the end", _pct(s["average_score"])], ["forgetting", _pct(s["forgetting"])],
        ["forward transfer vs single-task", _pct(s["forward_transfer"])],
        ["pre-training score before / after", f"{_pct(s['pretrain_before'])} / {_pct(s['pretrain_after'])}"],
        ["trainable parameters", f"{s['trainable']:,} ({s['trainable_pct']:.2f}% of the base; per task {s['per_task_pct']:.2f}%)"],
        ["training / evaluation time", f"{s['train_s']:.0f}s / {s['eval_s']:.0f}s"]]))
    lines += ["", "Score matrix (row: after training on task; column: evaluated task):", ""]
    short = [t.removesuffix("-v3") for t in s["tasks"]]
    lines.append(markdown_table(["after \\ on"] + short, [
        [short[i]] + ["" if v is None else f"{100 * v:.0f}" for v in row] for i, row in enumerate(s["matrix"])]))
    return "\n".join(lines)


def continual(cfg: ContinualConfig, method_config=None) -> dict:
    return ContinualRun(cfg, method_config).run()


__all__ = ["ContinualConfig", "ContinualRun", "continual", "summary_markdown", "sequence_tasks"]
