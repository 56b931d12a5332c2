"""LoRA (Hu et al. 2021): `W x + (alpha / r) B A x` on the targeted linear layers.

Field names and initialisation follow HF peft (`r`, `lora_alpha`, `lora_dropout`,
`target_modules`; A Kaiming-uniform, B zero), so the update starts at zero and peft's LoRA on
the same module computes the same function (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from dtune.models.backbone import Dropout
from dtune.tuners.base import Tuner, TunerConfig, module_key, register, target_modules


@dataclass
class LoraConfig(TunerConfig):
    """Low-rank updates of the targeted linear layers."""

    r: int = 8
    """Rank of the update."""
    lora_alpha: float = 16.0
    """Scale: the update is multiplied by lora_alpha / r."""
    lora_dropout: float = 0.0
    """Dropout on the input of the update."""
    target_modules: list[str] | None = None
    """Linear layers to adapt (peft's rule: names or name suffixes; a single string is a regex).
    None: the backbone family's default (gpt: q, v, fc, proj; see DEFAULT_TARGET_MODULES)."""
    bias: Literal["none", "lora_only"] = "none"
    """Biases that train with the update (peft's field): "none", or "lora_only", the targeted
    layers' own biases (trained in place and saved with the adapter; LaMo's code trains its q/k/v
    biases this way)."""

    def __post_init__(self):
        super().__post_init__()
        if self.bias not in ("none", "lora_only"):
            raise ValueError(f"LoRA bias must be 'none' or 'lora_only' (peft's 'all' is not supported), got {self.bias!r}")


class LoraLayer(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()  # dtune's: fast masks on CPUs

    def forward(self, x):
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


@register
class Lora(Tuner):
    name = "lora"
    config_class = LoraConfig
    identity_at_init = True

    def build(self, model):
        c = self.config
        self.layers = nn.ModuleDict()
        self.targets: dict[str, str] = {}  # module key -> the model's module name
        for name, mod in target_modules(model, c.target_modules):
            layer = LoraLayer(mod, c.r, c.lora_alpha, c.lora_dropout)
            self.layers[module_key(name)] = layer
            self.targets[module_key(name)] = name
            self.hook(mod, self._update, module_key(name))

    def saved_base(self, model):
        names = super().saved_base(model)
        if self.config.bias == "lora_only":
            names += [f"{n}.bias" for n, m in target_modules(model, self.config.target_modules) if m.bias is not None]
        return names

    @torch.no_grad()
    def fold(self, model):
        """`W += (lora_alpha / r) B A` in every targeted layer (peft's `merge_and_unload`)."""
        for key, name in self.targets.items():
            layer, mod = self.layers[key], model.get_submodule(name)
            delta = layer.lora_B.weight.float() @ layer.lora_A.weight.float() * layer.scaling
            mod.weight.copy_((mod.weight.float() + delta).to(mod.weight.dtype))

    def _update(self, key, module, args, out):
        return out + self.layers[key](args[0]).to(out.dtype)
