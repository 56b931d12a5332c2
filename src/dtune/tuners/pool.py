"""Key-query matching shared by L2P and L2M.

The query is the mean of the frozen state embeddings over the context (`query_from`). It is
compared with learnable keys (initialised U(-1, 1)) by cosine similarity; the best `top_k`
keys are chosen (hard). The key-pull loss `-weight * mean cos(query, chosen keys)` moves the
chosen keys towards the queries that chose them. While training:

* keys chosen on earlier tasks are penalised, `score = cos - count_penalty * n_k / max_k n_k`
  with `n_k` the earlier selections of key `k`, so a new task claims fresh keys instead of
  overwriting the modulators of old ones;
* with `batchwise` (L2P's batch-wise selection) the whole batch uses the `top_k` keys its
  samples choose most often, so one task trains one entry (or `top_k`) and its key moves to
  the task's mean query; at inference every sample chooses for itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class KeyPool(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"pool_size must be positive, got {size}")
        self.keys = nn.Parameter(torch.empty(size, dim).uniform_(-1.0, 1.0))
        self.register_buffer("counts", torch.zeros(size))  # selections while training the current task
        self.register_buffer("prev_counts", torch.zeros(size))  # selections while training earlier tasks

    def scores(self, query: torch.Tensor, count_penalty: float = 0.0) -> torch.Tensor:
        sim = F.normalize(query, dim=-1) @ F.normalize(self.keys.float(), dim=-1).T  # (B, pool)
        if count_penalty and self.prev_counts.sum() > 0:
            sim = sim - count_penalty * self.prev_counts / self.prev_counts.max()
        return sim

    def select(self, query: torch.Tensor, top_k: int, count_penalty: float, batchwise: bool = False) -> torch.Tensor:
        """Indices `(B, top_k)` of the chosen keys; counts them while training."""
        if top_k > self.keys.shape[0]:
            raise ValueError(f"top_k ({top_k}) is larger than the pool ({self.keys.shape[0]})")
        idx = self.scores(query, count_penalty if self.training else 0.0).topk(top_k, dim=-1).indices
        if self.training and batchwise:
            votes = torch.bincount(idx.flatten(), minlength=self.keys.shape[0])
            idx = votes.topk(top_k).indices.expand(query.shape[0], top_k)
        if self.training:
            self.counts += torch.bincount(idx.flatten(), minlength=self.counts.numel()).to(self.counts)
        return idx

    def pull_loss(self, query: torch.Tensor, idx: torch.Tensor, weight: float) -> torch.Tensor:
        chosen = F.normalize(self.keys.float()[idx], dim=-1)  # (B, k, D)
        cos = (chosen * F.normalize(query, dim=-1)[:, None]).sum(-1)
        return -weight * cos.mean()

    def end_task(self):
        self.prev_counts += self.counts
        self.counts.zero_()
