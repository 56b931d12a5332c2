"""Adaptation methods ("tuners"), one module per method, structured like HF peft's tuners.

    from dtune.tuners import attach, make_config
    tuner = attach(model, "lora", make_config("lora", r=4))   # freezes the base, adds LoRA
    ... train the parameters with requires_grad ...
    save_adapter(out_dir, model, meta)                          # only what the method trained
    model, config, adapter = load_adapted(run_dir, out_dir)     # base checkpoint + adapter

Methods (`METHODS`): full, head, last-k, l2, ewc, lora, ia3, adapter, prompt, prefix,
ptuning-v2, l2p, l2m. Named variants (`PRESETS`): l2m-ia3, l2m-oracle, l2m-pretrain-keys,
l2m-routed, l2m-routed-locked, l2m-gauss, l2m-gauss-pre, l2m-gauss-pre-io, prefix-direct. The L2 and EWC
penalties (`l2_lambda`, `ewc_lambda`) combine with any method, and so do `modules_to_save`
(whole base modules, e.g. `embed_state` or `head`, trained in place next to the method and saved
in its adapter). `target_modules=None` means the backbone family's default
(`base.DEFAULT_TARGET_MODULES`); the adapter saves the resolved list.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

# registration order = listing order
from dtune.tuners import finetune, lora, ia3, adapter, prompt, prefix, l2p, l2m  # noqa: F401,I001
from dtune.tuners.base import PRESETS, REGISTRY, Tuner, TunerConfig
from dtune.tuners.finetune import LANGUAGE

PRESETS.update({
    "l2m-ia3": ("l2m", {"modulation": "ia3"}),
    "l2m-oracle": ("l2m", {"oracle": True}),
    "l2m-pretrain-keys": ("l2m", {"pretrain_keys": True}),
    # the routing of results/l2m_routing: whitened query over the last 200 steps (a Meta-World
    # episode) at evaluation, pre-training keys with a margin calibrated to keep 95% of each task
    "l2m-routed": ("l2m", {"query_whitening": True, "query_span": 200, "pretrain_keys": True,
                           "calibrate_margin": 0.95}),
    # and each task's entries (those of at least 10% of its windows) locked once it is learnt
    "l2m-routed-locked": ("l2m", {"query_whitening": True, "query_span": 200, "pretrain_keys": True,
                                  "calibrate_margin": 0.95, "lock_share": 0.1}),
    # task inference by per-task Gaussians of the query (beyond the paper; results/l2m_cw10/density_probe.py)
    "l2m-gauss": ("l2m", {"task_gaussians": True, "query_span": 200}),
    # and the pre-training tasks' Gaussians as the "no modulation" class, no rejection threshold
    "l2m-gauss-pre": ("l2m", {"task_gaussians": True, "pretrain_gaussians": True, "density_reject": None,
                              "query_span": 200}),
    "l2m-gauss-pre-io": ("l2m", {"task_gaussians": True, "pretrain_gaussians": True, "density_reject": None,
                                 "query_span": 200, "entry_modules": ["io"]}),
    "prefix-direct": ("prefix", {"prefix_projection": False}),
})

METHODS = list(REGISTRY)
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"


class AdapterError(RuntimeError):
    """An adapter directory that is missing, incomplete or made for another base checkpoint."""


def resolve_method(name: str) -> tuple[str, dict]:
    """`(registered method, preset overrides)` of a method or preset name."""
    if name in REGISTRY:
        return name, {}
    if name in PRESETS:
        return PRESETS[name]
    import difflib

    known = METHODS + list(PRESETS)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown adaptation method {name!r}.{hint} Known: {', '.join(known)}")


def config_class(name: str) -> type[TunerConfig]:
    return REGISTRY[resolve_method(name)[0]].config_class


def make_config(name: str, **overrides) -> TunerConfig:
    """The config of a method or preset, with `overrides` (field names as in the dataclass)."""
    method, preset = resolve_method(name)
    cls = REGISTRY[method].config_class
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"method {method!r} has no option(s) {', '.join(bad)}; its options: {', '.join(sorted(fields))}")
    return cls(**{**preset, **overrides})


def config_from_dict(method: str, values: dict) -> TunerConfig:
    cls = REGISTRY[method].config_class
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def attach(model: nn.Module, name: str, config: TunerConfig | None = None) -> Tuner:
    """Freeze `model`, attach the method, unfreeze what it trains. Returns the tuner
    (also `model.tuner`)."""
    if getattr(model, "tuner", None) is not None:
        raise ValueError(f"the model already has a {model.tuner.name!r} tuner attached; detach it first")
    method, _ = resolve_method(name)
    cls = REGISTRY[method]
    config = config or make_config(name)
    if not isinstance(config, cls.config_class):
        raise TypeError(f"method {method!r} takes a {cls.config_class.__name__}, got {type(config).__name__}")
    tuner = cls(model, config)  # its config: target_modules=None resolved for the model's backbone
    base = set(tuner.base_trainable(model)) | set(tuner.saved_base(model))
    try:
        tuner.build(model)
    except BaseException:
        tuner.remove_hooks()  # a failed attach leaves the model as it was
        raise
    device = next((p.device for p in model.parameters()), None)
    if device is not None:
        tuner.to(device)  # its new weights where the model's are (it may already be on a GPU)
    for n, p in model.named_parameters():
        p.requires_grad_(n in base)
    model.tuner = tuner
    for p in tuner.parameters():
        p.requires_grad_(True)
    return tuner


def check_config(model: nn.Module, name: str, config: TunerConfig) -> None:
    """Raise the error attaching `config` to `model` would raise, leaving `model` untouched."""
    import copy

    attach(copy.deepcopy(model), name, config)


def detach(model: nn.Module) -> None:
    """Remove the tuner (hooks and parameters); base parameters trainable again."""
    if model.tuner is not None:
        model.tuner.remove_hooks()
        model.tuner = None
    for p in model.parameters():
        p.requires_grad_(True)


def merge(model: nn.Module) -> nn.Module:
    """Fold the attached method into the base weights and detach it (peft's `merge_and_unload`):
    the returned model (the same object) computes what the adapted one did, with no tuner. For
    full fine-tuning and its variants, LoRA and (IA)3; methods that add inputs or modules
    (prompts, prefixes, adapters, pools) raise a ValueError that says so."""
    tuner = getattr(model, "tuner", None)
    if tuner is None:
        return model
    tuner.fold(model)
    detach(model)
    return model


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def parameter_counts(model: nn.Module) -> dict:
    """Trainable parameters (the tuner's and the base parameters it trains, `modules_to_save`
    included) and their share of the base model (the model without its tuner); `per_task`: what
    one task trains (pool methods: one task's entries and keys, not the pool, plus the trained base
    parameters)."""
    base = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("tuner."))
    added = sum(p.numel() for n, p in model.named_parameters() if n.startswith("tuner."))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_task = model.tuner.params_per_task() if getattr(model, "tuner", None) is not None else None
    if per_task is None:
        per_task = trainable
    else:  # plus the base parameters it trains (modules_to_save), shared by the tasks
        per_task += sum(p.numel() for n, p in model.named_parameters()
                        if p.requires_grad and not n.startswith("tuner."))
    return {"trainable": trainable, "base": base, "added": added, "trainable_pct": 100.0 * trainable / base,
            "per_task": per_task, "per_task_pct": 100.0 * per_task / base}


NORMALISER = ("state_mean", "state_std")
"""The model's state statistics: adaptation can fill the columns its pre-training never saw with
the new task's (`dtune adapt --new-columns task`), so adapters carry them (adapters made before
2026-12-06 do not: they keep the base's)."""


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What adaptation changed: the tuner's tensors (parameters and buffers), the base parameters
    it updates and the state statistics (:data:`NORMALISER`)."""
    train = set(trainable_names(model))
    return {k: v for k, v in model.state_dict().items() if k.startswith("tuner.") or k in train or k in NORMALISER}


def base_digest(run_dir: str | os.PathLike) -> str:
    """sha256 of the base checkpoint's weights (adapters record it)."""
    from dtune.models.io import weights_digest

    return weights_digest(run_dir)


def save_adapter(out: str | os.PathLike, model: nn.Module, meta: dict) -> None:
    """Write `adapter.safetensors` + `adapter.json` (method, config, tuner state and `meta`:
    base checkpoint path and digest, tasks, their target returns ...), atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tuner = model.tuner
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state(model).items()}
    tmp = out / f".{ADAPTER_WEIGHTS}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, out / ADAPTER_WEIGHTS)
    doc = {"method": tuner.name, "config": dataclasses.asdict(tuner.config), "state": tuner.extra_state(),
           "state_clip": model.cfg.state_clip, "tensors": sorted(tensors), **meta}
    tmp = out / f".{ADAPTER_CONFIG}.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / ADAPTER_CONFIG)


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.exists():
        raise AdapterError(f"no adapter at {adapter_dir}: {path} not found (expected a directory from `dtune adapt`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is not valid JSON ({e})") from e


def apply_adapter(model: nn.Module, adapter_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> dict:
    """Attach the adapter saved in `adapter_dir` to `model` (loaded from `base_dir`) and load
    its tensors. Refuses an adapter trained on another base checkpoint. Returns its config."""
    doc = read_adapter_config(adapter_dir)
    if base_dir is not None and doc.get("base_digest") and doc["base_digest"] != base_digest(base_dir):
        raise AdapterError(
            f"the adapter in {adapter_dir} was trained on another base checkpoint ({doc.get('base_checkpoint')}, "
            f"sha256 {doc['base_digest'][:12]}...), not on {base_dir}; pass the checkpoint it was trained on")
    if doc["method"] not in REGISTRY:
        raise AdapterError(f"adapter in {adapter_dir} uses unknown method {doc['method']!r}")
    try:
        tensors = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types
        raise AdapterError(f"cannot read {Path(adapter_dir) / ADAPTER_WEIGHTS}: {e}") from e
    tuner = attach(model, doc["method"], config_from_dict(doc["method"], doc["config"]))
    tuner.load_extra_state(doc.get("state", {}))
    tensors.update({f"tuner.{k}": v for k, v in tuner.state_defaults().items() if f"tuner.{k}" not in tensors})
    base = model.state_dict()
    tensors.update({k: base[k] for k in NORMALISER if k not in tensors})  # an older adapter: the base's
    if "state_clip" in doc:
        model.cfg.state_clip = doc["state_clip"]
    expected = set(adapter_state(model))
    for k in [k for k in tensors if k.startswith(LANGUAGE) and k not in expected and k in base]:
        if not torch.equal(tensors[k], base[k]):  # saved by full fine-tuning before it left them frozen
            raise AdapterError(f"adapter tensor {k} in {adapter_dir} differs from the base's: the method no longer "
                               "trains the language embedding, so this adapter cannot be applied as trained")
        del tensors[k]
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise AdapterError(f"adapter tensors in {adapter_dir} do not match method {doc['method']!r} with its saved "
                           f"config (missing {missing[:3]}, unexpected {extra[:3]})")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # size mismatches
        raise AdapterError(f"adapter tensors in {adapter_dir} have other shapes than the model's: {e}") from e
    return doc


def load_adapted(run_dir: str | os.PathLike, adapter_dir: str | os.PathLike | None, device="cpu"):
    """The base model of `run_dir` with the adapter of `adapter_dir` (if any) attached.
    Returns `(model, run_config, adapter_config | None)`; the run config's `task_info` includes
    the adapted tasks' statistics (their evaluation targets)."""
    from dtune.models.io import load_model

    model, config = load_model(run_dir, "cpu")
    doc = None
    if adapter_dir is not None:
        doc = apply_adapter(model, adapter_dir, run_dir)
        config = {**config, "task_info": {**config.get("task_info", {}), **doc.get("task_info", {})}}
    return model.to(device).eval(), config, doc


__all__ = ["METHODS", "PRESETS", "REGISTRY", "Tuner", "TunerConfig", "AdapterError", "attach", "detach",
           "make_config", "config_class", "check_config", "resolve_method", "merge", "trainable_names", "parameter_counts",
           "NORMALISER", "adapter_state", "save_adapter", "apply_adapter", "load_adapted", "read_adapter_config", "base_digest"]
