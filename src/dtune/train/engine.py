"""The training engine every recipe uses (pre-training, single-task adaptation, continual
learning, and later LaMo): optimiser and schedule, precision, gradient clipping, objectives as
pluggable loss terms, metrics, checkpoints and exact resume.

    trainer = Trainer(model, sampler, [ActionLoss(), TunerLoss(), AnchorPenalty(anchor)],
                      OptimSettings(lr=1e-3), total_steps=1000, device=device, precision="bf16")
    trainer.fit(1000, checkpoint=lambda step: trainer.save(run_dir), ckpt_every=250)

Interrupts (Ctrl-C, SIGTERM) are taken between two updates: the engine calls `checkpoint` at
the step reached and raises :class:`Interrupted`, which says whether something was saved. A
second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dtune.runtime.device import autocast
from dtune.runtime.dist import Dist
from dtune.runtime.io import atomic_save_tensors, atomic_write_json
from dtune.train.log import MetricsLog
from dtune.train.optim import ADAM_BETAS, ADAM_EPS, cosine_lr, make_optimizer, set_lr

STATE_T, STATE_J = "train_state.safetensors", "train_state.json"


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM; `step` reached, `saved`: a checkpoint holds it."""

    def __init__(self, step: int, saved: bool, message: str = ""):
        super().__init__(message or f"interrupted at step {step}")
        self.step, self.saved, self.message = step, saved, message or f"interrupted at step {step}"


class StateError(RuntimeError):
    """A training state that is missing, unreadable or inconsistent."""


class NonFiniteLoss(RuntimeError):
    """The training loss (or the gradient norm) became NaN or infinite. Raised at the next logged
    row or checkpoint, before anything of the broken weights is saved."""

    def __init__(self, since: int, step: int, saved: int | None):
        where = f"the last checkpoint holds update {saved}" if saved is not None else "no checkpoint was written"
        super().__init__(
            f"the training loss became NaN or infinite between updates {since + 1} and {step}; stopped without "
            f"saving ({where}). Lower the learning rate, train in fp32 (--precision fp32) or without --compile, "
            "then continue from the checkpoint with --resume")
        self.since, self.step, self.saved = since, step, saved


@dataclass
class OptimSettings:
    """Optimiser and schedule of one training phase."""

    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    """Linear warm-up steps (capped at a tenth of the phase)."""
    weight_decay: float = 0.01
    """AdamW weight decay on weight matrices."""
    grad_clip: float = 0.25
    """Gradient-norm clip."""
    betas: tuple[float, float] = ADAM_BETAS
    """AdamW's betas."""
    eps: float = ADAM_EPS
    """AdamW's epsilon."""


# -- objectives -----------------------------------------------------------------------------------
class Objective:
    """One term of the training loss: `term(model, batch) -> (loss or None, metrics)`. Terms run
    in order after each other in the same step (the action loss first: the tuner's term reads
    what its forward left). `autocast`: whether it runs under the precision's autocast."""

    name = "objective"
    autocast = False

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor | None, dict]:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """State saved with the training state (resume)."""
        return {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


class ActionLoss(Objective):
    """The model's own loss on the batch (MDDT: cross-entropy of action tokens; DT: MSE)."""

    name, autocast = "action", True

    def __call__(self, model, batch):
        return model.loss(batch)


class TunerLoss(Objective):
    """The attached tuner's loss term of the last forward (L2P/L2M key-pull loss)."""

    name = "tuner"

    def __call__(self, model, batch):
        tuner = getattr(model, "tuner", None)
        aux = tuner.aux_loss() if tuner is not None else None
        return aux, ({} if aux is None else {"key_loss": aux.detach()})


class AnchorPenalty(Objective):
    """L2 / EWC penalty towards anchor weights (:class:`dtune.tuners.penalty.Anchor`)."""

    name = "anchor"

    def __init__(self, anchor):
        self.anchor = anchor

    def __call__(self, model, batch):
        if not self.anchor.active:
            return None, {}
        pen = self.anchor.penalty(model)
        return pen, {"penalty": pen.detach()}

    def tensors(self):
        return self.anchor.tensors()

    def load_tensors(self, tensors):
        self.anchor.load_tensors(tensors)


# -- the engine -----------------------------------------------------------------------------------
def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict:
    """A sampled batch as tensors on `device`, plus `all_valid` (a Python bool: no padding in the
    batch), read here on the host so that the model need not ask the GPU for it (a wait).
    (Pinned memory for asynchronous copies was tried: no faster on an H100, see
    `benchmarks/bench_train_gpu.py`.)"""
    out: dict = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}
    if "valid" in batch:
        out["all_valid"] = bool(np.all(batch["valid"]))
    return out


class InterruptFlag:
    """SIGINT/SIGTERM set a flag read between updates; a second SIGINT raises at once."""

    def __init__(self):
        self.hit = False
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.hit and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _LossModule(torch.nn.Module):
    """The model's loss as a forward, so DistributedDataParallel sees it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        loss, metrics = self.model.loss(batch)
        tuner = getattr(self.model, "tuner", None)
        # a tuner's term of this forward (L2P/L2M's key-pull loss) is an output too: DistributedDataParallel
        # then sees the parameters only it reaches (the pool keys; routing itself is a non-differentiable top-k)
        return loss, metrics, tuner.aux_loss() if tuner is not None else None


class _LossView:
    """What objectives see when the loss runs through a wrapper (DistributedDataParallel, whose
    gradients are averaged over ranks, and/or torch.compile): `loss` is the wrapper's, everything
    else the model's."""

    def __init__(self, model, loss_fn):
        self._model, self._loss = model, loss_fn

    def loss(self, batch):
        loss, metrics, _ = self._loss(batch)  # the tuner's term reaches the objectives through the tuner
        return loss, metrics

    def __getattr__(self, name):
        return getattr(self._model, name)


class Trainer:
    """Optimiser updates of `model` on batches of `sampler` (anything with `sample()`,
    `state()` and `set_state()`), the loss being the sum of `objectives`. The schedule
    spans `total_steps`; :meth:`fit` runs updates up to a step and can be called again."""

    def __init__(self, model: torch.nn.Module, sampler, objectives: list[Objective], optim: OptimSettings,
                 total_steps: int, device: torch.device, precision: str = "fp32", log: MetricsLog | None = None,
                 log_every: int = 100, row_extra: dict | None = None, desc: str = "train", progress: bool = True,
                 tokens_per_batch: int | None = None, dist: Dist | None = None, compile: bool = False):
        if total_steps <= 0:
            raise ValueError(f"steps must be positive, got {total_steps}")
        self.model, self.sampler, self.objectives, self.optim = model, sampler, objectives, optim
        self.total, self.device, self.precision = total_steps, device, precision
        self.log, self.log_every, self.row_extra = log, log_every, row_extra or {}
        self.desc, self.progress, self.tokens_per_batch = desc, progress, tokens_per_batch
        self.optimizer = make_optimizer(model, optim.lr, optim.weight_decay, betas=optim.betas, eps=optim.eps)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.step = 0
        self.saved_step: int | None = None
        """The update of the last checkpoint (None: unknown, `fit` takes the step it starts from; :meth:`load`
        sets it): what a non-finite loss's message names, also when `fit` is called again."""
        self.train_s = 0.0
        """Seconds spent in :meth:`fit` by the calls that ended (updates, logging, checkpoints; not what a
        recipe does between calls, such as evaluations), over every invocation of a resumed run: :meth:`save`
        records it and :meth:`load` restores it (0 from a state saved without it). :attr:`elapsed` adds the
        running call's."""
        self._fit_t0: float | None = None
        self.dist, self.view = dist, model
        loss_fn = _LossModule(model)
        if dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            torch.manual_seed(torch.initial_seed() + dist.rank)  # every rank its own dropout masks
            loss_fn = DistributedDataParallel(loss_fn, device_ids=[device] if device.type == "cuda" else None,
                                              find_unused_parameters=getattr(model, "tuner", None) is not None)
        if compile:
            loss_fn = torch.compile(loss_fn)
        if dist is not None or compile:
            self.view = _LossView(model, loss_fn)

    @property
    def elapsed(self) -> float:
        """Training seconds of the run so far: :attr:`train_s` plus the running :meth:`fit` call's. It is
        the metrics' ``elapsed_s`` and what checkpoints record."""
        return self.train_s + (time.perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    @property
    def main(self) -> bool:
        """Whether this process writes files (rank 0, or the only process)."""
        return self.dist is None or self.dist.main

    def _batch(self) -> dict[str, torch.Tensor]:
        full = self.sampler.sample()
        if self.dist is None:
            return to_torch(full, self.device)
        n, w, r = len(full["valid"]), self.dist.world, self.dist.rank
        if n % w:
            raise ValueError(f"batch size {n} is not divisible by the {w} processes")
        denominator = self.model.loss_weight(to_torch(full, torch.device("cpu"))).sum().clamp_min(1.0) / w
        batch = to_torch({k: v[r * n // w: (r + 1) * n // w] for k, v in full.items()}, self.device)
        batch["loss_denominator"] = denominator.to(self.device)
        return batch

    def train_step(self) -> dict[str, float]:
        """One optimiser update; returns its metrics (averaged over the processes)."""
        metrics, lr = self._update()
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.dist is not None:
            metrics = self.dist.mean(metrics)
        return {**metrics, "lr": lr}

    def _update(self) -> tuple[dict[str, torch.Tensor], float]:
        """One optimiser update: its metrics as detached tensors, still on the device (reading
        them would wait for the GPU), and the learning rate."""
        lr = cosine_lr(self.step, self.total, self.optim.lr, self.optim.warmup_steps, self.optim.min_lr)
        set_lr(self.optimizer, lr)
        batch = self._batch()
        loss, metrics = None, {}
        for obj in self.objectives:
            if obj.autocast:
                with autocast(self.device, self.precision):
                    term, m = obj(self.view, batch)
            else:
                term, m = obj(self.view, batch)
            metrics.update(m)
            if term is not None:
                loss = term if loss is None else loss + term
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {**metrics, "grad_norm": gnorm.detach()}, lr

    def fit(self, stop: int, checkpoint: Callable[[int], None] | None = None, ckpt_every: int | None = None) -> None:
        """Updates until step `stop`. `checkpoint(step)` runs every `ckpt_every` steps and
        when interrupted (then :class:`Interrupted` is raised)."""
        from tqdm import tqdm

        self.model.train()
        # Metrics are summed on the device and read once per logged row: reading them every
        # update would make the host wait for the GPU, which then idles while the next batch
        # is sampled.
        acc: dict[str, torch.Tensor] = {}
        n_acc, t_log = 0, time.perf_counter()
        self._fit_t0 = t_log
        last_saved = self.saved_step if self.saved_step is not None else self.step  # fit may be called again
        checked = self.step

        def check_finite():  # before a row is logged or anything saved: the updates since the last check
            nonlocal checked
            if any(k in acc and not torch.isfinite(acc[k]).item() for k in ("loss", "grad_norm")):
                raise NonFiniteLoss(checked, self.step, last_saved if last_saved > 0 else None)
            checked = self.step

        bar = tqdm(total=stop, initial=self.step, desc=self.desc, disable=not self.progress, unit="step")
        try:
            with InterruptFlag() as flag:
                while self.step < stop:
                    m, lr = self._update()
                    for k, v in m.items():
                        v = torch.as_tensor(v.detach() if torch.is_tensor(v) else v, dtype=torch.float64)
                        acc[k] = acc[k] + v if k in acc else v
                    n_acc += 1
                    bar.update(1)
                    if self.step % self.log_every == 0 or self.step == stop:
                        check_finite()
                        means = {k: float(v) / n_acc for k, v in acc.items()}
                        if self.dist is not None:
                            means = self.dist.mean(means)
                        now = time.perf_counter()
                        row = {**self.row_extra, "step": self.step, **means, "lr": lr,
                               "steps_per_s": n_acc / max(now - t_log, 1e-9), "elapsed_s": self.elapsed}
                        if self.tokens_per_batch:
                            row["tokens_per_s"] = row["steps_per_s"] * self.tokens_per_batch
                        if self.log is not None:
                            self.log.write(row)
                        bar.set_postfix(loss=f"{row['loss']:.3f}")
                        acc, n_acc, t_log = {}, 0, now
                    if checkpoint is not None and ckpt_every and self.step % ckpt_every == 0:
                        check_finite()
                        checkpoint(self.step)
                        last_saved = self.saved_step = self.step
                    if flag.hit if self.dist is None else self.dist.any(flag.hit):
                        saved = False
                        if checkpoint is not None and self.step > 0:
                            if self.step != last_saved:
                                check_finite()
                                checkpoint(self.step)
                                self.saved_step = self.step
                            saved = True
                        raise Interrupted(self.step, saved)
        finally:
            self.train_s, self._fit_t0 = self.elapsed, None
            bar.close()
            self.model.eval()

    # -- state ------------------------------------------------------------------------------
    def save(self, run_dir: str | Path, extra: dict | None = None, model_tensors: dict | None = None) -> None:
        """Write the training state (rank 0; every rank must call it: it gathers their RNG states), with
        :attr:`elapsed` as ``train_s``."""
        rng = rng_states(self.device)
        if self.dist is not None:
            per_rank = self.dist.gather(rng)
            rng = {f"{k}.rank{r}" if r else k: v for r, states in enumerate(per_rank) for k, v in states.items()}
        if self.main:
            save_state(run_dir, self.step, self.optimizer, self.sampler, self.objectives,
                       {"train_s": self.elapsed, **(extra or {})}, model_tensors, rng)
        if self.dist is not None:
            self.dist.barrier()

    def load(self, run_dir: str | Path, weights_file: str | None = None) -> tuple[dict, dict]:
        """Restore optimiser, RNGs, objectives and step; returns the state's JSON and its model tensors."""
        meta, model_tensors = load_state(run_dir, self.optimizer, self.sampler, self.objectives, weights_file,
                                         rank=0 if self.dist is None else self.dist.rank, device=self.device,
                                         world=1 if self.dist is None else self.dist.world)
        self.step = self.saved_step = int(meta["step"])
        self.train_s = float(meta.get("train_s", 0.0))
        return meta, model_tensors


def pack_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as tensors (`opt.<param id>.<name>`) and JSON (groups, scalars)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val
            else:
                scalars[f"{pid}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "opt_scalars": scalars}


def unpack_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for key, val in meta["opt_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_states(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The torch RNG state (and the CUDA one of ``device``), for saving."""
    out = {"torch_rng": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state(device)
    return out


def save_state(run_dir: str | Path, step: int, optimizer=None, sampler=None, objectives=(), extra: dict | None = None,
               model_tensors: dict | None = None, rng: dict[str, torch.Tensor] | None = None) -> None:
    """`train_state.safetensors` (optimiser moments, torch RNG, objective and model tensors) and
    `train_state.json` (step, optimiser hyperparameters, sampler RNG, `extra`), the JSON last:
    both carry the step, so a half-written state is detected, not loaded."""
    run_dir = Path(run_dir)
    tensors, meta = pack_optimizer(optimizer) if optimizer is not None else ({}, {"param_groups": None, "opt_scalars": {}})
    tensors.update(rng if rng is not None else rng_states())
    for obj in objectives:
        tensors.update({f"obj.{obj.name}.{k}": v for k, v in obj.tensors().items()})
    tensors.update({f"model.{k}": v for k, v in (model_tensors or {}).items()})
    atomic_save_tensors(tensors, run_dir / STATE_T, {"step": str(step)})
    atomic_write_json(run_dir / STATE_J, {"step": step, **meta, "sampler_rng": sampler.state() if sampler else None,
                                          **(extra or {})})


def read_state_meta(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / STATE_J
    return json.loads(path.read_text()) if path.exists() else None


def load_state(run_dir: str | Path, optimizer=None, sampler=None, objectives=(), weights_file: str | None = None,
               rank: int = 0, device: torch.device | None = None, world: int = 1) -> tuple[dict, dict]:
    """Restore what :func:`save_state` wrote (``rank``'s RNG states); checks that every file holds
    the same step. Resuming with another number of processes (`world`) than saved the state works
    but is not exact (the ranks' random streams differ): a warning says so."""
    run_dir = Path(run_dir)
    try:
        meta = json.loads((run_dir / STATE_J).read_text())
        tensors = load_file(str(run_dir / STATE_T))
        with safe_open(str(run_dir / STATE_T), "pt") as f:
            steps = {"optimiser": int(f.metadata()["step"])}
        if weights_file is not None:
            with safe_open(str(run_dir / weights_file), "pt") as f:
                steps["weights"] = int(f.metadata()["step"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise StateError(f"cannot resume from {run_dir}: training state missing or unreadable ({e})") from e
    if any(s != meta["step"] for s in steps.values()):
        raise StateError(f"checkpoint in {run_dir} is inconsistent ({', '.join(f'{k} at step {v}' for k, v in steps.items())}, "
                         f"state file at {meta['step']}): it was interrupted while saving; start the run again")
    if optimizer is not None and meta.get("param_groups") is not None:
        unpack_optimizer(optimizer, tensors, meta)
    if sampler is not None and meta.get("sampler_rng") is not None:
        sampler.set_state(meta["sampler_rng"])
    saved_world = 1 + sum(k.startswith("torch_rng.rank") for k in tensors)
    if saved_world != world and rank == 0:
        warnings.warn(f"{run_dir} was saved by {saved_world} process(es) and resumes in {world}: the run continues, "
                      f"but not exactly as it would have (each process's random numbers); resume it with "
                      f"{saved_world} process(es) for an exact continuation", stacklevel=2)
    suffix = f".rank{rank}" if rank else ""
    torch.set_rng_state(tensors.get(f"torch_rng{suffix}", tensors["torch_rng"]))
    if device is not None and device.type == "cuda" and f"cuda_rng{suffix}" in tensors:
        torch.cuda.set_rng_state(tensors[f"cuda_rng{suffix}"], device)
    for obj in objectives:
        prefix = f"obj.{obj.name}."
        obj.load_tensors({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    return meta, {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
