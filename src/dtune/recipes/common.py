"""What the recipes share: output folders, data roots, saved configs and resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
from pathlib import Path

from dtune.data.storage import (DatasetError, data_root, episode_stats, read_episodes, read_metadata,
                                resolve_sources)
from dtune.runtime.io import atomic_write_text
from dtune.runtime.runs import COMMANDS, claim_out, run_kind
from dtune.tasks import resolve_tasks
from dtune.train.engine import InterruptFlag, Interrupted, read_state_meta


def abspath(path: str | os.PathLike | None) -> str | None:
    """Absolute, resolved path (runs store these, so they work from any working directory)."""
    return None if path is None else str(Path(path).expanduser().resolve())


def resolve_data_dir(data_dir: str | None, run_config: dict | None = None) -> Path:
    """`data_dir`, else `$DTUNE_DATA_DIR`, else the data root the checkpoint was trained from
    if it still exists, else `~/.dtune/datasets`."""
    if data_dir is None and not os.environ.get("DTUNE_DATA_DIR") and run_config is not None:
        recorded = run_config.get("resolved", {}).get("data_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return data_root(data_dir)


def dataset_statistics(root: Path, task: str, source: str) -> dict:
    """What evaluating `task` needs of its dataset, from the *whole* dataset whatever part of it a
    run trains on (`--max-episodes`): the best episode return (the task's target return, see
    :func:`dtune.eval.scores.target_return`), the mean return, the references of a normalised
    score, the source, the data's episode cap (`horizon`), and for SAC data whether its agent
    learned (`behaviour_learned`). Read from
    the dataset's metadata (computed from its episodes when the metadata has no statistics)."""
    meta = read_metadata(root, task, source)
    stats = meta.get("dtune", {}).get("stats") or {}
    if stats.get("return_max") is None:
        stats = episode_stats(read_episodes(root, task, source))
    out = {"return_max": float(stats["return_max"]), "return_mean": float(stats["return_mean"]),
           "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score"), "source": source}
    if meta.get("dtune", {}).get("horizon") is not None:  # the data's episode cap: what its returns are over
        out["horizon"] = int(meta["dtune"]["horizon"])
    learned = meta.get("dtune", {}).get("sac_learned")
    if learned is not None:  # SAC data: whether its agent learned (else the data is near random)
        out["behaviour_learned"] = bool(learned)
    return out


def recorded_sources(run_config: dict) -> dict[str, str] | None:
    """The dataset source of every task of a run, as its config recorded them (`task_info`), to
    read the data it trained on; None when a task has none recorded (a run of an older version)."""
    info = run_config.get("task_info", {})
    sources = {t: info.get(t, {}).get("source") for t in resolve_tasks(run_config["tasks"])}
    return sources if all(sources.values()) else None


def task_statistics(root: Path, tasks: list[str], source: str | None = None) -> dict[str, dict]:
    """:func:`dataset_statistics` of every task (the dataset of `source`, see
    :func:`dtune.data.storage.resolve_sources`); a missing dataset raises its clear error."""
    return {t: dataset_statistics(root, t, src) for t, src in resolve_sources(Path(root), list(tasks), source).items()}


def with_task_statistics(task_info: dict, tasks: list[str], root: Path, source: str | None = None) -> dict:
    """`task_info` (what a checkpoint or adapter records) plus the dataset statistics of the
    `tasks` it does not record, where the data root has their dataset (the others keep their
    suite's default target)."""
    info = dict(task_info)
    for t in tasks:
        if t in info:
            continue
        try:
            info.update(task_statistics(root, [t], source))
        except DatasetError:
            pass  # no (unambiguous) dataset here: the task registry's default target
    return info


def saved_config(out: str | os.PathLike, kind: str) -> dict:
    """`config.json` of the `kind` run in `out` (clear errors otherwise)."""
    out = Path(out)
    found = run_kind(out)
    if found is None:
        raise ValueError(f"--resume: no {COMMANDS[kind]} run in {out} (no config.json); run without --resume to start it")
    if found != kind:
        raise ValueError(f"--resume: {out} holds a {COMMANDS[found]} run, not a {COMMANDS[kind]} run")
    return json.loads((out / "config.json").read_text())


def resume_config(cls, out: str | os.PathLike, section: str, kind: str, **overrides):
    """The config a resumed run continues with: the run's saved settings, then `overrides`
    (the options typed now, from the CLI or from Python alike), with `resume=True`."""
    saved = saved_config(out, kind)[section]
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(bad)}")
    values = {k: v for k, v in saved.items() if k in names}
    return _build(cls, {**legacy(cls), **values, **overrides, "out": abspath(out), "resume": True})


def legacy(cls) -> dict:
    """`cls.LEGACY`: what a run whose saved config lacks a setting (written before the setting
    existed) ran with, where that is not the setting's default."""
    return dict(getattr(cls, "LEGACY", {}))


def _build(cls, values: dict):
    """``cls(**values)`` with nested config dicts (from JSON) turned back into their dataclasses."""
    import typing

    hints = typing.get_type_hints(cls)
    return cls(**{k: hints[k](**v) if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) else v
                  for k, v in values.items()})


def check_resume(saved: dict, cfg, keys: tuple[str, ...], out) -> None:
    """Refuse to resume with settings that would change the run (a setting the saved config lacks,
    written before the setting existed, had its :func:`legacy` value, else its default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    defaults.update(legacy(type(cfg)))
    diff = [f"{k}: {saved.get(k, defaults.get(k))!r} -> {getattr(cfg, k)!r}" for k in keys
            if saved.get(k, defaults.get(k)) != getattr(cfg, k)]
    if diff:
        raise ValueError(f"--resume with settings that differ from the run in {out}: {'; '.join(diff)}. "
                         "Resume with the run's own settings (drop these options), or start a new run with another --out.")


def resume_command(kind: str, out: str | os.PathLike) -> str:
    return f"{COMMANDS[kind]} --out {shlex.quote(str(out))} --resume"


RUN_FILES = ("config.json", "metrics.csv", "metrics.jsonl", "summary.json", "tb", "evals", "progress.json",
             "curve.jsonl")
"""What a run writes before its first checkpoint: cleared when it starts over."""


def start_fresh(out: Path, kind: str, markers: tuple[str, ...]) -> None:
    """A new run in `out`: refuse a folder that holds another kind of run, or a run of this kind
    that has progress (`markers`: files that mean it has); the files of a run interrupted before
    its first checkpoint are cleared (nothing else in the folder is touched)."""
    claim_out(out, kind)
    if any((out / m).exists() for m in markers):
        raise ValueError(f"{out} already holds a {COMMANDS[kind]} run; pass --resume to continue it or choose another --out")
    if run_kind(out) == kind:  # config only: interrupted before anything was saved
        for name in RUN_FILES:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _fit(trainer, stop: int, checkpoint, ckpt_every: int, kind: str, out: Path, where: str) -> None:
    """``trainer.fit`` up to `stop`; an interrupt becomes a message with the command that resumes."""
    try:
        trainer.fit(stop, checkpoint, ckpt_every)
    except Interrupted as e:
        if trainer.log is not None:
            trainer.log.close()
        resumable = e.saved or read_state_meta(out) is not None
        kept = "checkpoint saved" if e.saved else "the last checkpoint is kept" if resumable else "nothing was saved"
        then = f"Continue with: {resume_command(kind, out)}" if resumable else "Run the same command again to start over."
        raise Interrupted(e.step, resumable, f"interrupted at {where.format(step=e.step)}; {kept}. {then}") from None


CURVE = "curve.jsonl"
"""A run's learning curve: one JSON row per evaluation during training (`fit(eval_every=...)`)."""


class Curve:
    """The learning curve of the run in `out` that trains on from update `step` (0: a new run): the rows of
    :data:`CURVE` up to `step` are kept, later ones (an interrupted invocation's) dropped, and each row
    added is written at once (the file replaced whole, never half-written)."""

    def __init__(self, out: Path, step: int):
        self.path = Path(out) / CURVE
        rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()] if self.path.exists() else []
        self.rows = [r for r in rows if r["step"] <= step]
        if len(self.rows) < len(rows):
            self._write()

    def _write(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def has(self, step: int) -> bool:
        return any(r["step"] == step for r in self.rows)

    def add(self, step: int, row: dict) -> None:
        self.rows.append({"step": step, **row})
        self._write()

    def ended(self, step: int, row: dict) -> list[dict] | None:
        """The curve with the final evaluation (at `step`) as its last point; None when there is no curve."""
        return [*self.rows, {"step": step, **row}] if self.rows else None


def curve_point(r: dict) -> dict:
    """A curve row's figures from one task's evaluation (:func:`dtune.eval.rollout.evaluate_agent`'s per-task
    result, or a protocol target's row, which also names its target return)."""
    return {"score_standard": r["score"], "return_mean": r["return_mean"], "return_std": r["return_std"],
            "episodes": r["episodes"], **({"target": r["target"]} if "target" in r else {})}


def due(step: int, every: int, stop: int) -> bool:
    """Whether a learning curve evaluated every `every` updates has a point at `step` (before `stop`, where
    the run's final evaluation is its last point)."""
    return every > 0 and 0 < step < stop and step % every == 0


@contextlib.contextmanager
def untouched_rng(device):
    """Random streams (torch's, CUDA's on `device`, numpy's and Python's global ones) restored on exit, so
    that what runs inside (an evaluation during training) leaves the training's random numbers as they were."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def fit(trainer, stop: int, checkpoint, ckpt_every: int, kind: str, out: Path, where: str, eval_every: int = 0,
        evaluate=None) -> Curve:
    """``trainer.fit`` that turns an interrupt into a message saying what was kept and the
    command that resumes (``where``: the run's position, e.g. "step 40 of 100").

    `eval_every` > 0: training pauses every `eval_every` updates before `stop` for `evaluate(step)`
    (a dict), whose rows, with their step, make the run's learning curve (:data:`CURVE`: rows past the
    resume point are dropped, those before it kept). Evaluating neither uses nor moves the random
    streams of training, so a run trains to the same weights as without (tested); its logged losses are
    the same too where `eval_every` is a multiple of the trainer's `log_every` (a pause ends a row; the
    timings of the rows leave the evaluations out).
    An interrupt while evaluating lets the evaluation finish (a second Ctrl-C: not), saves a checkpoint
    there and raises :class:`Interrupted`. Returns the run's :class:`Curve`."""
    curve = Curve(out, trainer.step)
    if trainer.saved_step is None:  # what a non-finite loss's message names in a later segment
        trainer.saved_step = trainer.step
    for at in range(eval_every, stop, eval_every) if eval_every else ():
        if at < trainer.step:  # evaluated by an earlier invocation of a resumed run (or before the curve was asked)
            continue
        _fit(trainer, at, checkpoint, ckpt_every, kind, out, where)
        if curve.has(at):
            continue
        with InterruptFlag() as flag:  # Ctrl-C or SIGTERM: the evaluation ends, is kept, then the run stops
            try:
                with untouched_rng(trainer.device):
                    curve.add(at, evaluate(at))
            except KeyboardInterrupt:  # a second Ctrl-C: at once, without this point
                flag.hit = True
        if flag.hit:
            if trainer.log is not None:
                trainer.log.close()
            if trainer.saved_step != at:
                checkpoint(at)
            raise Interrupted(at, True, f"interrupted while evaluating at {where.format(step=at)}; checkpoint saved. "
                                        f"Continue with: {resume_command(kind, out)}")
    _fit(trainer, stop, checkpoint, ckpt_every, kind, out, where)
    return curve


def trained_precision(out: Path, resume: bool, precision: str, requested: str) -> str:
    """The precision a run's config records: `precision`, or on a resume the earlier record, with this one
    appended (and a note) when it changed: `--precision auto` resolves per machine."""
    from dtune.runtime.device import resumed_precision

    if not resume or not (out / "config.json").exists():
        return precision
    before = json.loads((out / "config.json").read_text()).get("resolved", {}).get("precision")
    return resumed_precision(before, precision, requested)
