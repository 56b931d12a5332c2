"""(IA)3 (Liu et al. 2022): learned vectors that rescale activations, initialised to one.

As in peft: ``target_modules`` have their output rescaled, except those also listed in
``feedforward_modules``, whose input is rescaled (for ``proj`` that is the MLP's hidden
activation). Defaults: keys, values and the MLP hidden layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dtune.tuners.base import Tuner, TunerConfig, list_field, match, module_key, register, target_modules


@dataclass
class IA3Config(TunerConfig):
    """Rescaling vectors on keys, values and the MLP hidden activations."""

    target_modules: list[str] = list_field(["k", "v", "proj"])
    """Linear layers to rescale."""
    feedforward_modules: list[str] = list_field(["proj"])
    """Of those, the ones rescaled at their input rather than their output."""


@register
class IA3(Tuner):
    name = "ia3"
    config_class = IA3Config
    identity_at_init = True

    def build(self, model):
        c = self.config
        self.ia3_l = nn.ParameterDict()
        for name, mod in target_modules(model, c.target_modules):
            ff = match(name, c.feedforward_modules)
            vec = nn.Parameter(torch.ones(mod.in_features if ff else mod.out_features))
            self.ia3_l[module_key(name)] = vec
            if ff:
                self.hook(mod, lambda m, args, vec=vec: (args[0] * vec.to(args[0].dtype),) + args[1:], pre=True)
            else:
                self.hook(mod, lambda m, args, out, vec=vec: out * vec.to(out.dtype))
