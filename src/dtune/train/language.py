"""LaMo's auxiliary language loss as a training objective: every update also runs a batch of text
through the model's backbone (with its adapters) and the language model's embedding and head;
the term is `weight x` next-token cross-entropy (LaMo: 0.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dtune.data.text import BlockSampler
from dtune.train.engine import Objective


class LanguageLoss(Objective):
    """`weight * CE(model.language_logits(text[:, :-1]), text[:, 1:])` on blocks drawn by
    `sampler`; the sampler's position is saved with the training state (exact resume)."""

    name, autocast = "language", True

    def __init__(self, sampler: BlockSampler, weight: float = 0.1, device: str | torch.device = "cpu"):
        if weight < 0:
            raise ValueError(f"the language-loss weight must be >= 0, got {weight}")
        self.sampler, self.weight, self.device = sampler, float(weight), torch.device(device)

    def __call__(self, model, batch):
        if self.weight == 0:
            return None, {}
        ids = torch.from_numpy(self.sampler.sample()).to(self.device)
        logits = model.language_logits(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        return self.weight * loss, {"lm_loss": loss.detach()}

    def tensors(self):
        s = self.sampler.state()
        return {"language_sampler": torch.tensor([s["epoch"], s["pos"]], dtype=torch.int64)}

    def load_tensors(self, tensors):
        if "language_sampler" in tensors:
            epoch, pos = tensors["language_sampler"].tolist()
            self.sampler.set_state({"epoch": epoch, "pos": pos})
