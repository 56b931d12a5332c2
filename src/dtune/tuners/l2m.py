"""L2M, Learning to Modulate (Schmied et al. 2023): a pool of modulators (LoRA or (IA)3 weight
sets for every targeted layer) with one key each. Per sample, the query (mean of the frozen
state embeddings over the context) picks the entry with the most similar key (hard top-1), and
that entry modulates every layer. Loss: the task loss plus the key-pull loss.

Variants:
* `modulation="ia3"`: the pool holds (IA)3 vectors instead of LoRA matrices.
* `oracle`: the entry is chosen by task id (the n-th task trained gets entry n); tasks the
  pool never trained (the pre-training tasks) get no modulation.
* `pretrain_keys`: extra keys, one per pre-training task, fitted on pre-training data
  (:meth:`L2M.fit_pretrain_keys`), that select *no modulation*. While training they never
  compete; at inference an input closest to one of them runs the unmodulated model.
* `task_gaussians` (beyond the paper): no keys; each task trains its own entry, and at inference
  the entry is that of the task under whose Gaussian of queries the input is most likely, or none
  when no task accepts it (:meth:`L2M.infer_task`). With `pretrain_gaussians` the pre-training
  tasks have Gaussians too, and an input most likely under one of them runs the unmodulated model.
* `entry_modules` (beyond the paper): every entry also holds its own copy of modules outside the
  transformer (the token embeddings, their LayerNorm, the action head), as a zero-initialised
  difference to the base weights. The query still comes from the unmodulated state embedding: the
  model routes before it embeds (:meth:`dtune.models.dt._SequenceDT.query_states`).

Entry `-1` in :meth:`selection` means "no modulation". Routing (the same while training and
at evaluation, fp32 queries) is described in :mod:`dtune.tuners.pool`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dtune.models.backbone import Dropout
from dtune.tuners.base import (TunerConfig, default_feedforward_modules, match, module_key, register, saved_modules,
                               target_modules)
from dtune.tuners.pool import KeyPool, PoolTuner, vote

MODULATIONS = ("lora", "ia3")


@dataclass
class L2MConfig(TunerConfig):
    """A pool of LoRA (or (IA)3) modulators chosen per sample by key-query matching."""

    pool_size: int = 30
    """Modulators (and keys) in the pool."""
    modulation: str = "lora"
    """What a pool entry holds: `lora` or `ia3`."""
    r: int = 8
    """LoRA rank of every entry."""
    lora_alpha: float = 16.0
    """LoRA scale alpha (update multiplied by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the input of the LoRA update."""
    target_modules: list[str] | None = None
    """Layers every entry modulates. None: the backbone family's default for the modulation, as for
    the lora and ia3 methods (gpt: q, v, fc, proj for lora; k, v, proj for ia3)."""
    feedforward_modules: list[str] | None = None
    """(IA)3 only: targeted layers rescaled at their input. None: the backbone family's default
    (gpt: proj)."""
    key_loss: float = 0.5
    """Weight of the key-pull loss (the paper's 0.5)."""
    key_lr_scale: float = 10.0
    """Learning rate of the keys relative to the rest (our choice: at CPU step budgets the keys
    would otherwise barely turn towards their queries)."""
    count_penalty: float = 1.0
    """Penalty on keys chosen during earlier tasks (continual learning)."""
    lock_share: float | None = None
    """After each task, lock the entries that took at least this share of its training windows
    (e.g. 0.1): later tasks never choose them while training, so their keys and modulators stay
    as that task left them; at evaluation every entry competes. At most `pool_size - 1` entries
    are ever locked. Unset (the paper): every entry stays open, and a later task can pull an
    earlier task's key away and retrain its modulator, which `results/l2m_cw10` saw with the
    count penalty alone (faucet-close went from 1.0 to 0.0 success once shelf-place, which also
    routes to faucet-close's entry 5, was learnt)."""
    batchwise: bool = False
    """Route groups of windows by majority vote (L2P's batch-wise selection) instead of every
    window on its own: while training the group is the batch (one task's windows, so a task
    trains one entry), at evaluation the windows of one task, so evaluation then uses the task
    names (not task-agnostic). Default off, the same in training and evaluation: every window
    chooses its own entry, as the L2M reference code does in both (dtune 0.1 voted while training
    only and chose per window at evaluation)."""
    oracle: bool = False
    """Choose the entry by task id instead of by key matching."""
    pretrain_keys: bool = False
    """Fit one extra key per pre-training task that selects no modulation."""
    pretrain_margin: float = 0.0
    """With `pretrain_keys`: an input takes the "no modulation" route only when its best
    pre-training key beats its best pool key by more than this cosine margin (the paper: 0)."""
    calibrate_margin: float | None = None
    """With `pretrain_keys`: after the first task, set the margin (replacing `pretrain_margin`) so
    that this fraction of the task's own training windows (e.g. 0.95) keeps its pool entry
    instead of falling to "no modulation" (a negative margin sends more pre-training inputs there);
    after later tasks it only grows, so earlier tasks keep theirs. Unset: the margin stays fixed. On the MT40 checkpoint (whitened, 200-step query) 0.95 keeps 91% of CW10 windows on
    their own entry and still sends 90% of MT40 windows to no modulation (`results/l2m_routing`)."""
    query_whitening: bool = False
    """Route in the whitened query space of the pre-training data: the query minus the mean of
    the pre-training windows' queries, times the inverse square root of their covariance (fit
    once before the first task, from the checkpoint's own data, like `pretrain_keys`). Off (the
    paper): the raw mean state embedding. On the small MT40 checkpoint it raises nearest-key
    routing among the CW10 tasks from 84% to 91% of windows (`results/l2m_routing`)."""
    task_gaussians: bool = False
    """Task inference by query densities instead of keys (beyond the paper). Each new task gets a fresh
    entry that all of its training windows use (the task is known while training, so entries never
    mix tasks), and a Gaussian of its queries (mean and full covariance plus a ridge, fitted from windows of
    its data when it ends, `dtune.recipes.tuning.calibrate_routing`, on windows as long as the
    evaluation query: `query_span` timesteps if set, else the context). At evaluation a window takes
    the entry of the task whose Gaussian gives its query the highest likelihood, among the tasks that
    accept it (likelihood above the `density_reject` quantile of the task's own windows); a window
    no task accepts (a pre-training input) runs the unmodulated model. Keys, the key loss and the
    count penalty are not used. On the small MT40 checkpoint (`results/l2m_cw10/density_probe.py`),
    with K-step queries it sends 94% of CW10 windows to their own task (nearest ideal key: 86%) and
    92% of MT40 windows to no modulation, push being the exception (half its windows go to push-wall);
    with `query_span` 200 (the preset `l2m-gauss`) 97% (nearest ideal key: 93%), 96.5% and push 79%."""
    density_reject: float | None = 0.01
    """With `task_gaussians`: the quantile of a task's own windows' log-likelihood below which the
    task rejects a query (0.01: 1% of its own windows would be rejected). None: never reject (every
    window takes the most likely task's entry, pre-training inputs included)."""
    pretrain_gaussians: bool = False
    """With `task_gaussians`: also fit one Gaussian per pre-training task (before the first task, from
    the checkpoint's own data, on windows as long as the evaluation query), and route an input most
    likely under a pre-training task's Gaussian to no modulation: "no modulation" becomes a class that
    competes on likelihood, instead of the leftover of `density_reject`. The preset `l2m-gauss-pre` turns
    it on with `density_reject` None, so every window takes the most likely of all tasks, old and new. On
    the small MT40 checkpoint (`results/l2m_cw10/density_probe.py --span 200 --pretrain-gaussians`) 97.4%
    of CW10 windows go to their own task and 99.8% of MT40 windows to no modulation (`l2m-gauss`: 96.8%
    and 96.5%); handle-press is the pre-training task most often taken for a CW10 one (6%, for
    handle-press-side)."""
    query_span: int | None = None
    """At evaluation, the query is the mean state embedding of the last `query_span` timesteps of
    the episode instead of the context window's K (training windows keep K). Unset (the paper):
    the window. 200 (a whole Meta-World episode) raises nearest-key routing among the CW10
    tasks from 84% to 92% of steps (`results/l2m_routing`)."""
    entry_modules: list[str] | None = None
    """Modules outside the transformer of which every entry holds its own copy, trained with the entry
    (beyond the paper): names or name suffixes (peft's rule) of Linear, Embedding or LayerNorm modules,
    or of modules containing them (a Sequential head, an MLP embedding: all of their Linear layers),
    e.g. `["embed_state", "head"]`; `["io"]` means the model's input and output modules (every token
    embedding, the embedding LayerNorm and the action head; not the timestep and token-type tables).
    Each entry stores a difference to the base weights, zero at first, so the model is unchanged until
    it trains; an input routed to no entry (-1) runs the base modules. Routing still uses the
    unmodulated state embedding. Unset (the paper): entries modulate the transformer only. Why: on the
    small MT40 checkpoint, single-task shelf-place (1,000 updates) reaches 40% success with full
    fine-tuning, 5% with LoRA r 32 on every projection, and 40% once the embeddings, their LayerNorm and
    the head train too (`results/l2m_cw10`)."""


def _one_entry(idx: torch.Tensor) -> int:
    """The entry every sample of `idx (B,)` chose, when they all chose the same one (the usual case
    while training: one task's batch); -1 otherwise (or when that choice is "no modulation")."""
    first = int(idx[0]) if idx.shape[0] else -1
    return first if first >= 0 and bool((idx == first).all()) else -1


def _per_entry(x: torch.Tensor, idx: torch.Tensor, out_features: int, dtype: torch.dtype, fn) -> torch.Tensor:
    """`fn(x[idx == e], e)` in `dtype` for each entry `e` the samples chose (zeros where `idx` is
    -1, "no modulation"): one product per distinct entry, instead of a copy of the entry's weights per
    sample (evaluation batches mix the entries of many tasks, most samples on a few)."""
    out = x.new_zeros(*x.shape[:-1], out_features, dtype=dtype)
    for e in torch.unique(idx).tolist():
        if e >= 0:
            m = idx == e
            out[m] = fn(x[m], e).to(dtype)  # (autocast computes in bf16)
    return out


class PoolLora(nn.Module):
    def __init__(self, base: nn.Linear, size: int, r: int, alpha: float, dropout: float):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        a = torch.empty(size, r, base.in_features)
        for i in range(size):  # every entry initialised like one peft LoRA
            nn.init.kaiming_uniform_(a[i], a=math.sqrt(5))
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(size, base.out_features, r))
        self.scaling = alpha / r
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()  # dtune's: fast masks on CPUs

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        first = _one_entry(idx)
        if first >= 0:  # one entry for the whole batch (the usual case)
            return (self.dropout(x) @ self.lora_A[first].T.to(x.dtype)) @ self.lora_B[first].T.to(x.dtype) * self.scaling
        return _per_entry(self.dropout(x), idx, self.lora_B.shape[1], x.dtype,  # dropout over the whole batch, as before
                          lambda xs, e: (xs @ self.lora_A[e].T.to(x.dtype)) @ self.lora_B[e].T.to(x.dtype) * self.scaling)


class PoolDelta(nn.Module):
    """Per-entry differences to the weights of one Linear, Embedding or LayerNorm module (zeros: the
    base module). `forward(x, idx, dtype)`: what entry `idx[b]` adds to the module's output for
    sample `b` of its input `x`, in `dtype` (the output's); samples with `idx -1` get nothing."""

    def __init__(self, module: nn.Module, size: int):
        super().__init__()
        self.kind = type(module).__name__
        if isinstance(module, nn.Linear):
            self.weight = nn.Parameter(torch.zeros(size, module.out_features, module.in_features))
            self.bias = nn.Parameter(torch.zeros(size, module.out_features)) if module.bias is not None else None
        elif isinstance(module, nn.Embedding):
            self.weight = nn.Parameter(torch.zeros(size, module.num_embeddings, module.embedding_dim))
            self.bias = None
        elif isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1:
                raise ValueError("l2m entry_modules: only LayerNorms over the last dimension are supported")
            self.weight = nn.Parameter(torch.zeros(size, module.normalized_shape[0]))
            self.bias = nn.Parameter(torch.zeros(size, module.normalized_shape[0]))
            self.eps = module.eps
        else:
            raise TypeError(f"l2m entry_modules: cannot hold a {self.kind} per entry (Linear, Embedding, LayerNorm)")

    def forward(self, x: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        b = x.shape[0]
        if idx.shape[0] != b:
            raise RuntimeError(f"l2m: the entries were chosen for {idx.shape[0]} samples but the module runs "
                               f"{b}; route (model.tuner_inputs) before embedding")
        first = _one_entry(idx) if self.kind == "Linear" else -1
        if first >= 0:  # one entry for the whole batch (training)
            return F.linear(x.to(dtype), self.weight[first].to(dtype),
                            None if self.bias is None else self.bias[first].to(dtype))
        if self.kind == "Linear":  # a batch that mixes entries
            return _per_entry(x.to(dtype), idx, self.weight.shape[1], dtype,
                              lambda xs, e: F.linear(xs, self.weight[e].to(dtype),
                                                     None if self.bias is None else self.bias[e].to(dtype)))
        on = (idx >= 0).to(dtype).reshape(b, *[1] * (x.dim() - 1 + (self.kind == "Embedding")))
        sel = idx.clamp_min(0)
        if self.kind == "Embedding":
            rows = sel.reshape(b, *[1] * (x.dim() - 1)).expand_as(x)
            return self.weight[rows, x].to(dtype) * on
        shape = (b,) + (1,) * (x.dim() - 2) + (-1,)  # LayerNorm
        norm = F.layer_norm(x.to(dtype), x.shape[-1:], None, None, self.eps)
        return (norm * self.weight[sel].to(dtype).reshape(shape) + self.bias[sel].to(dtype).reshape(shape)) * on


class PoolIA3(nn.Module):
    def __init__(self, dim: int, size: int):
        super().__init__()
        self.ia3_l = nn.Parameter(torch.ones(size, dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        vec = self.ia3_l[idx.clamp_min(0)]
        return torch.where((idx >= 0)[:, None], vec, torch.ones_like(vec))[:, None]  # (B, 1, dim)


@register
class L2M(PoolTuner):
    name = "l2m"
    config_class = L2MConfig
    identity_at_init = True

    def resolve_config(self, model, config):
        if config.modulation not in MODULATIONS:
            raise ValueError(f"l2m: unknown modulation {config.modulation!r}; choose lora or ia3")
        if config.modulation == "ia3" and config.feedforward_modules is None:
            config = dataclasses.replace(config, feedforward_modules=default_feedforward_modules(model))
        if config.entry_modules is not None and "io" in config.entry_modules:
            io = getattr(model, "io_modules", None)
            if io is None:
                raise ValueError(f"l2m entry_modules ['io']: {type(model).__name__} does not declare its input and "
                                 "output modules (io_modules); name the modules instead")
            names = [n for e in config.entry_modules for n in (io if e == "io" else [e])]
            config = dataclasses.replace(config, entry_modules=list(dict.fromkeys(names)))
        return super().resolve_config(model, config)

    def _entry_targets(self, model) -> list[tuple[str, nn.Module]]:
        """The modules of `entry_modules`: Linear, Embedding and LayerNorm modules outside the
        transformer named by an entry, or inside a module named by one."""
        kinds = (nn.Linear, nn.Embedding, nn.LayerNorm)
        outside = {n: m for n, m in model.named_modules() if n and n.split(".")[0] not in ("transformer", "tuner")}
        found: dict[str, nn.Module] = {}
        for entry in self.config.entry_modules:
            hits = [n for n in outside if match(n, [entry])]
            bad = [h for h in hits if h.split(".")[0] in ("embed_timestep", "embed_type") or h.startswith("lm_")]
            if bad:
                raise ValueError(f"l2m entry_modules: {bad[0]} cannot be held per entry (timestep and token-type "
                                 "tables are read before routing, the language model's embedding and head belong to "
                                 "the language loss)")
            mods = {h + ("." + n if n else ""): m for h in hits for n, m in outside[h].named_modules()
                    if isinstance(m, kinds)}
            if not mods:
                valid = sorted(n for n, m in outside.items() if "." not in n and any(
                    isinstance(x, kinds) for x in m.modules()))
                raise ValueError(f"l2m entry_modules: {entry!r} names no Linear, Embedding or LayerNorm outside the "
                                 f"transformer; valid names: {', '.join(valid)}")
            found.update(mods)
        saved = set(saved_modules(model, self.config.modules_to_save))
        clash = sorted({n for n, m in found.items() for p, _ in m.named_parameters() if f"{n}.{p}" in saved})
        if clash:
            raise ValueError(f"l2m: {', '.join(clash)} would train both in place (modules_to_save) and per entry "
                             "(entry_modules); keep it in one of them")
        return list(found.items())

    def default_targets_key(self, config):
        return config.modulation  # the defaults of the lora or ia3 method

    def build(self, model):
        c = self.config
        if c.oracle and (c.pretrain_keys or c.query_whitening or c.query_span):
            raise ValueError("l2m: oracle routes by task id, so pretrain_keys, query_whitening and query_span have no "
                             "use with it; drop one of them")
        if (c.pretrain_margin or c.calibrate_margin is not None) and not c.pretrain_keys:
            raise ValueError("l2m: pretrain_margin and calibrate_margin shape the no-modulation route of "
                             "pretrain_keys; turn pretrain_keys on")
        if c.calibrate_margin is not None and not 0 < c.calibrate_margin < 1:
            raise ValueError(f"l2m: calibrate_margin is a fraction of windows in (0, 1), got {c.calibrate_margin}")
        if c.lock_share is not None and not 0 < c.lock_share <= 1:
            raise ValueError(f"l2m: lock_share is a share of a task's windows in (0, 1], got {c.lock_share}")
        if c.lock_share is not None and c.oracle:
            raise ValueError("l2m: oracle gives every task its own entry already; drop lock_share")
        if c.query_span is not None and c.query_span < 1:
            raise ValueError(f"l2m: query_span must be a positive number of timesteps, got {c.query_span}")
        if c.task_gaussians:
            clash = [n for n in ("oracle", "pretrain_keys", "batchwise", "lock_share", "calibrate_margin")
                     if getattr(c, n) not in (None, False)]
            if clash:
                raise ValueError(f"l2m: task_gaussians routes by its own task densities, so {', '.join(clash)} "
                                 "cannot go with it; drop them")
            if c.density_reject is not None and not 0 <= c.density_reject < 1:
                raise ValueError(f"l2m: density_reject is a quantile in [0, 1), got {c.density_reject}")
        elif c.pretrain_gaussians:
            raise ValueError("l2m: pretrain_gaussians adds the pre-training tasks to the densities of task_gaussians; "
                             "turn task_gaussians on")
        d = model.cfg.gpt.n_embd
        self.pool = KeyPool(c.pool_size, d)
        self.register_buffer("pre_keys", torch.zeros(0, d))
        self.register_buffer("margin", torch.tensor(float(c.pretrain_margin)))  # of the no-modulation route
        self.register_buffer("calibrated", torch.tensor(False))  # calibrate() has set the margin
        if c.task_gaussians:  # one row per task fitted so far, in slot order (fit_task_density)
            self.register_buffer("density_mean", torch.zeros(0, d, dtype=torch.float64))  # float64: see _gaussian
            self.register_buffer("density_precision", torch.zeros(0, d, d, dtype=torch.float64))
            self.register_buffer("density_logdet", torch.zeros(0, dtype=torch.float64))
            self.register_buffer("density_threshold", torch.zeros(0))
            self.register_buffer("density_ridge", torch.tensor(0.0))  # set by the first fit, then shared
            if c.pretrain_gaussians:  # one row per pre-training task (fit_pretrain_densities)
                self.register_buffer("pre_density_mean", torch.zeros(0, d, dtype=torch.float64))
                self.register_buffer("pre_density_precision", torch.zeros(0, d, d, dtype=torch.float64))
                self.register_buffer("pre_density_logdet", torch.zeros(0, dtype=torch.float64))
        if c.query_whitening:  # fit by fit_whitening before the first task; identity until then
            self.register_buffer("query_mean", torch.zeros(d))
            self.register_buffer("query_whiten", torch.eye(d))
        self.mods = nn.ModuleDict()
        for name, mod in target_modules(model, c.target_modules):
            key = module_key(name)
            if c.modulation == "lora":
                self.mods[key] = PoolLora(mod, c.pool_size, c.r, c.lora_alpha, c.lora_dropout)
                self.hook(mod, self._lora, key)
            elif match(name, c.feedforward_modules):
                self.mods[key] = PoolIA3(mod.in_features, c.pool_size)
                self.hook(mod, self._scale_input, key, pre=True)
            else:
                self.mods[key] = PoolIA3(mod.out_features, c.pool_size)
                self.hook(mod, self._scale_output, key)
        self.entries = nn.ModuleDict()
        for name, mod in self._entry_targets(model) if c.entry_modules else []:
            self.entries[module_key(name)] = PoolDelta(mod, c.pool_size)
            self.hook(mod, self._entry, module_key(name))
        self._entries_off = False
        self.watch_state_embedding(model)
        self._idx = None
        self._aux = None

    @property
    def modulates_embeddings(self) -> bool:
        return bool(self.config.entry_modules)

    @contextlib.contextmanager
    def unmodulated(self):
        """A context in which the entries' own modules (`entry_modules`) are off: the base modules
        run, e.g. for the state embeddings the routing query is made of."""
        old, self._entries_off = self._entries_off, True
        try:
            yield
        finally:
            self._entries_off = old

    def _query_embedding(self) -> bool:
        return not self.modulates_embeddings or self._entries_off

    # hooks: the entries chosen by the last context() call modulate every targeted layer
    def _lora(self, key, module, args, out):
        return out + self.mods[key](args[0], self._idx).to(out.dtype)

    def _entry(self, key, module, args, out):
        if self._entries_off or self._idx is None:
            return out
        return out + self.entries[key](args[0], self._idx, out.dtype)

    def _scale_input(self, key, module, args):
        return (args[0] * self.mods[key](self._idx).to(args[0].dtype),) + args[1:]

    def _scale_output(self, key, module, args, out):
        return out * self.mods[key](self._idx).to(out.dtype)

    def _oracle_index(self, tasks, n: int, device) -> torch.Tensor:
        if tasks is None:
            if self.current_task is None:
                raise ValueError("l2m oracle routes by task: pass the task of every sample (Policy(tasks=...))")
            slots = [self.task_slots[self.current_task]] * n
        else:
            slots = [self.task_slots.get(t, -1) for t in tasks]
        if max(slots, default=-1) >= self.config.pool_size:
            raise ValueError(f"l2m: {len(self.task_slots)} tasks trained but the pool has only "
                             f"{self.config.pool_size} entries, one per task; raise pool_size")
        return torch.tensor(slots, device=device)

    def context(self, state_emb, valid, tasks=None):
        c = self.config
        if self.training and self.current_task is None:
            raise RuntimeError("l2m: call begin_task(name) before training")
        self._aux = None
        if c.oracle or (c.task_gaussians and self.training):  # by task id (task_gaussians: the current task's entry)
            self._state_fp32 = None  # no query
            self._idx = self._oracle_index(tasks if c.oracle else None, state_emb.shape[0], state_emb.device)
            if c.task_gaussians:
                self.pool.count(self._idx[:, None])
            return {}
        q = self.query(state_emb, valid)
        if c.task_gaussians:
            self._idx = self.infer_task(q)
            return {}
        idx = self.pool.choose(q, 1, c.count_penalty)
        if not self.training and self.pre_keys.shape[0]:
            best = self.pool.scores(q).max(-1).values
            pre = self._pre_scores(q)
            idx = torch.where((pre > best + self.margin)[:, None], torch.full_like(idx, -1), idx)
        if c.batchwise:  # the windows of a group (batch, or task at evaluation) vote, "no modulation" too
            idx = vote(idx, 1, c.pool_size, self.groups(tasks, q.device))
        if self.training:
            self.pool.count(idx)
        self._aux = self.pool.pull_loss(q, idx, c.key_loss) if self.training else None
        self._idx = idx[:, 0]
        return {}

    def _pre_scores(self, q: torch.Tensor) -> torch.Tensor:
        """Best cosine of (transformed) queries with the pre-training keys."""
        with torch.autocast(q.device.type, enabled=False):
            return (F.normalize(q.float(), dim=-1) @ F.normalize(self.pre_keys.float(), dim=-1).T).max(-1).values

    def task_log_likelihood(self, q: torch.Tensor, pretrain: bool = False) -> torch.Tensor:
        """`task_gaussians`: log-density `(B, tasks)` of (transformed) queries under each fitted task's
        Gaussian (`pretrain`: each pre-training task's, `pretrain_gaussians`), up to the constant every
        task shares."""
        pre = "pre_" if pretrain else ""
        mean, precision, logdet = (getattr(self, pre + n) for n in ("density_mean", "density_precision", "density_logdet"))
        with torch.autocast(q.device.type, enabled=False):  # float64: queries far from a mean are large
            z = q.double()[:, None] - mean.double()  # (B, T, D)
            maha = torch.einsum("btd,tde,bte->bt", z, precision.double(), z)
            ll = -0.5 * (maha + logdet.double())
            return torch.nan_to_num(ll, nan=float("-inf"))  # float64: bf16 would round -800 to steps of 4

    def infer_task(self, q: torch.Tensor) -> torch.Tensor:
        """`task_gaussians`: the entry `(B,)` of the most likely task among those that accept the
        query, -1 (no modulation) where none does, or (`pretrain_gaussians`) where a pre-training
        task is more likely still. Before any task's density is fitted (during the first task), the
        entry of the task being trained, as while training."""
        n = self.density_mean.shape[0]
        if n == 0:
            slot = self.task_slots.get(self.current_task, -1) if self.current_task is not None else -1
            return torch.full((q.shape[0],), slot, dtype=torch.long, device=q.device)
        ll = self.task_log_likelihood(q)
        if self.config.density_reject is not None:
            ll = ll.masked_fill(ll < self.density_threshold, float("-inf"))
        best = ll.max(-1)
        none = torch.isinf(best.values)
        if self.config.pretrain_gaussians and self.pre_density_mean.shape[0]:
            none |= self.task_log_likelihood(q, pretrain=True).max(-1).values >= best.values
        return torch.where(none, torch.full_like(best.indices, -1), best.indices)

    @torch.no_grad()
    def fit_task_density(self, task: str, queries: torch.Tensor, shrink: float = 1e-2) -> dict:
        """`task_gaussians`: the Gaussian of `task`'s raw queries `(N, D)` (transformed here, e.g.
        whitened): their mean, their covariance plus a ridge on the diagonal (well-posed with fewer
        windows than dimensions), and the rejection threshold, the `density_reject` quantile of these
        queries' own log-likelihood. Rows are in slot order (the task's entry). The ridge is `shrink`
        times the mean variance of the *first* task's queries (with `pretrain_gaussians`, of the first
        pre-training task's), then the same for every task: the
        queries vary in few directions, so the ridge sets most eigenvalues and thus the log-determinant,
        and a ridge scaled per task biased the likelihoods (CW10 on the MT40 checkpoint: 89% of
        windows to their own task with per-task ridges, 95% with one). Returns facts for the records."""
        slot = self.task_slots[task]
        if slot > self.density_mean.shape[0]:
            raise ValueError(f"l2m: fit the densities of the tasks in their order; {task} has slot {slot} but "
                             f"{self.density_mean.shape[0]} are fitted")
        q = self.transform_query(queries.float())
        rows = {**self._gaussian(q, shrink), "density_threshold": torch.tensor(0.0)}
        for name, value in rows.items():
            old = getattr(self, name)
            value = value.to(old)
            setattr(self, name, torch.cat([old[:slot], value[None], old[slot + 1:]]))  # replaced, or appended
        own = self.task_log_likelihood(q)[:, slot]
        level = self.config.density_reject
        self.density_threshold[slot] = float(torch.quantile(own, level)) if level is not None else float("-inf")
        return {"task": task, "windows": len(q), "threshold": float(self.density_threshold[slot]),
                "ridge": float(self.density_ridge)}

    def _gaussian(self, q: torch.Tensor, shrink: float) -> dict:
        """Mean, precision and log-determinant of the covariance of transformed queries `(N, D)` plus
        the shared ridge, which the first fit (of a task, or of the pre-training tasks) sets."""
        if q.shape[0] < 2:
            raise ValueError(f"l2m: a task's Gaussian needs at least 2 query windows, got {q.shape[0]}; "
                             "give it more data")
        # float64, fitted and kept: a task's queries far outside the pre-training scale (variances of 10^8 in
        # a few directions, against a ridge of 10^-2) made float32's covariance indefinite (a NaN
        # log-determinant) and its precision matrix's rounding larger than its smallest eigenvalues
        q = q.double()
        mean = q.mean(0)
        cov = torch.cov((q - mean).T).reshape(q.shape[1], q.shape[1])
        if not float(self.density_ridge) > 0:
            self.density_ridge.fill_(shrink * float(cov.diagonal().mean().clamp_min(1e-12)))
        cov = cov + float(self.density_ridge) * torch.eye(q.shape[1], device=q.device, dtype=q.dtype)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError(f"l2m: a task's query covariance is not positive definite even with the ridge (query "
                             f"variances up to {float(cov.diagonal().max()):.3g}): its inputs are far outside the "
                             "pre-training data's scale")
        return {"density_mean": mean, "density_precision": torch.cholesky_inverse(chol),
                "density_logdet": 2 * chol.diagonal().log().sum()}

    @torch.no_grad()
    def fit_pretrain_densities(self, queries: list[torch.Tensor], shrink: float = 1e-2) -> dict:
        """`pretrain_gaussians`: one Gaussian per pre-training task from its raw queries `(N_i, D)`,
        before the first task; the first of them sets the ridge every later fit shares (as the first
        task's fit does without them). Returns facts for the records."""
        if self.density_mean.shape[0]:
            raise ValueError("l2m: fit the pre-training densities before the first task's")
        if not queries:
            raise ValueError("l2m: pretrain_gaussians found no pre-training queries (no windows of the "
                             "checkpoint's pre-training data)")
        fits = [self._gaussian(self.transform_query(q.float()), shrink) for q in queries]
        for name in ("density_mean", "density_precision", "density_logdet"):
            setattr(self, "pre_" + name, torch.stack([f[name] for f in fits]).to(getattr(self, "pre_" + name)))
        return {"pretrain_gaussians": len(fits), "windows": sum(len(q) for q in queries),
                "ridge": float(self.density_ridge)}

    @torch.no_grad()
    def calibrate(self, queries: torch.Tensor) -> float:
        """`calibrate_margin`: the margin at which that fraction of `queries` (raw queries of the
        task just trained) keeps a pool entry; after the first task it only grows, so every task
        calibrated so far keeps at least that fraction. Returns the margin."""
        q = self.transform_query(queries.float())
        gap = self._pre_scores(q) - self.pool.scores(q).max(-1).values
        need = float(torch.quantile(gap, self.config.calibrate_margin))
        self.margin.fill_(max(float(self.margin), need) if bool(self.calibrated) else need)
        self.calibrated.fill_(True)
        return float(self.margin)

    @property
    def query_span(self) -> int | None:
        """Timesteps of the episode the evaluation query spans (None: the context window)."""
        return self.config.query_span

    def transform_query(self, q: torch.Tensor) -> torch.Tensor:
        if self.config.query_whitening:
            return (q - self.query_mean) @ self.query_whiten
        return q

    @torch.no_grad()
    def fit_whitening(self, queries: torch.Tensor, eps: float = 1e-3) -> None:
        """The whitening of `query_whitening` from raw queries `(N, D)` of the pre-training data:
        their mean and the inverse square root of their covariance, shrunk towards the identity by
        `eps` times the mean variance (directions with next to no variance are not blown up)."""
        q = queries.float()
        mean = q.mean(0)
        cov = torch.cov((q - mean).T)
        cov = cov + eps * cov.diagonal().mean() * torch.eye(q.shape[1], device=q.device)
        e, v = torch.linalg.eigh(cov)
        self.query_mean.copy_(mean)
        self.query_whiten.copy_(v @ torch.diag(e.clamp_min(1e-12) ** -0.5) @ v.T)

    @torch.no_grad()
    def fit_pretrain_keys(self, queries: list[torch.Tensor]) -> None:
        """One key per pre-training task: the mean direction of that task's queries `(N_i, D)`
        (raw queries; whitened here when `query_whitening` is on), the minimiser of the key-pull
        loss for that task."""
        keys = torch.stack([F.normalize(F.normalize(self.transform_query(q.float()), dim=-1).mean(0), dim=0)
                            for q in queries])
        self.pre_keys = keys.to(self.pool.keys.device)

    def state_defaults(self):
        # before the calibrated margin existed: margin 0, never calibrated (the paper's route)
        return {**super().state_defaults(), "margin": torch.tensor(0.0), "calibrated": torch.tensor(False)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("pre_keys", "density_mean", "density_precision", "density_logdet", "density_threshold",
                     "pre_density_mean", "pre_density_precision", "pre_density_logdet"):
            key = prefix + name  # sized by the number of (pre-training) tasks, unknown until loaded
            if key in state_dict and hasattr(self, name):
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def params_per_task(self):
        entries = sum(p.numel() for p in [*self.mods.parameters(), *self.entries.parameters()]) // self.config.pool_size
        d = self.pool.keys.shape[1]
        if self.config.task_gaussians:  # a mean, a precision matrix, its log-determinant and a threshold
            return entries + d + d * d + 2
        return entries + (0 if self.config.oracle else d)

    def selection(self):
        return self._idx

    def pooled_parameters(self):
        return ("pool.", "mods.", "entries.")

    def aux_loss(self):
        return self._aux

    def end_task(self):
        self.pool.end_task(self.config.lock_share)
