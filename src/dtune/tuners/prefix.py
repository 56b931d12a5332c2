"""Prefix tuning (Li & Liang 2021) and P-tuning v2 (Liu et al. 2022).

Both give every layer extra keys and values that all tokens attend to:

* `prefix`: the keys and values are learned directly, by default through peft's
  reparametrisation (`prefix_projection`: an embedding of `num_virtual_tokens` rows and a
  two-layer tanh MLP producing every layer's keys and values; only the MLP's output is used).
* `ptuning-v2`: learnable prompt tokens at every layer (deep prompts); each layer turns its
  own prompt tokens into keys and values with its frozen LayerNorm and key/value projections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dtune.tuners.base import Tuner, TunerConfig, register


@dataclass
class PrefixConfig(TunerConfig):
    """Learnable key/value prefixes in every layer."""

    num_virtual_tokens: int = 25
    """Prefix length."""
    prefix_projection: bool = True
    """Produce the prefixes with an MLP from a prefix embedding (Li & Liang's reparametrisation)."""
    encoder_hidden_size: int | None = None
    """Hidden width of that MLP (unset: the model width)."""
    init_std: float = 0.02
    """Standard deviation of the initial prefix (or prefix embedding)."""


def _split_heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """`(P, D)` -> `(1, H, P, D/H)`."""
    p, d = t.shape
    return t.view(p, n_head, d // n_head).transpose(0, 1)[None]


@register
class Prefix(Tuner):
    name = "prefix"
    config_class = PrefixConfig

    def build(self, model):
        c = self.config
        g = model.cfg.gpt
        if c.num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be positive, got {c.num_virtual_tokens}")
        self.n_layer, self.n_head, d = g.n_layer, g.n_head, g.n_embd
        if c.prefix_projection:
            hidden = c.encoder_hidden_size or d
            self.embedding = nn.Parameter(torch.randn(c.num_virtual_tokens, d) * c.init_std)
            self.transform = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, g.n_layer * 2 * d))
        else:
            self.prefix = nn.Parameter(torch.randn(g.n_layer * 2, c.num_virtual_tokens, d) * c.init_std)

    def context(self, state_emb, valid, tasks=None):
        if self.config.prefix_projection:
            kv = self.transform(self.embedding)  # (P, L*2*D)
            kv = kv.view(kv.shape[0], self.n_layer * 2, -1).transpose(0, 1)
        else:
            kv = self.prefix
        return {"prefix": [(_split_heads(kv[2 * i], self.n_head), _split_heads(kv[2 * i + 1], self.n_head))
                           for i in range(self.n_layer)]}


@dataclass
class PTuningV2Config(TunerConfig):
    """Learnable prompt tokens at every layer (deep prompt tuning)."""

    num_virtual_tokens: int = 25
    """Prompt tokens per layer."""
    init_std: float = 0.02
    """Standard deviation of their initialisation."""


@register
class PTuningV2(Tuner):
    name = "ptuning-v2"
    config_class = PTuningV2Config

    def build(self, model):
        c = self.config
        g = model.cfg.gpt
        if c.num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be positive, got {c.num_virtual_tokens}")
        self.n_kv = g.n_kv_head or g.n_head  # grouped-query attention: fewer key/value heads
        self.n_rep = g.n_head // self.n_kv
        self.prompts = nn.Parameter(torch.randn(g.n_layer, c.num_virtual_tokens, g.n_embd) * c.init_std)
        self.__dict__["_blocks"] = list(model.transformer.h)  # not submodules: the base model owns them

    def context(self, state_emb, valid, tasks=None):
        out = []
        for block, p in zip(self._blocks, self.prompts):
            x = block.ln_1(p)
            k, v = _split_heads(block.attn.k(x), self.n_kv), _split_heads(block.attn.v(x), self.n_kv)
            if self.n_rep > 1:  # the backbone takes prefixes with one key/value per query head
                k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)
            out.append((k, v))
        return {"prefix": out}
