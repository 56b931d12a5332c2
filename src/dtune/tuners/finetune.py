"""Fine-tuning methods that update base weights: `full`, `head`, `last-k`, `l2`, `ewc`.

`l2` and `ewc` are full fine-tuning with their penalty switched on; the penalties themselves
(`l2_lambda`, `ewc_lambda`, see :mod:`dtune.tuners.penalty`) combine with every method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from dtune.tuners.base import Tuner, TunerConfig, register


LANGUAGE = ("lm_wte.", "lm_head.")
"""A LaMo model's language-model token embedding and head (its language loss reads text through them):
no method trains them, as in LaMo (only an explicit `modules_to_save` entry would), so adapters leave them
out; `apply_adapter` drops them from an older adapter that saved them unchanged."""


def _base_params(model: nn.Module, keep) -> list[str]:
    return [n for n, _ in model.named_parameters() if not n.startswith(("tuner.",) + LANGUAGE) and keep(n)]


@dataclass
class FullConfig(TunerConfig):
    """Full fine-tuning: every weight of the model trains (but a LaMo model's language embedding and head)."""


@register
class Full(Tuner):
    name = "full"
    config_class = FullConfig
    identity_at_init = True
    trains_base = True

    def base_trainable(self, model):
        return _base_params(model, lambda n: True)


@dataclass
class HeadConfig(TunerConfig):
    """Only the action head trains."""


@register
class Head(Tuner):
    name = "head"
    config_class = HeadConfig
    identity_at_init = True
    trains_base = True

    def base_trainable(self, model):
        return _base_params(model, lambda n: n.startswith("head."))


@dataclass
class LastKConfig(TunerConfig):
    """The last blocks of the transformer, the final LayerNorm and the action head train."""

    num_layers: int = 1
    """How many of the last transformer blocks train."""


@register
class LastK(Tuner):
    name = "last-k"
    config_class = LastKConfig
    identity_at_init = True
    trains_base = True

    def base_trainable(self, model):
        n_layer = len(model.transformer.h)
        k = self.config.num_layers
        if not 1 <= k <= n_layer:
            raise ValueError(f"last-k: num_layers must be between 1 and the model's {n_layer} blocks, got {k}")
        blocks = tuple(f"transformer.h.{i}." for i in range(n_layer - k, n_layer))
        return _base_params(model, lambda n: n.startswith(blocks + ("transformer.ln_f.", "head.")))


@dataclass
class L2Config(TunerConfig):
    """Full fine-tuning with an L2 penalty towards the pre-trained weights."""

    l2_lambda: float = 1.0
    """Weight of `lambda/2 * sum (w - w0)^2` (a choice of ours: the reference code gives none)."""


@register
class L2(Full):
    name = "l2"
    config_class = L2Config


@dataclass
class EWCConfig(TunerConfig):
    """Full fine-tuning with elastic weight consolidation (Fisher-weighted L2 penalty)."""

    ewc_lambda: float = 400.0
    """Weight of `lambda * sum F (w - w0)^2`: the reference code's penalty and its 400 (dtune 0.1
    had `lambda/2`, half the reference's strength at the same lambda)."""


@register
class EWC(Full):
    name = "ewc"
    config_class = EWCConfig
