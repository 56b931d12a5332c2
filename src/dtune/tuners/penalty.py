"""Penalties that keep trained weights near an anchor: L2 and EWC (Kirkpatrick et al. 2017).

Over the trainable parameters, L2 is `l2_lambda/2 * sum_i (theta_i - anchor_i)^2` and EWC is
`ewc_lambda * sum_i F_i (theta_i - anchor_i)^2` (no 1/2: the L2M reference code's EWC, so its
lambda 400 has the reference's strength), with F the diagonal empirical Fisher: the mean over
`ewc_batches` batches of the squared gradient of the loss. The anchor is taken, and the Fisher estimated, at
each task switch (:meth:`Anchor.consolidate`). In mode "online" the Fishers of successive tasks
add up; in mode "separate" (the L2M reference code's) each replaces the one before, so only the
last task's Fisher and weights pull.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn


EWC_MODES = ("online", "separate")
"""How successive tasks' Fishers combine (see `dtune.tuners.base.TunerConfig.ewc_mode`)."""


class Anchor:
    """Anchor weights (and Fisher) of the trainable parameters of `model`."""

    def __init__(self, model: nn.Module, l2_lambda: float = 0.0, ewc_lambda: float = 0.0, mode: str = "online"):
        if l2_lambda < 0 or ewc_lambda < 0:
            raise ValueError("l2_lambda and ewc_lambda must be non-negative")
        if mode not in EWC_MODES:
            raise ValueError(f"EWC mode must be 'online' or 'separate', got {mode!r}")
        self.l2_lambda, self.ewc_lambda, self.mode = float(l2_lambda), float(ewc_lambda), mode
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.anchor: dict[str, torch.Tensor] = {}
        self.fisher: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.l2_lambda > 0 or self.ewc_lambda > 0

    def consolidate(self, model: nn.Module, batches: Iterable[dict] | None = None,
                    loss_fn: Callable | None = None, with_fisher: bool = True) -> None:
        """Take the current weights as the anchor; with EWC (and `with_fisher`) add the Fisher of
        `batches` (mode "separate": it replaces the earlier ones)."""
        params = dict(model.named_parameters())
        self.anchor = {n: params[n].detach().clone() for n in self.names}
        if self.ewc_lambda <= 0 or not with_fisher:
            return
        if batches is None or loss_fn is None:
            raise ValueError("EWC needs batches of the earlier tasks to estimate the Fisher")
        fisher = {n: torch.zeros_like(params[n]) for n in self.names}
        n_batches = 0
        was_training = model.training
        model.eval()  # no dropout: the Fisher of the deterministic model
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(batch).backward()
            for n in self.names:
                if params[n].grad is not None:
                    fisher[n] += params[n].grad.detach() ** 2
            n_batches += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if n_batches == 0:
            raise ValueError("EWC: no batches to estimate the Fisher from")
        for n in self.names:
            earlier = self.fisher.get(n) if self.mode == "online" else None
            self.fisher[n] = fisher[n] / n_batches if earlier is None else earlier + fisher[n] / n_batches

    def penalty(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        dev = next(iter(params.values())).device
        total = torch.zeros((), device=dev)
        if not self.anchor:
            return total
        for n in self.names:
            d2 = (params[n].float() - self.anchor[n].float()) ** 2
            if self.l2_lambda > 0:
                total = total + 0.5 * self.l2_lambda * d2.sum()
            if self.ewc_lambda > 0 and n in self.fisher:
                total = total + self.ewc_lambda * (self.fisher[n] * d2).sum()  # the reference's: no 1/2
        return total

    def tensors(self) -> dict[str, torch.Tensor]:
        """For saving (continual runs resume with their anchor and Fisher)."""
        return {**{f"anchor.{n}": t for n, t in self.anchor.items()}, **{f"fisher.{n}": t for n, t in self.fisher.items()}}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.anchor = {k.removeprefix("anchor."): v for k, v in tensors.items() if k.startswith("anchor.")}
        self.fisher = {k.removeprefix("fisher."): v for k, v in tensors.items() if k.startswith("fisher.")}
