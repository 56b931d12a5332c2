"""Key-query matching shared by L2P and L2M.

The query is the mean of the frozen state embeddings over the context (`query_from`). It is
compared with learnable keys (initialised U(-1, 1)) by cosine similarity; the best `top_k`
keys are chosen (hard). The key-pull loss `-weight * mean cos(query, chosen keys)` moves the
chosen keys towards the queries that chose them. While training, keys chosen on earlier tasks
are penalised, `score = cos - count_penalty * n_k / max_k n_k` with `n_k` the earlier
selections of key `k`, so a new task claims fresh keys instead of overwriting the modulators of
old ones. With a lock share (L2M's `lock_share`), the entries a task used become locked at its
end: later tasks never choose them while training, so an earlier task's keys and entries stay as
it left them; at evaluation every entry competes.

Routing is the same while training and at evaluation:

* by default every window (sample) chooses for itself, as in the L2M reference code;
* with `batchwise` (L2P's batch-wise selection) a group of windows uses the `top_k` entries its
  windows choose most often (:func:`vote`): a training batch (one task's windows), and at
  evaluation the windows of each task (the tuner is given the task names).

The query and its similarities are computed in fp32, also under a 16-bit autocast: a training
step (bf16) and an evaluation (fp32) route a window alike, near-ties included. The state
embeddings the query averages are recomputed in fp32 when the model ran them in 16 bits
(:meth:`PoolTuner.watch_state_embedding`).

Pool parameters (keys, and the entries they select) are exempt from weight decay
(:meth:`PoolTuner.pooled_parameters`): AdamW would otherwise shrink the entries of earlier tasks
at every step of a later one, although their gradient is zero.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dtune.tuners.base import Tuner, query_from


def _fp32(device: torch.device):
    """A context in which autocast is off (the ops run in the dtype of their inputs)."""
    return torch.autocast(device.type, enabled=False)


def vote(idx: torch.Tensor, top_k: int, size: int, groups: torch.Tensor | None = None) -> torch.Tensor:
    """`idx (B, k)` (entries per window; -1 = "no modulation" votes like an entry) -> `(B, top_k)`:
    every window gets the `top_k` entries the windows of its group chose most often (ties: the
    lower entry). `groups (B,)`: group ids 0..G-1 (None: one group, the whole batch)."""
    b = idx.shape[0]
    g = torch.zeros(b, dtype=torch.long, device=idx.device) if groups is None else groups.to(idx.device)
    n_groups = int(g.max()) + 1 if b else 1
    votes = torch.zeros(n_groups, size + 1, dtype=torch.long, device=idx.device)
    votes.index_put_((g[:, None].expand_as(idx), idx + 1), torch.ones_like(idx), accumulate=True)
    rank = votes * (size + 2) + torch.arange(size + 1, 0, -1, device=idx.device)  # unique: ties by entry
    return (rank.topk(top_k, dim=1).indices - 1)[g]


class KeyPool(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"pool_size must be positive, got {size}")
        self.keys = nn.Parameter(torch.empty(size, dim).uniform_(-1.0, 1.0))
        self.register_buffer("counts", torch.zeros(size))  # selections while training the current task
        self.register_buffer("prev_counts", torch.zeros(size))  # selections while training earlier tasks
        self.register_buffer("locked", torch.zeros(size, dtype=torch.bool))  # closed to later tasks' training

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    def scores(self, query: torch.Tensor, count_penalty: float = 0.0) -> torch.Tensor:
        """Cosine similarity `(B, pool)` of the queries with the keys (fp32), minus the
        selection-count penalty."""
        with _fp32(query.device):
            sim = F.normalize(query.float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T
            if count_penalty and self.prev_counts.sum() > 0:
                sim = sim - count_penalty * self.prev_counts / self.prev_counts.max()
        return sim

    def choose(self, query: torch.Tensor, top_k: int, count_penalty: float) -> torch.Tensor:
        """Every window's own `top_k` entries `(B, top_k)` (the count penalty and the locks only
        while training)."""
        if top_k > self.size:
            raise ValueError(f"top_k ({top_k}) is larger than the pool ({self.size})")
        if not self.training:
            return self.scores(query).topk(top_k, dim=-1).indices
        s = self.scores(query, count_penalty)
        if bool(self.locked.any()):
            free = int((~self.locked).sum())
            if free < top_k:
                raise ValueError(f"the pool has {free} unlocked entries left, fewer than top_k ({top_k}): earlier "
                                 f"tasks locked the rest; raise pool_size or lock_share")
            s = s.masked_fill(self.locked, float("-inf"))
        return s.topk(top_k, dim=-1).indices

    def count(self, idx: torch.Tensor) -> None:
        """Count the selections `idx` of a training step (entries >= 0)."""
        chosen = idx[idx >= 0]
        counts = torch.bincount(chosen.flatten(), minlength=self.counts.numel()).to(self.counts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # each rank routes its share of the batch: count the whole global batch on every rank (only
            # training forwards count, and every rank runs them together)
            torch.distributed.all_reduce(counts)
        self.counts += counts

    def select(self, query: torch.Tensor, top_k: int, count_penalty: float, batchwise: bool = False,
               groups: torch.Tensor | None = None) -> torch.Tensor:
        """Indices `(B, top_k)` of the chosen keys (per window, or voted per group with
        `batchwise`); counts them while training."""
        idx = self.choose(query, top_k, count_penalty)
        if batchwise:
            idx = vote(idx, top_k, self.size, groups)
        if self.training:
            self.count(idx)
        return idx

    def pull_loss(self, query: torch.Tensor, idx: torch.Tensor, weight: float) -> torch.Tensor:
        with _fp32(query.device):
            chosen = F.normalize(self.keys.float()[idx], dim=-1)  # (B, k, D)
            cos = (chosen * F.normalize(query.float(), dim=-1)[:, None]).sum(-1)
            return -weight * cos.mean()

    def end_task(self, lock_share: float | None = None, keep_free: int = 1):
        """The current task's selections join the earlier ones. With `lock_share`, the entries
        that took at least that share of them are locked, most used first, as long as `keep_free`
        entries stay unlocked (a full pool then lets later tasks share those, as without locks)."""
        if lock_share is not None and self.counts.sum() > 0:
            share = self.counts / self.counts.sum()
            room = int((~self.locked).sum()) - keep_free
            for i in share.argsort(descending=True).tolist()[:max(room, 0)]:
                if share[i] < lock_share:
                    break
                self.locked[i] = True
        self.prev_counts += self.counts
        self.counts.zero_()


class PoolTuner(Tuner):
    """What L2P and L2M share: the fp32 query, the groups of batch-wise routing, the pool's
    exemption from weight decay."""

    routes = True

    def watch_state_embedding(self, model: nn.Module) -> None:
        """Hook `model.embed_state` (any module): when it runs in 16 bits under autocast with fp32
        weights, keep an fp32 recompute of its output (autocast off) for the query of the same
        forward."""
        self._state_fp32 = None
        self._recomputing = False
        self.hook(model.embed_state, self._keep_fp32_states)

    def _keep_fp32_states(self, module, args, out):
        if self._recomputing or not self._query_embedding():
            return
        self._state_fp32 = None
        if out.dtype == torch.float32 or any(p.dtype != torch.float32 for p in module.parameters()):
            return
        self._recomputing = True
        try:
            with _fp32(out.device), torch.no_grad():
                self._state_fp32 = module(args[0].float())
        finally:
            self._recomputing = False

    def _query_embedding(self) -> bool:
        """Whether the state embedding now running is the unmodulated one queries are made of (L2M's
        `entry_modules` also run it modulated, which the query must not see)."""
        return True

    def query(self, state_emb: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """The fp32 query of the state embeddings `state_emb (B, K, D)` (their fp32 recompute
        when the model computed them in 16 bits)."""
        kept, self._state_fp32 = getattr(self, "_state_fp32", None), None
        if kept is not None and kept.shape == state_emb.shape and state_emb.dtype != torch.float32:
            state_emb = kept
        with _fp32(state_emb.device):
            return self.transform_query(query_from(state_emb, valid))

    def transform_query(self, q: torch.Tensor) -> torch.Tensor:
        """A method's own map of the raw query (L2M's whitening); the identity by default."""
        return q

    @property
    def query_span(self) -> int | None:
        """Timesteps of the episode the evaluation query spans (None: the context window)."""
        return None

    @staticmethod
    def groups(tasks, device) -> torch.Tensor | None:
        """Group ids of batch-wise routing: one group per task name (None: the batch is one group)."""
        if tasks is None:
            return None
        ids = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
        return torch.tensor([ids[t] for t in tasks], dtype=torch.long, device=device)

    def pooled_parameters(self) -> tuple[str, ...]:
        return ("pool.",)

    def state_defaults(self):
        return {"pool.locked": torch.zeros(self.pool.size, dtype=torch.bool)}  # before pools had locks
