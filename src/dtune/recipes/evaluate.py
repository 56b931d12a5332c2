"""Evaluate a checkpoint, with or without an adapter, on any tasks its layout covers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dtune.eval.agents import DTAgent
from dtune.eval.rollout import evaluate_agent, evaluate_protocol
from dtune.models.io import CheckpointError, run_layout
from dtune.recipes.common import resolve_data_dir, with_task_statistics
from dtune.runtime.device import resolve_device
from dtune.runtime.io import atomic_write_json
from dtune.runtime.runs import run_kind
from dtune.tasks import resolve_tasks


@dataclass
class EvalConfig:
    """Evaluate a checkpoint on tasks, many environments at once."""

    checkpoint: str | None = None
    """Run directory of `dtune pretrain`; an adaptation run (`dtune adapt`, `dtune continual`) or a
    `dtune lamo` run works too: its adapter is applied to the base checkpoint it records. A `dtune
    baselines` run: its policy's last checkpoint, on its task."""
    adapter: str | None = None
    """Adapter directory (`dtune adapt` or `dtune lamo` run, or a `dtune continual` run or its `adapter/`
    folder), applied on top of the checkpoint (unset: the one the adapter records)."""
    tasks: str | None = None
    """Tasks or sets to evaluate (unset: the adapter's tasks, else the checkpoint's training tasks)."""
    episodes: int = 10
    """Episodes per task."""
    seed: int = 1000
    """Base seed of the evaluation episodes (kept apart from the data-collection seeds)."""
    horizon: int | None = None
    """Episode length (unset: each task's)."""
    target_scale: float = 1.0
    """Multiplies every task's target return."""
    targets: Literal["data", "protocol"] = "data"
    """`data`: each task's best dataset return (times `target_scale`). `protocol`: every target
    return of the task's evaluation protocol (D4RL-style suites: the DT/LaMo papers' 3-4 targets),
    reporting the score at the standard target and the best over targets apart."""
    data_dir: str | None = None
    """Data root whose datasets give the target returns (and score references) of tasks the
    checkpoint and adapter do not record (unset: `$DTUNE_DATA_DIR`, else the checkpoint's data
    root if it still exists, else `~/.dtune/datasets`); a task without a dataset there gets its
    suite's default target."""
    source: str | None = None
    """Dataset source for those tasks (as adapt's `--source`; unset: the one each task has)."""
    use_cache: bool = True
    """Key/value cache during decoding (off = recompute the context at every forward)."""
    max_envs: int = 512
    """Environments stepped together at most."""
    env_workers: int = 0
    """Worker processes that step the environments (shared memory, results identical); 0 = step
    them in this process. On 2 cores, 2 workers made the full MT40 evaluation x1.5 faster."""
    env_overlap: bool = False
    """With env workers: one copy of the agent per worker, the model acting for one worker's
    environments while the others step (results identical). Helps where cores are left beside the
    workers; on 2 cores it was x1.05 with one torch thread and x0.96 with two."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Precision of the model's forwards: `fp32` (the figures in `results/` were evaluated so) or
    `bf16` autocast, the precision CPU training uses: the model's share of an evaluation runs about
    2x faster on CPUs with native bf16, and actions may differ from fp32's where two nearly tie."""
    json: str | None = None
    """Write the results as JSON to this file."""
    progress: bool = True
    """Show a progress bar."""


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder of an adaptation, continual or lamo run (or the folder itself)."""
    from dtune.tuners import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    path = Path(path)
    if (path / ADAPTER_CONFIG).exists():
        if not (path / ADAPTER_WEIGHTS).exists():
            raise CheckpointError(f"the adapter in {path} has no weights ({ADAPTER_WEIGHTS}): a study's copy kept without "
                                  "weights? Evaluate the run it was copied from")
        return path
    if (path / "adapter" / ADAPTER_CONFIG).exists():
        return path / "adapter"
    kind = run_kind(path)
    if kind in ("continual", "lamo"):
        raise CheckpointError(f"the {kind} run in {path} has no adapter (it saves one when it finishes; a study's copy "
                              "kept without weights has none)")
    raise CheckpointError(f"no adapter in {path} (expected adapter.json from `dtune adapt`, `dtune continual` or "
                          "`dtune lamo`)")


def resolve_checkpoint(checkpoint: str | None, adapter: str | None) -> tuple[str, str | None]:
    """`(base checkpoint, adapter folder or None)`: an adaptation run given as `checkpoint`
    becomes the adapter; a missing checkpoint is the one the adapter records."""
    from dtune.tuners import read_adapter_config

    if checkpoint is not None and adapter is None and run_kind(checkpoint) in ("adapt", "continual", "lamo"):
        adapter, checkpoint = checkpoint, None
    if adapter is not None:
        adapter = str(adapter_folder(adapter))
        recorded = read_adapter_config(adapter).get("base_checkpoint")
        if checkpoint is None:
            if not recorded or not Path(recorded).exists():
                raise CheckpointError(f"the adapter in {adapter} records base checkpoint {recorded!r}, which does not "
                                      "exist here; pass --checkpoint")
            checkpoint = recorded
    if checkpoint is None:
        raise CheckpointError("no checkpoint to evaluate: pass --checkpoint (a `dtune pretrain` run) or --adapter")
    return checkpoint, adapter


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate the checkpoint (and adapter) of `cfg`; writes `cfg.json` if set."""
    from dtune.tuners import load_adapted

    if any(path is not None and run_kind(path) == "baseline" for path in (cfg.checkpoint, cfg.adapter)):
        return _evaluate_baseline(cfg)
    device = resolve_device(cfg.device)
    checkpoint, adapter = resolve_checkpoint(cfg.checkpoint, cfg.adapter)
    model, config, doc = load_adapted(checkpoint, adapter, device)
    tasks = cfg.tasks or list(doc["tasks"] if doc else config["tasks"])
    task_info = config.get("task_info", {})
    names = resolve_tasks(tasks)
    if any(t not in task_info for t in names):  # the same target as `dtune adapt` gives them
        task_info = with_task_statistics(task_info, names, resolve_data_dir(cfg.data_dir, config), cfg.source)
    agent = DTAgent(model, run_layout(config), cfg.use_cache, cfg.precision)
    if cfg.targets == "protocol":
        res = {"protocol": evaluate_protocol(agent, tasks, episodes=cfg.episodes, seed=cfg.seed, horizon=cfg.horizon,
                                             task_info=task_info, max_envs=cfg.max_envs, progress=cfg.progress,
                                             env_workers=cfg.env_workers, overlap=cfg.env_overlap)}
    else:
        res = evaluate_agent(agent, tasks, cfg.episodes, cfg.seed, cfg.horizon, task_info,
                             cfg.target_scale, cfg.max_envs, cfg.progress, env_workers=cfg.env_workers,
                             overlap=cfg.env_overlap)
    out = {"checkpoint": str(checkpoint), "adapter": adapter, "use_cache": cfg.use_cache, "precision": cfg.precision,
           **res}
    _write(cfg, out)
    return out


def _evaluate_baseline(cfg: EvalConfig) -> dict:
    """A `dtune baselines` run's policy, on the one task it trained on. It is not conditioned on a return and
    rebuilds on its own dataset: `targets`, `target_scale` and `source` do not apply (a note says so when they
    are set), nor do the DT model's `device`, `precision`, `use_cache` and `env_overlap`."""
    from dtune.recipes.baselines import evaluate_baseline_run

    if cfg.adapter is not None:
        raise CheckpointError(f"{cfg.adapter if run_kind(cfg.adapter) == 'baseline' else cfg.checkpoint} holds a "
                              "`dtune baselines` run, which takes no adapter: pass it alone, as --checkpoint")
    ignored = [f"--{k.replace('_', '-')}" for k, default in (("targets", "data"), ("target_scale", 1.0), ("source", None))
               if getattr(cfg, k) != default]
    if ignored:
        print(f"note: {cfg.checkpoint} holds an offline-RL baseline: not conditioned on a return, on the dataset it "
              f"trained on; {', '.join(ignored)} do not apply to it")
    res = evaluate_baseline_run(cfg.checkpoint, cfg.episodes, cfg.seed, cfg.horizon, cfg.data_dir, cfg.max_envs,
                                cfg.progress, cfg.env_workers, tasks=cfg.tasks)
    out = {"checkpoint": str(cfg.checkpoint), "adapter": None, **res}
    _write(cfg, out)
    return out


def _write(cfg: EvalConfig, out: dict) -> None:
    if cfg.json:
        path = Path(cfg.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, out)


__all__ = ["EvalConfig", "evaluate", "resolve_checkpoint"]
