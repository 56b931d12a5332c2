"""What every adaptation method shares: its config base class, the tuner base class, the registry.

A method is a :class:`Tuner` subclass with a config dataclass, registered by name. Attaching one
(``dtune.tuners.attach``) freezes the model, makes the tuner a submodule (``model.tuner``, so its
parameters are ``tuner.*`` in ``model.named_parameters()``), lets it hook into the backbone's
modules (found by their stable names: ``transformer.h.<i>.attn.{q,k,v,out}``,
``transformer.h.<i>.mlp.{fc,act,proj}``) and unfreezes what the method trains. Hooks leave the
base modules and their state-dict names unchanged, so the base weights are always the
checkpoint's tensors under the checkpoint's names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn


@dataclass
class TunerConfig:
    """Settings every method has: the penalties that combine with any of them."""

    l2_lambda: float = 0.0
    """Weight of the L2 penalty ``lambda/2 * sum (w - w0)^2`` pulling trained weights to their
    starting values (0 = off)."""
    ewc_lambda: float = 0.0
    """Weight of the EWC penalty ``lambda/2 * sum F (w - w0)^2`` (0 = off). F is the diagonal
    Fisher of the earlier tasks (the pre-training tasks when adapting a pre-trained model)."""
    ewc_batches: int = 10
    """Batches of earlier-task data the Fisher is estimated from."""


def match(name: str, targets: list[str] | str) -> bool:
    """peft's rule: a list matches module names equal to, or ending in ``.`` + , an entry; a string
    is a regular expression that must match the whole name."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_modules(model: nn.Module, targets: list[str] | str, kinds=(nn.Linear,)) -> list[tuple[str, nn.Module]]:
    """Backbone modules named by ``targets`` (only under ``transformer.``)."""
    found = [(n, m) for n, m in model.named_modules()
             if n.startswith("transformer.") and isinstance(m, kinds) and match(n, targets)]
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if n.startswith("transformer.h.") and isinstance(m, kinds)})
        raise ValueError(f"target_modules {targets!r} match no module of the backbone; "
                         f"valid names: {', '.join(names)}")
    return found


def module_key(name: str) -> str:
    """A module name usable as a ModuleDict / ParameterDict key (no dots)."""
    return name.removeprefix("transformer.").replace(".", "_")


class Tuner(nn.Module):
    """Base class. Subclasses set ``name``, ``config_class`` and override what they need."""

    name: ClassVar[str]
    config_class: ClassVar[type[TunerConfig]] = TunerConfig
    identity_at_init: ClassVar[bool] = False
    """Whether the model's outputs are unchanged right after attaching."""
    trains_base: ClassVar[bool] = False
    """Whether the method updates base (checkpoint) weights."""
    routes: ClassVar[bool] = False
    """Whether the method selects per sample from a pool (its choice is :meth:`selection`)."""

    def __init__(self, model: nn.Module, config: TunerConfig):
        super().__init__()
        self.config = config
        self._handles: list = []
        self.current_task: str | None = None
        self.task_slots: dict[str, int] = {}

    # -- attaching ------------------------------------------------------------------------------
    def build(self, model: nn.Module) -> None:
        """Create the method's parameters and register its hooks on ``model``'s modules."""

    def base_trainable(self, model: nn.Module) -> list[str]:
        """Names of base parameters the method trains (none for parameter-efficient methods)."""
        return []

    def hook(self, module: nn.Module, fn, pre: bool = False) -> None:
        h = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
        self._handles.append(h)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- per forward ----------------------------------------------------------------------------
    def context(self, state_emb: torch.Tensor | None, valid: torch.Tensor | None, tasks=None) -> dict:
        """Extra transformer inputs for this forward (``prompt=``, ``prefix=``); routing methods
        also choose their pool entries here. ``tasks``: task name per sample, or None (training on
        ``current_task``)."""
        return {}

    def selection(self) -> torch.Tensor | None:
        """The pool entries chosen by the last :meth:`context` call (routing methods)."""
        return None

    def params_per_task(self) -> int | None:
        """Pool methods: parameters one task trains (its chosen entries and keys); None = all."""
        return None

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers: parameter-name suffix -> scale (keys of L2P/L2M)."""
        scale = getattr(self.config, "key_lr_scale", None)
        return {"pool.keys": scale} if scale is not None else {}

    def aux_loss(self) -> torch.Tensor | None:
        """A loss term of the last forward added to the training loss (key-pull losses)."""
        return None

    # -- tasks ----------------------------------------------------------------------------------
    def begin_task(self, task: str) -> None:
        """Training on ``task`` starts (continual learning calls this once per task)."""
        self.current_task = task
        self.task_slots.setdefault(task, len(self.task_slots))

    def end_task(self) -> None:
        """Training on the current task is over."""

    def extra_state(self) -> dict:
        """JSON-serialisable state saved with the adapter (beyond tensors)."""
        return {"task_slots": self.task_slots, "current_task": self.current_task}

    def load_extra_state(self, state: dict) -> None:
        self.task_slots = dict(state.get("task_slots", {}))
        self.current_task = state.get("current_task")


REGISTRY: dict[str, type[Tuner]] = {}
PRESETS: dict[str, tuple[str, dict]] = {}
"""Named variants: ``name -> (method, config overrides)`` (``l2m-ia3``, ``l2m-oracle``...)."""


def register(cls: type[Tuner]) -> type[Tuner]:
    REGISTRY[cls.name] = cls
    return cls


def query_from(state_emb: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """L2P / L2M query: mean of the state embeddings over the real timesteps of the context."""
    state_emb = state_emb.detach().float()
    if valid is None:
        return state_emb.mean(1)
    w = valid.float()[..., None]
    return (state_emb * w).sum(1) / w.sum(1).clamp_min(1.0)


def list_field(default: list[str]):
    return field(default_factory=lambda: list(default))
