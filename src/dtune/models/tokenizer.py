"""Min-max action tokenizer: each action dimension in [low, high] -> one of `n_bins` uniform bins."""

from __future__ import annotations

import torch


class ActionTokenizer:
    """`encode` maps values to bin ids, `decode` maps ids to bin centres; `pad_token` (=
    `n_bins`) marks action dimensions a task does not have."""

    def __init__(self, n_bins: int = 64, low: float = -1.0, high: float = 1.0):
        if n_bins < 2 or not high > low:
            raise ValueError(f"need n_bins >= 2 and high > low, got n_bins={n_bins}, low={low}, high={high}")
        self.n_bins, self.low, self.high = n_bins, low, high
        self.pad_token = n_bins

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(self.low, self.high)
        ids = torch.floor((x - self.low) / (self.high - self.low) * self.n_bins).long()
        return ids.clamp_(0, self.n_bins - 1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        width = (self.high - self.low) / self.n_bins
        values = self.low + (ids.clamp(0, self.n_bins - 1).float() + 0.5) * width
        return torch.where(ids == self.pad_token, torch.zeros_like(values), values)
