"""A small end-to-end study: collect a few Meta-World tasks, pre-train, evaluate."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Literal

from dtune.runtime.io import atomic_write_json
from dtune.runtime.runs import claim_out


@dataclass
class DemoConfig:
    """A small end-to-end study: collect a few Meta-World tasks, pre-train, evaluate."""

    out: str = "runs/demo"
    """Folder for the run, its evaluation and (unless --data-dir) its data."""
    tasks: str = "reach-v3,button-press-v3,drawer-close-v3,door-open-v3,plate-slide-v3,window-open-v3"
    """Tasks of the study."""
    episodes: int = 100
    """Episodes collected per task."""
    model: Literal["tiny", "small", "paper"] = "small"
    """Model size preset."""
    steps: int = 2500
    """Pre-training steps."""
    eval_episodes: int = 10
    """Evaluation episodes per task."""
    data_dir: str | None = None
    """Data root (unset: OUT/data)."""
    seed: int = 0
    """Seed of collection and training."""
    progress: bool = True
    """Show progress bars."""


def demo(cfg: DemoConfig, say=print) -> dict:
    """Collect, pre-train (resuming a run the demo left unfinished), evaluate; returns the evaluation."""
    from dtune.data.collect import CollectConfig, collect
    from dtune.models.io import WEIGHTS
    from dtune.recipes.evaluate import EvalConfig, evaluate
    from dtune.recipes.pretrain import PretrainConfig, pretrain
    from dtune.runtime.dist import single_process
    from dtune.train.engine import STATE_J

    single_process("dtune demo")
    out = claim_out(cfg.out, "demo")
    data_dir = cfg.data_dir or str(out / "data")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"kind": "demo", "demo": asdict(cfg)})
    t0 = time.perf_counter()
    say(f"[1/3] collecting {cfg.episodes} episodes of each of {cfg.tasks} into {data_dir}")
    collect(CollectConfig(tasks=cfg.tasks, episodes=cfg.episodes, seed=cfg.seed, data_dir=data_dir,
                          progress=cfg.progress))
    run = out / "pretrain"
    resume = (run / WEIGHTS).exists() and (run / STATE_J).exists()
    say(f"[2/3] pre-training a {cfg.model} MDDT for {cfg.steps} steps in {run}" + (" (resuming)" if resume else ""))
    pretrain(PretrainConfig(out=str(run), tasks=cfg.tasks, model=cfg.model, steps=cfg.steps, seed=cfg.seed,
                            data_dir=data_dir, resume=resume, progress=cfg.progress))
    say(f"[3/3] evaluating {cfg.eval_episodes} episodes per task")
    result = evaluate(EvalConfig(checkpoint=str(run), episodes=cfg.eval_episodes, json=str(out / "eval.json"),
                                 progress=cfg.progress))
    result["demo_s"] = time.perf_counter() - t0
    return result


__all__ = ["DemoConfig", "demo"]
