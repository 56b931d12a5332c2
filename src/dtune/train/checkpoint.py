"""Checkpoints: safetensors weights + JSON config, never pickle.

A run directory holds ``config.json`` (model and run config, task statistics), ``model.safetensors``
and, for resuming, ``train_state.safetensors`` (optimiser moments, torch RNG) and
``train_state.json`` (step, optimiser hyperparameters, sampler RNG). Every file is written to a
temporary name and renamed into place; ``train_state.json`` is written last and names the step
that the tensor files must carry, so a half-written checkpoint is detected, not loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dtune.models import ModelConfig, build_model

CONFIG, WEIGHTS, STATE_T, STATE_J = "config.json", "model.safetensors", "train_state.safetensors", "train_state.json"


class CheckpointError(RuntimeError):
    """A run directory that is missing, incomplete or does not match the model config."""


def atomic_write_text(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(tensors: dict, path: Path, metadata: dict | None = None):
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, run_dir: Path, step: int):
    atomic_save(model.state_dict(), Path(run_dir) / WEIGHTS, {"step": str(step)})


def pack_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as tensors (``opt.<param id>.<name>``) and JSON (groups, scalars)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val
            else:
                scalars[f"{pid}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "opt_scalars": scalars}


def unpack_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for key, val in meta["opt_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_train_state(run_dir: Path, step: int, optimizer: torch.optim.Optimizer, sampler_state: dict):
    tensors, meta = pack_optimizer(optimizer)
    tensors["torch_rng"] = torch.get_rng_state()
    atomic_save(tensors, Path(run_dir) / STATE_T, {"step": str(step)})
    atomic_write_text(Path(run_dir) / STATE_J, json.dumps({"step": step, **meta, "sampler_rng": sampler_state}, indent=1))


def load_train_state(run_dir: Path, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore optimiser and torch RNG; returns ``(step, sampler_rng_state)``."""
    run_dir = Path(run_dir)
    try:
        meta = json.loads((run_dir / STATE_J).read_text())
        tensors = load_file(str(run_dir / STATE_T))
        from safetensors import safe_open

        with safe_open(str(run_dir / STATE_T), "pt") as f:
            t_step = int(f.metadata()["step"])
        with safe_open(str(run_dir / WEIGHTS), "pt") as f:
            w_step = int(f.metadata()["step"])
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {run_dir}: training state missing or unreadable ({e})") from e
    if not (t_step == w_step == meta["step"]):
        raise CheckpointError(
            f"checkpoint in {run_dir} is inconsistent (weights at step {w_step}, optimiser at {t_step}, "
            f"state file at {meta['step']}): it was interrupted while saving; start the run again"
        )
    unpack_optimizer(optimizer, tensors, meta)
    torch.set_rng_state(tensors["torch_rng"])
    return int(meta["step"]), meta["sampler_rng"]


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {run_dir}: {path} not found (expected a run directory from `dtune pretrain`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The model of a run directory with its weights, and the run's config dict."""
    config = read_config(run_dir)
    model = build_model(ModelConfig(**config["model"]))
    try:
        weights = load_file(str(Path(run_dir) / WEIGHTS))
    except (OSError, Exception) as e:  # safetensors raises its own error type on corrupt files
        raise CheckpointError(f"cannot read weights {Path(run_dir) / WEIGHTS}: {e}") from e
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
