"""L2P, Learning to Prompt (Wang et al. 2022): a pool of prompts chosen per sample by key-query
matching; the `top_k` chosen prompts are concatenated and prepended to the input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dtune.tuners.base import Tuner, TunerConfig, query_from, register
from dtune.tuners.pool import KeyPool


@dataclass
class L2PConfig(TunerConfig):
    """A pool of prompts selected per sample by key-query matching."""

    pool_size: int = 100
    """Prompts (and keys) in the pool."""
    length: int = 5
    """Tokens per prompt."""
    top_k: int = 5
    """Prompts chosen per sample (the input gets top_k * length prompt tokens)."""
    key_loss: float = 0.5
    """Weight of the key-pull loss."""
    key_lr_scale: float = 10.0
    """Learning rate of the keys relative to the rest (as for l2m)."""
    count_penalty: float = 1.0
    """Penalty on keys chosen during earlier tasks (continual learning)."""
    batchwise: bool = True
    """While training, the whole batch uses the entries its samples choose most often (L2P's
    batch-wise selection), so a task trains its own entry; inference chooses per sample."""
    init_std: float = 0.02
    """Standard deviation of the prompts' initialisation."""


@register
class L2P(Tuner):
    name = "l2p"
    config_class = L2PConfig
    routes = True

    def build(self, model):
        c = self.config
        d = model.cfg.gpt.n_embd
        if c.length <= 0:
            raise ValueError(f"l2p: length must be positive, got {c.length}")
        self.pool = KeyPool(c.pool_size, d)
        self.prompts = nn.Parameter(torch.randn(c.pool_size, c.length, d) * c.init_std)
        self._idx = None
        self._aux = None

    def context(self, state_emb, valid, tasks=None):
        c = self.config
        q = query_from(state_emb, valid)
        idx = self.pool.select(q, c.top_k, c.count_penalty, c.batchwise)
        self._idx = idx
        self._aux = self.pool.pull_loss(q, idx, c.key_loss) if self.training else None
        return {"prompt": self.prompts[idx].flatten(1, 2)}

    def params_per_task(self):
        c = self.config
        return c.top_k * (c.length + 1) * self.prompts.shape[-1]

    def selection(self):
        return self._idx

    def aux_loss(self):
        return self._aux

    def end_task(self):
        self.pool.end_task()
