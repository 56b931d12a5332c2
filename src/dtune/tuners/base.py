"""What every adaptation method shares: its config base class, the tuner base class, the registry.

A method is a :class:`Tuner` subclass with a config dataclass, registered by name. Attaching one
(`dtune.tuners.attach`) freezes the model, makes the tuner a submodule (`model.tuner`, so its
parameters are `tuner.*` in `model.named_parameters()`), lets it hook into the backbone's
modules (found by their stable names: `transformer.h.<i>.attn.{q,k,v,out}`,
`transformer.h.<i>.mlp.{fc,act,proj}`) and unfreezes what the method trains. Hooks leave the
base modules and their state-dict names unchanged, so the base weights are always the
checkpoint's tensors under the checkpoint's names.

Hooks are bound methods of the tuner plus a key (:meth:`Tuner.hook`), never closures: the tuner's
modules and state are looked up when the hook runs, so `copy.deepcopy` (and pickling) of an
adapted model gives a copy whose hooks run the copy's tuner.

Default `target_modules` come from :data:`DEFAULT_TARGET_MODULES`, by the backbone's family
(`model.transformer.family`) and method, resolved when the method is attached.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn


@dataclass
class TunerConfig:
    """Settings every method has: the penalties that combine with any of them."""

    l2_lambda: float = 0.0
    """Weight of the L2 penalty `lambda/2 * sum (w - w0)^2` pulling trained weights to their
    starting values (0 = off)."""
    ewc_lambda: float = 0.0
    """Weight of the EWC penalty `lambda * sum F (w - w0)^2` (0 = off; the L2M reference code's
    form, without 1/2, so lambda means what it means there). F is the diagonal Fisher of the
    earlier tasks (the pre-training tasks when adapting a pre-trained model)."""
    ewc_batches: int = 10
    """Batches of earlier-task data the Fisher is estimated from."""
    ewc_mode: Literal["online", "separate"] = "online"
    """How EWC treats successive tasks of a continual run. "online" (dtune's default): the
    pre-training Fisher anchors the first task and each finished task's Fisher is added to the
    sum, around the latest weights, so the pull grows with the tasks done. "separate" (the L2M
    reference code's continual setting: its own rewrite of avalanche's EWC, with
    `ewc_mode="separate"`, `keep_importance_data=False`, `ewc_start_experience=1`, where, unlike
    in avalanche, only the last task's anchor is kept): no penalty on the first task, then only
    the last finished task's Fisher and weights. Both modes estimate the Fisher from the task loss
    alone with dropout off; the reference's includes dropout and its own EWC penalty. A
    single-task adaptation has one earlier task, pre-training, so both modes anchor it to the
    pre-trained model there."""
    modules_to_save: list[str] | None = None
    """Whole modules of the model, besides the adapter, that train with it and are saved in the
    adapter (peft's `modules_to_save`), named like target_modules (names or name suffixes, e.g.
    embed_state, head, embed_return). Their own weights train in place: the base checkpoint file
    is untouched and the adapter carries their new values, which loading the adapter restores
    (detaching the tuner keeps the trained values in the model)."""

    def __post_init__(self):
        from dtune.tuners.penalty import EWC_MODES

        if self.ewc_mode not in EWC_MODES:
            raise ValueError(f"ewc_mode must be 'online' or 'separate', got {self.ewc_mode!r}")


DEFAULT_TARGET_MODULES: dict[str, dict[str, list[str]]] = {
    "gpt": {
        "lora": ["q", "v", "fc", "proj"],
        "ia3": ["k", "v", "proj"],
        "adapter": ["attn", "mlp"],
    },
}
"""Default `target_modules` per backbone family and method (peft's
`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`); the family is the backbone class's
`family` attribute. L2M uses the list of its modulation (lora or ia3)."""

DEFAULT_FEEDFORWARD_MODULES: dict[str, list[str]] = {"gpt": ["proj"]}
"""Default (IA)3 `feedforward_modules` per backbone family (rescaled at their input)."""


def backbone_family(model: nn.Module) -> str | None:
    """The family of the model's backbone (`model.transformer.family`), None if it declares none."""
    return getattr(getattr(model, "transformer", None), "family", None)


def _family_default(model: nn.Module, table: dict, what: str):
    family = backbone_family(model)
    if family not in table:
        backbone = type(getattr(model, "transformer", model)).__name__
        raise ValueError(f"no default {what} for backbone {backbone} (family {family!r}; families with defaults: "
                         f"{', '.join(sorted(table))}); pass {what} explicitly")
    return table[family]


def default_target_modules(model: nn.Module, method: str) -> list[str]:
    """The default `target_modules` of `method` on the backbone family of `model`."""
    defaults = _family_default(model, DEFAULT_TARGET_MODULES, "target_modules")
    if method not in defaults:
        raise ValueError(f"no default target_modules for method {method!r} on backbone family "
                         f"{backbone_family(model)!r}; pass target_modules explicitly")
    return list(defaults[method])


def default_feedforward_modules(model: nn.Module) -> list[str]:
    """The default (IA)3 `feedforward_modules` on the backbone family of `model`."""
    return list(_family_default(model, DEFAULT_FEEDFORWARD_MODULES, "feedforward_modules"))


def match(name: str, targets: list[str] | str) -> bool:
    """peft's rule: a list matches module names equal to, or ending in `.` + , an entry; a string
    is a regular expression that must match the whole name."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def target_modules(model: nn.Module, targets: list[str] | str, kinds=(nn.Linear,)) -> list[tuple[str, nn.Module]]:
    """Backbone modules named by `targets` (only under `transformer.`)."""
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


def saved_modules(model: nn.Module, names: list[str] | None) -> list[str]:
    """Names of the parameters of the modules `names` (`modules_to_save`: names or name suffixes,
    peft's rule) of `model`, outside its tuner. Every entry must match a module with parameters."""
    if not names:
        return []
    modules = {n: m for n, m in model.named_modules()
               if n and n.split(".")[0] != "tuner" and next(m.parameters(), None) is not None}
    found: list[str] = []
    for entry in names:
        hits = [n for n in modules if match(n, [entry])]
        if not hits:
            valid = sorted({n.rsplit(".", 1)[-1] for n in modules if not n.rsplit(".", 1)[-1].isdigit()})
            raise ValueError(f"modules_to_save entry {entry!r} matches no module of the model (with parameters); "
                             f"valid names (or name suffixes): {', '.join(valid)}")
        found += [f"{n}.{p}" for n in hits for p, _ in modules[n].named_parameters()]
    return list(dict.fromkeys(found))


class Tuner(nn.Module):
    """Base class. Subclasses set `name`, `config_class` and override what they need."""

    name: ClassVar[str]
    config_class: ClassVar[type[TunerConfig]] = TunerConfig
    identity_at_init: ClassVar[bool] = False
    """Whether the model's outputs are unchanged right after attaching."""
    trains_base: ClassVar[bool] = False
    """Whether the method updates base (checkpoint) weights."""
    routes: ClassVar[bool] = False
    """Whether the method selects per sample from a pool (its choice is :meth:`selection`)."""
    modulates_embeddings: bool = False
    """Whether the method's chosen entries change the model's token embeddings or head (L2M's
    `entry_modules`): the model then routes (:meth:`context`) before it embeds, from the
    unmodulated state embeddings (the method's `unmodulated()` context), and
    :class:`dtune.models.dt.Policy` re-embeds its window after routing."""

    def __init__(self, model: nn.Module, config: TunerConfig):
        super().__init__()
        self.config = self.resolve_config(model, config)
        self._handles: list = []
        self.current_task: str | None = None
        self.task_slots: dict[str, int] = {}

    # -- attaching ------------------------------------------------------------------------------
    def resolve_config(self, model: nn.Module, config: TunerConfig) -> TunerConfig:
        """`config` with its defaults that depend on the model filled in (`target_modules=None`:
        the backbone family's default for the method). A copy: the caller's config is unchanged;
        the tuner's (saved with the adapter) is the resolved one."""
        if getattr(config, "target_modules", False) is None:
            targets = default_target_modules(model, self.default_targets_key(config))
            config = dataclasses.replace(config, target_modules=targets)
        return config

    def default_targets_key(self, config: TunerConfig) -> str:
        """Which method's entry of :data:`DEFAULT_TARGET_MODULES` gives the default target modules."""
        return self.name

    def build(self, model: nn.Module) -> None:
        """Create the method's parameters and register its hooks on `model`'s modules."""

    def base_trainable(self, model: nn.Module) -> list[str]:
        """Names of base parameters the method trains (none for parameter-efficient methods)."""
        return []

    def saved_base(self, model: nn.Module) -> list[str]:
        """Names of the base parameters of `config.modules_to_save` (they train with the method)."""
        return saved_modules(model, self.config.modules_to_save)

    def fold(self, model: nn.Module) -> None:
        """Fold what the method learned into `model`'s base weights, in place, so the model without
        the tuner computes what the model with it computes (:func:`dtune.tuners.merge`). Methods that
        train base weights have nothing to fold; methods that add inputs or modules (prompts,
        prefixes, adapters, pools) cannot be folded and raise."""
        if self.trains_base or not any(True for _ in self.parameters()):
            return
        raise ValueError(f"{self.name} cannot be folded into the model's weights: it adds inputs or modules of its "
                         "own (prompts, prefixes, adapter layers or a routed pool); keep it as an adapter "
                         "(`--adapter`) instead")

    def hook(self, module: nn.Module, fn, *args, pre: bool = False) -> None:
        """Run `fn(*args, module, inputs)` before (`pre`) or `fn(*args, module, inputs, output)`
        after `module`'s forward. `fn` must be a method of this tuner, and `args` plain keys
        (module keys, strings): the hook then finds the tuner's modules when it runs, and a
        `copy.deepcopy` / pickle of the model copies it with the tuner (a closure or lambda would
        keep calling the original's modules)."""
        if getattr(fn, "__self__", None) is not self:
            raise TypeError(f"{type(self).__name__}.hook: pass a bound method of the tuner (got {fn!r}); "
                            "closures and lambdas do not follow the tuner into copies of the model")
        hook = functools.partial(fn, *args)
        h = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
        self._handles.append(h)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- per forward ----------------------------------------------------------------------------
    def context(self, state_emb: torch.Tensor | None, valid: torch.Tensor | None, tasks=None) -> dict:
        """Extra transformer inputs for this forward (`prompt=`, `prefix=`); routing methods
        also choose their pool entries here. `tasks`: task name per sample, or None (training on
        `current_task`)."""
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

    def pooled_parameters(self) -> tuple[str, ...]:
        """Name prefixes (within the tuner) of parameters that hold one entry per pool slot (keys,
        and the prompts or modulators they select). They get no weight decay: AdamW decays a
        parameter whose gradient is zero, so it would shrink the entries of earlier tasks while a
        later task trains."""
        return ()

    def aux_loss(self) -> torch.Tensor | None:
        """A loss term of the last forward added to the training loss (key-pull losses)."""
        return None

    # -- tasks ----------------------------------------------------------------------------------
    def begin_task(self, task: str) -> None:
        """Training on `task` starts (continual learning calls this once per task)."""
        self.current_task = task
        self.task_slots.setdefault(task, len(self.task_slots))

    def end_task(self) -> None:
        """Training on the current task is over."""

    def state_defaults(self) -> dict[str, torch.Tensor]:
        """Tensors (names under `tuner.`) that adapters saved by older dtune versions lack, with
        the value that reproduces their behaviour; :func:`dtune.tuners.apply_adapter` fills them in."""
        return {}

    def extra_state(self) -> dict:
        """JSON-serialisable state saved with the adapter (beyond tensors)."""
        return {"task_slots": self.task_slots, "current_task": self.current_task}

    def load_extra_state(self, state: dict) -> None:
        self.task_slots = dict(state.get("task_slots", {}))
        self.current_task = state.get("current_task")


REGISTRY: dict[str, type[Tuner]] = {}
PRESETS: dict[str, tuple[str, dict]] = {}
"""Named variants: `name -> (method, config overrides)` (`l2m-ia3`, `l2m-oracle`...)."""


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
