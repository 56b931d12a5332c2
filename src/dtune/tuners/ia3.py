"""(IA)3 (Liu et al. 2022): learned vectors that rescale activations, initialised to one.

As in peft: `target_modules` have their output rescaled, except those also listed in
`feedforward_modules`, whose input is rescaled (for `proj` that is the MLP's hidden
activation). Defaults: keys, values and the MLP hidden layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from dtune.tuners.base import (Tuner, TunerConfig, default_feedforward_modules, match, module_key, register,
                               target_modules)


@dataclass
class IA3Config(TunerConfig):
    """Rescaling vectors on keys, values and the MLP hidden activations."""

    target_modules: list[str] | None = None
    """Linear layers to rescale. None: the backbone family's default (gpt: k, v, proj)."""
    feedforward_modules: list[str] | None = None
    """Of those, the ones rescaled at their input rather than their output. None: the backbone
    family's default (gpt: proj)."""


@register
class IA3(Tuner):
    name = "ia3"
    config_class = IA3Config
    identity_at_init = True

    def resolve_config(self, model, config):
        if config.feedforward_modules is None:
            config = dataclasses.replace(config, feedforward_modules=default_feedforward_modules(model))
        return super().resolve_config(model, config)

    def build(self, model):
        c = self.config
        self.ia3_l = nn.ParameterDict()
        self.targets: dict[str, tuple[str, bool]] = {}  # module key -> (module name, scales its input)
        for name, mod in target_modules(model, c.target_modules):
            ff = match(name, c.feedforward_modules)
            self.ia3_l[module_key(name)] = nn.Parameter(torch.ones(mod.in_features if ff else mod.out_features))
            self.targets[module_key(name)] = (name, ff)
            if ff:
                self.hook(mod, self._scale_input, module_key(name), pre=True)
            else:
                self.hook(mod, self._scale_output, module_key(name))

    @torch.no_grad()
    def fold(self, model):
        """Output scaling: rows of W and the bias times l; input scaling: columns of W times l."""
        for key, (name, ff) in self.targets.items():
            mod, scale = model.get_submodule(name), self.ia3_l[key].float()
            if ff:
                mod.weight.copy_((mod.weight.float() * scale[None, :]).to(mod.weight.dtype))
            else:
                mod.weight.copy_((mod.weight.float() * scale[:, None]).to(mod.weight.dtype))
                if mod.bias is not None:
                    mod.bias.copy_((mod.bias.float() * scale).to(mod.bias.dtype))

    def _scale_input(self, key, module, args):
        return (args[0] * self.ia3_l[key].to(args[0].dtype),) + args[1:]

    def _scale_output(self, key, module, args, out):
        return out * self.ia3_l[key].to(out.dtype)
