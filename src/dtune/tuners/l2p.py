"""L2P, Learning to Prompt (Wang et al. 2022): a pool of prompts chosen per sample by key-query
matching; the `top_k` chosen prompts are concatenated and prepended to the input. Routing (the
same while training and at evaluation) is described in :mod:`dtune.tuners.pool`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dtune.tuners.base import TunerConfig, register
from dtune.tuners.pool import KeyPool, PoolTuner


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
    batchwise: bool = False
    """Route groups of windows by majority vote (L2P's batch-wise selection) instead of every
    window on its own: while training the group is the batch (one task's windows), at evaluation
    the windows of one task, so evaluation then uses the task names, as the original L2P's
    per-task test batches do. Default off, the same in training and evaluation: every window
    chooses its own prompts, as in the L2M reference code's L2P (dtune 0.1 voted while training
    only)."""
    init_std: float = 0.02
    """Standard deviation of the prompts' initialisation."""


@register
class L2P(PoolTuner):
    name = "l2p"
    config_class = L2PConfig

    def build(self, model):
        c = self.config
        d = model.cfg.gpt.n_embd
        if c.length <= 0:
            raise ValueError(f"l2p: length must be positive, got {c.length}")
        self.pool = KeyPool(c.pool_size, d)
        self.prompts = nn.Parameter(torch.randn(c.pool_size, c.length, d) * c.init_std)
        self.watch_state_embedding(model)
        self._idx = None
        self._aux = None

    def context(self, state_emb, valid, tasks=None):
        c = self.config
        q = self.query(state_emb, valid)
        idx = self.pool.select(q, c.top_k, c.count_penalty, c.batchwise, self.groups(tasks, q.device))
        self._idx = idx
        self._aux = self.pool.pull_loss(q, idx, c.key_loss) if self.training else None
        return {"prompt": self.prompts[idx].flatten(1, 2)}

    def params_per_task(self):
        c = self.config
        return c.top_k * (c.length + 1) * self.prompts.shape[-1]

    def selection(self):
        return self._idx

    def pooled_parameters(self):
        return ("pool.", "prompts")

    def aux_loss(self):
        return self._aux

    def end_task(self):
        self.pool.end_task()
