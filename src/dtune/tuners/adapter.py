"""Bottleneck adapters (Houlsby et al. 2019): `h + up(act(down(h)))` on the output of the
attention and of the MLP of every block; `up` starts at zero, so the model is unchanged at first."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from dtune.models.backbone import MLP, Attention
from dtune.tuners.base import Tuner, TunerConfig, module_key, register, target_modules

ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class AdapterConfig(TunerConfig):
    """Bottleneck adapters after the attention and the MLP of each block."""

    reduction_factor: int = 16
    """Bottleneck width = n_embd / reduction_factor."""
    non_linearity: str = "swish"
    """Activation in the bottleneck: swish, relu, gelu or tanh."""
    target_modules: list[str] | None = None
    """Sub-layers whose output gets an adapter (attn, mlp). None: the backbone family's default
    (gpt: attn, mlp)."""


class Bottleneck(nn.Module):
    def __init__(self, d: int, reduction: int, act: str):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown adapter non_linearity {act!r}; choose one of {', '.join(ACTIVATIONS)}")
        if reduction <= 0 or d // reduction < 1:
            raise ValueError(f"reduction_factor {reduction} leaves no bottleneck for width {d}")
        self.down = nn.Linear(d, d // reduction)
        self.act = ACTIVATIONS[act]()
        self.up = nn.Linear(d // reduction, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return h + self.up(self.act(self.down(h)))


@register
class Adapter(Tuner):
    name = "adapter"
    config_class = AdapterConfig
    identity_at_init = True

    def build(self, model):
        c = self.config
        d = model.cfg.gpt.n_embd
        self.adapters = nn.ModuleDict()
        for name, mod in target_modules(model, c.target_modules, kinds=(Attention, MLP)):
            ad = Bottleneck(d, c.reduction_factor, c.non_linearity)
            self.adapters[module_key(name)] = ad
            self.hook(mod, self._adapt, module_key(name))

    def _adapt(self, key, module, args, out):
        return self.adapters[key](out)
