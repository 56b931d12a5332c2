"""Model checkpoints: safetensors weights + JSON config, never pickle.

A pre-training run folder holds `config.json` (model config, run settings, input layout, task
statistics) and `model.safetensors`. Weights of other models (GPT-2 and friends) are loaded
by converting their checkpoints into these modules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from dtune.models import ModelConfig, build_model
from dtune.runtime.io import atomic_save_tensors
from dtune.runtime.runs import COMMANDS, run_kind
from dtune.tasks import InputLayout, legacy_layout

CONFIG, WEIGHTS = "config.json", "model.safetensors"


class CheckpointError(RuntimeError):
    """A run directory that is missing, incomplete or does not match the model config."""


def read_config(run_dir: str | os.PathLike) -> dict:
    """`config.json` of a pre-training run folder (clear errors for anything else)."""
    path = Path(run_dir) / CONFIG
    kind = run_kind(run_dir)
    if kind not in (None, "pretrain"):
        hint = (" (pass it as --adapter, or give it to --checkpoint of `dtune evaluate`, which finds its base)"
                if kind in ("adapt", "continual", "lamo") else
                " (`dtune evaluate --checkpoint` scores its policy again)" if kind == "baseline" else "")
        raise CheckpointError(f"{run_dir} holds a {COMMANDS[kind]} run, not a pre-trained checkpoint{hint}")
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {run_dir}: {path} not found (expected a run directory from `dtune pretrain`)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if "model" not in config:
        raise CheckpointError(f"{path} has no model config: not a run directory of `dtune pretrain`")
    return config


def run_layout(config: dict) -> InputLayout:
    """The input layout of a run (runs made before layouts were stored: the 154/6 layout)."""
    return InputLayout.from_dict(config["layout"]) if "layout" in config else legacy_layout()


def save_weights(model: torch.nn.Module, run_dir: str | os.PathLike, step: int) -> None:
    atomic_save_tensors(model.state_dict(), Path(run_dir) / WEIGHTS, {"step": str(step)})


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The model of a run directory with its weights, and the run's config dict."""
    config = read_config(run_dir)
    model = build_model(ModelConfig(**config["model"]))
    path = Path(run_dir) / WEIGHTS
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no weights ({WEIGHTS}): the run was interrupted before its first "
                              "checkpoint; start it again")
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type on corrupt files
        raise CheckpointError(f"cannot read weights {path}: {e}") from e
    check_weights(model, weights, run_dir)
    model.load_state_dict(weights)
    return model.to(device).eval(), config


def check_weights(model: torch.nn.Module, weights: dict, where) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
        raise CheckpointError(
            f"weights in {where} do not match the model config in its config.json ({', '.join(parts)}); "
            "was config.json edited or copied from another run?"
        )


def file_digest(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(run_dir: str | os.PathLike) -> str:
    """sha256 of a run's weights file (adapters record the digest of their base)."""
    return file_digest(Path(run_dir) / WEIGHTS)
