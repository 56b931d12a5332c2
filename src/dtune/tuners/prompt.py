"""Prompt tuning (Lester et al. 2021): learnable tokens placed before the input sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dtune.tuners.base import Tuner, TunerConfig, register


@dataclass
class PromptConfig(TunerConfig):
    """Learnable prompt tokens prepended to the input of the transformer."""

    num_virtual_tokens: int = 25
    """Number of prompt tokens."""
    init_std: float = 0.02
    """Standard deviation of the prompt tokens' initialisation (they pass the first LayerNorm)."""


@register
class Prompt(Tuner):
    name = "prompt"
    config_class = PromptConfig

    def build(self, model):
        c = self.config
        if c.num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be positive, got {c.num_virtual_tokens}")
        self.prompt = nn.Parameter(torch.randn(1, c.num_virtual_tokens, model.cfg.gpt.n_embd) * c.init_std)

    def context(self, state_emb, valid, tasks=None):
        return {"prompt": self.prompt}
