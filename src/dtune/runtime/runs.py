"""Run folders: what kind of run a folder holds, and claiming an output folder for a new run.

Every run writes `config.json` with a `kind` (`pretrain`, `adapt`, `continual`, `demo`, `baseline`,
`lamo`);
folders written before kinds were stored are recognised by their keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

KINDS = ("pretrain", "adapt", "continual", "demo", "baseline", "lamo", "lm")
COMMANDS = {"pretrain": "dtune pretrain", "adapt": "dtune adapt", "continual": "dtune continual", "demo": "dtune demo",
            "baseline": "dtune baselines", "lamo": "dtune lamo", "lm": "dtune lm pretrain"}


def run_kind(path: str | os.PathLike) -> str | None:
    """The kind of run in `path` (None: no run, or not one of dtune's)."""
    path = Path(path)
    cfg = path / "config.json"
    if cfg.exists():
        try:
            doc = json.loads(cfg.read_text())
        except json.JSONDecodeError:
            return None
        if doc.get("kind") in KINDS:
            return doc["kind"]
        for key, kind in (("train", "pretrain"), ("adapt", "adapt"), ("continual", "continual")):
            if key in doc:
                return kind
    if (path / "adapter.json").exists() or (path / "result.json").exists():
        return "adapt"
    if (path / "demo_config.json").exists():
        return "demo"
    return None


def claim_out(out: str | os.PathLike, kind: str, resume: bool = False) -> Path:
    """Check that `out` may receive a `kind` run: refuse a folder holding another kind of run
    (nothing there is overwritten). Returns the absolute path."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    found = run_kind(out)
    if found is not None and found != kind:
        raise ValueError(f"--out {out} holds a {COMMANDS[found]} run; a {COMMANDS[kind]} run would overwrite it. "
                         "Choose another --out.")
    if resume and found is None:
        raise ValueError(f"--resume: no {COMMANDS[kind]} run in {out}")
    return out
