"""Decision Transformers on the GPT backbone.

* :class:`MultiDomainDT` (MDDT, L2M paper): per timestep the tokens `[s, R, a^1 .. a^A, r]`;
  every action dimension is one of `n_bins` tokens, predicted autoregressively (the R token
  predicts a^1, a^i predicts a^(i+1)); cross-entropy on real action dimensions only.
* :class:`DecisionTransformer` (classic DT): tokens `[R, s, a]`; the s token predicts the
  continuous action through a tanh head; MSE.

Both embed a timestep (table lookup) and a token type into every token and share the
incremental inference of :class:`Policy`.

An adaptation method (`dtune.tuners`) attaches itself as `model.tuner`; before every run of
the transformer the model asks it for the run's extra inputs (prompt tokens, per-layer prefixes)
and lets it pick per-sample modulators from the state embeddings (L2P, L2M).

Training batches are dicts of tensors: `states (B, K, S)`, `actions (B, K, A)` in [-1, 1],
`action_mask (B, A)`, `rtg (B, K)` and `rewards (B, K)` (scaled), `timesteps (B, K)`,
`valid (B, K)` (False at left padding).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dtune.models import ModelConfig
from dtune.models.backbone import GPT, KVCache
from dtune.models.tokenizer import ActionTokenizer


class MLPEmbedding(nn.Module):
    """LaMo's embedding: `fc2(gelu(h)) + h` with `h = fc1(x)`."""

    def __init__(self, n_in: int, d: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(n_in, d), nn.GELU(), nn.Linear(d, d)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(self.act(h)) + h


def embedding(cfg: ModelConfig, n_in: int) -> nn.Module:
    """A Linear, or :class:`MLPEmbedding` with `cfg.embedding == "mlp"`."""
    return MLPEmbedding(n_in, cfg.gpt.n_embd) if cfg.embedding == "mlp" else nn.Linear(n_in, cfg.gpt.n_embd)


class _SequenceDT(nn.Module):
    tokens_per_step: int

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.gpt.n_embd
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_state = embedding(cfg, cfg.state_dim)
        self.embed_return = embedding(cfg, 1)
        self.embed_type = nn.Embedding(self.tokens_per_step, d) if cfg.type_embedding else None
        self.embed_ln = nn.LayerNorm(d)
        self.transformer = GPT(cfg.gpt)
        # z-score statistics of the states the model was trained on (set by the trainer, saved
        # with the weights); batches and Policy.act take states already normalised with them.
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.tuner = None  # set by dtune.tuners.attach

    # -- helpers shared by training and inference --------------------------------------------
    def _finish(self, tok: torch.Tensor, timesteps: torch.Tensor, types: torch.Tensor | slice) -> torch.Tensor:
        """Add timestep and type embeddings and normalise: `tok (..., n, D)`, `timesteps (...)`."""
        return self._combine(tok, self.embed_timestep(timesteps)[..., None, :], types)

    def _combine(self, tok: torch.Tensor, t_emb: torch.Tensor, types) -> torch.Tensor:
        """A token's input: its embedding plus timestep (and type) embeddings, normalised after
        (classic DT) or before the timestep is added (`ln_before_timestep`, LaMo)."""
        if self.embed_type is not None:
            tok = tok + self.embed_type.weight[types]
        if self.cfg.ln_before_timestep:
            return self.embed_ln(tok) + t_emb
        return self.embed_ln(tok + t_emb)

    def _check_timesteps(self, timesteps: torch.Tensor):
        if int(timesteps.max()) >= self.cfg.max_timestep:
            raise ValueError(
                f"timestep {int(timesteps.max())} is beyond the model's table ({self.cfg.max_timestep}); "
                "evaluate with a shorter horizon or build the model with a larger max_timestep"
            )

    def query_states(self, states: torch.Tensor) -> torch.Tensor:
        """The state embeddings routing queries are made of: `embed_state` of the base model, also
        when the attached tuner's entries hold their own (L2M's `entry_modules`)."""
        if self.tuner is None or not self.tuner.modulates_embeddings:
            return self.embed_state(states)
        with self.tuner.unmodulated():
            return self.embed_state(states)

    def route_first(self, batch: dict) -> dict | None:
        """With a tuner whose entries modulate the embeddings, route before embedding (its extra
        inputs; the entries the embeddings then use); None otherwise (routing happens in
        :meth:`backbone`, from the embedded states)."""
        if self.tuner is None or not self.tuner.modulates_embeddings:
            return None
        return self.tuner_inputs(self.query_states(batch["states"]), batch["valid"])

    def tuner_inputs(self, state_emb: torch.Tensor, valid: torch.Tensor | None, tasks=None) -> dict:
        """Extra transformer inputs of the attached tuner (`{}` without one). `state_emb
        (B, K, D)` = outputs of `embed_state` over the context, `valid (B, K)`, `tasks` =
        task names per sample (inference) or None (training: the tuner's current task)."""
        return {} if self.tuner is None else self.tuner.context(state_emb, valid, tasks)

    def backbone(self, tokens: torch.Tensor, valid: torch.Tensor, state_emb: torch.Tensor | None = None,
                 all_valid: bool | None = None, routed: dict | None = None, outputs: range | None = None,
                 **kw) -> torch.Tensor:
        """`tokens (B, K, n, D)` -> hidden `(B, K, n, D)`, or `(B, K, len(outputs), D)` for the
        tokens `outputs` of every timestep only (the final block then computes no others). `all_valid`:
        whether `valid` is all True, when the caller knows it (unset: read from `valid`, a GPU
        synchronisation). `routed`: the tuner's inputs when it routed before embedding
        (:meth:`route_first`)."""
        b, k, n, d = tokens.shape
        if self.tuner is not None:
            kw = {**(self.tuner_inputs(state_emb, valid) if routed is None else routed), **kw}
        if all_valid is None:
            all_valid = bool(valid.all())
        v = None if all_valid else valid.repeat_interleave(n, dim=1)
        if outputs is not None:
            kw["rows"] = (torch.arange(k)[:, None] * n + torch.tensor(outputs)[None]).flatten()
        h = self.transformer(tokens.reshape(b, k * n, d), valid=v, **kw)
        return h.reshape(b, k, -1, d)

    @staticmethod
    def loss_weight(batch: dict) -> torch.Tensor:
        """Which predictions count in the loss: real timesteps x real action dimensions ``(B, K, A)``."""
        return (batch["valid"][:, :, None] & batch["action_mask"][:, None, :]).float()

    @staticmethod
    def loss_denominator(batch: dict, weight: torch.Tensor) -> torch.Tensor:
        """The loss is a weighted sum over this denominator: the batch's own weight, or the one
        the trainer gives when the batch is one rank's share of a larger batch (distributed)."""
        given = batch.get("loss_denominator")
        return weight.sum().clamp_min(1.0) if given is None else given

    def policy(self, act_dims, use_cache: bool = True, tasks: list[str] | None = None) -> "Policy":
        return Policy(self, act_dims, use_cache, tasks)


class MultiDomainDT(_SequenceDT):
    io_modules = ("embed_state", "embed_return", "embed_action", "embed_reward", "embed_ln", "head")
    """The token embeddings, their LayerNorm and the action head (L2M's `entry_modules=["io"]`)."""

    def __init__(self, cfg: ModelConfig):
        self.tokens_per_step = cfg.act_dim + 3
        super().__init__(cfg)
        d = cfg.gpt.n_embd
        self.tokenizer = ActionTokenizer(cfg.n_bins)
        self.embed_action = nn.Embedding(cfg.n_bins + 1, d)  # + pad token
        self.embed_reward = nn.Linear(1, d)
        self.head = nn.Linear(d, cfg.n_bins)
        GPT._init(self.embed_action)

    def token_inputs(self) -> list[tuple[nn.Module, tuple[int, ...], bool]]:
        """Per token of a timestep: the module that embeds it, its input's shape, whether the input
        is real-valued (else token ids)."""
        c = self.cfg
        return [(self.embed_state, (c.state_dim,), True), (self.embed_return, (1,), True),
                *[(self.embed_action, (), False)] * c.act_dim, (self.embed_reward, (1,), True)]

    def action_tokens(self, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        tok = self.tokenizer.encode(actions)
        return tok.masked_fill(~action_mask[:, None, :], self.tokenizer.pad_token)

    def embed(self, batch: dict, act_tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(B, K, n, D)` and the state embeddings `(B, K, D)`."""
        s = self.embed_state(batch["states"])
        r_to_go = self.embed_return(batch["rtg"][..., None])[:, :, None]
        a = self.embed_action(act_tok)
        r = self.embed_reward(batch["rewards"][..., None])[:, :, None]
        return self._finish(torch.cat([s[:, :, None], r_to_go, a, r], dim=2), batch["timesteps"], slice(None)), s

    def forward(self, batch: dict, **kw) -> torch.Tensor:
        """Action logits `(B, K, A, n_bins)`; logit `i` is read at token `1 + i` (R, a^1 ..)."""
        routed = self.route_first(batch)
        act_tok = self.action_tokens(batch["actions"], batch["action_mask"])
        tokens, s = self.embed(batch, act_tok)
        h = self.backbone(tokens, batch["valid"], s, batch.get("all_valid"), routed,
                          range(1, 1 + self.cfg.act_dim), **kw)
        return self.head(h)

    def loss(self, batch: dict, **kw) -> tuple[torch.Tensor, dict]:
        logits = self.forward(batch, **kw)
        target = self.tokenizer.encode(batch["actions"])
        weight = self.loss_weight(batch)
        ce = F.cross_entropy(logits.flatten(0, 2).float(), target.flatten(), reduction="none")
        loss = (ce * weight.flatten()).sum() / self.loss_denominator(batch, weight)
        with torch.no_grad():
            # over the loss's denominator: one process's share of a distributed batch is weighted like the loss
            acc = ((logits.argmax(-1) == target).float() * weight).sum() / self.loss_denominator(batch, weight)
        return loss, {"loss": loss.detach(), "action_acc": acc}


class DecisionTransformer(_SequenceDT):
    tokens_per_step = 3
    io_modules = ("embed_return", "embed_state", "embed_action", "embed_ln", "head")
    """The token embeddings, their LayerNorm and the action head (L2M's `entry_modules=["io"]`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.gpt.n_embd
        self.embed_action = embedding(cfg, cfg.act_dim)
        if cfg.head == "mlp":  # LaMo: no tanh
            self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.act_dim))
        else:
            self.head = nn.Sequential(nn.Linear(d, cfg.act_dim), nn.Tanh())
        if cfg.vocab_size:  # LaMo's language loss: the LM's token embedding and head, on this backbone
            self.lm_wte = nn.Embedding(cfg.vocab_size, d)
            self.lm_head = None if cfg.tie_lm_head else nn.Linear(d, cfg.vocab_size, bias=False)
            # initialised as the LM's own random init (GPT-2's and Llama's: normal, std 0.02), which matters only
            # for `--no-pretrained`: torch's default N(0, 1) embedding made a tied head's logits so large that the
            # random LM's language loss started at 26 nats (log of the vocabulary: 9) and drowned the action loss
            self.lm_wte.apply(GPT._init)
            if self.lm_head is not None:
                self.lm_head.apply(GPT._init)

    def token_inputs(self) -> list[tuple[nn.Module, tuple[int, ...], bool]]:
        """Per token of a timestep: the module that embeds it, its input's shape, whether the input
        is real-valued."""
        c = self.cfg
        return [(self.embed_return, (1,), True), (self.embed_state, (c.state_dim,), True),
                (self.embed_action, (c.act_dim,), True)]

    def language_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits `(B, T, vocab)` of text `ids (B, T)` through this model's backbone (with
        whatever adapters are attached, e.g. LoRA) and the language model's embedding and head."""
        if not self.cfg.vocab_size:
            raise ValueError("this model keeps no language-model embedding (built without vocab_size)")
        h = self.transformer(self.lm_wte(ids))
        return F.linear(h, self.lm_wte.weight if self.lm_head is None else self.lm_head.weight)

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `(B, K, n, D)` and the state embeddings `(B, K, D)`."""
        r_to_go = self.embed_return(batch["rtg"][..., None])[:, :, None]
        s = self.embed_state(batch["states"])
        a = self.embed_action(batch["actions"] * batch["action_mask"][:, None, :])[:, :, None]
        return self._finish(torch.cat([r_to_go, s[:, :, None], a], dim=2), batch["timesteps"], slice(None)), s

    def forward(self, batch: dict, **kw) -> torch.Tensor:
        """Predicted actions `(B, K, A)` (read at the state tokens)."""
        routed = self.route_first(batch)
        tokens, s = self.embed(batch)
        h = self.backbone(tokens, batch["valid"], s, batch.get("all_valid"), routed, range(1, 2), **kw)
        return self.head(h[:, :, 0])

    def loss(self, batch: dict, **kw) -> tuple[torch.Tensor, dict]:
        pred = self.forward(batch, **kw).float()
        weight = self.loss_weight(batch)
        loss = (((pred - batch["actions"]) ** 2) * weight).sum() / self.loss_denominator(batch, weight)
        return loss, {"loss": loss.detach()}


class Policy:
    """Acts in `n` environments at once, step by step, over a window of the last K timesteps.

    Token embeddings are computed once, when they become known. With `use_cache` the keys and
    values of tokens already run are kept, so each forward runs only the new tokens; when the
    window slides (past K timesteps), or an attached tuner picks other modulators or prompts for
    the window, the cache is rebuilt from the window, so the outputs equal a full recompute of
    the window exactly. Without cache every forward recomputes the window. `tasks` (task name
    per environment) is only read by tuners that route by task id (L2M's oracle variant). When the
    tuner's entries modulate the embeddings (L2M's `entry_modules`), the window's token inputs are
    kept instead and embedded at every forward, after routing, with the entries just chosen.

        pol = model.policy(act_dims)              # act_dims: (n,) real action dims per env
        a = pol.act(states, rtg, timesteps)       # (n, A) actions; padded dims are 0
        pol.observe(rewards)                      # after the env step (MDDT's reward token)
    """

    def __init__(self, model: _SequenceDT, act_dims, use_cache: bool = True, tasks: list[str] | None = None):
        self.model, self.use_cache, self.tasks = model, use_cache, tasks
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.act_dims = torch.as_tensor(act_dims, device=self.device).long()
        n, cfg = len(self.act_dims), model.cfg
        self.n, self.k, self.per_step = n, cfg.context_len, model.tokens_per_step
        self.emb = torch.zeros(n, self.k, self.per_step, cfg.gpt.n_embd, device=self.device, dtype=self.dtype)
        self.t_emb = torch.zeros(n, self.k, cfg.gpt.n_embd, device=self.device, dtype=self.dtype)
        self.s_emb = torch.zeros(n, self.k, cfg.gpt.n_embd, device=self.device, dtype=self.dtype)
        self.selection = None  # the tuner's choice the cache was built with
        self.raw = None  # the window's token inputs, when the tuner's entries modulate the embeddings
        if model.tuner is not None and model.tuner.modulates_embeddings:
            inputs = model.token_inputs()
            self.raw = [torch.zeros(n, self.k, *shape, device=self.device, dtype=self.dtype if fp else torch.long)
                        for _, shape, fp in inputs]
            self.embedders = [module for module, _, _ in inputs]
        span = getattr(model.tuner, "query_span", None) if model.tuner is not None else None
        self.span = span if span != self.k else None  # a routing query over other than the window's K steps
        if self.span is not None and self.span > self.k:
            self.s_long = torch.zeros(n, self.span, cfg.gpt.n_embd, device=self.device, dtype=self.dtype)
            self.long_steps = 0
        self.steps = 0  # timesteps in the window
        self.known = 0  # known tokens of the newest timestep
        self.cache: KVCache | None = None
        self.cached = 0  # window tokens already in the cache
        self.forwards = 0

    def _put(self, j: int, x: torch.Tensor, embed: nn.Module, emb: torch.Tensor | None = None):
        """Token `j` of the newest timestep from its input `x`: embedded by `embed` (or given as
        `emb`) and finished with timestep and type, or, with modulated embeddings, kept for the
        next forward."""
        if self.raw is not None:
            self.raw[j][:, self.steps - 1] = x
        else:
            tok = embed(x) if emb is None else emb
            self.emb[:, self.steps - 1, j] = self.model._combine(tok, self.t_emb[:, self.steps - 1], j)
        self.known = j + 1

    def _new_step(self, timesteps: torch.Tensor):
        self.model._check_timesteps(timesteps)
        if self.steps == self.k:  # slide the window by one timestep
            self.emb = torch.roll(self.emb, -1, dims=1)
            self.t_emb = torch.roll(self.t_emb, -1, dims=1)
            self.s_emb = torch.roll(self.s_emb, -1, dims=1)
            if self.raw is not None:
                self.raw = [torch.roll(x, -1, dims=1) for x in self.raw]
            self.steps -= 1
            self.cache, self.cached = None, 0
        self.steps += 1
        self.known = 0
        self.t_emb[:, self.steps - 1] = self.model.embed_timestep(timesteps.to(self.device))

    def _run(self) -> torch.Tensor:
        """Run the tokens not yet run; hidden state of the last known token `(n, D)`."""
        upto = (self.steps - 1) * self.per_step + self.known
        if self.span is None:
            query_states = self.s_emb[:, : self.steps]
        elif self.span < self.k:  # the window's last `span` steps
            query_states = self.s_emb[:, max(0, self.steps - self.span): self.steps]
        else:
            query_states = self.s_long[:, : self.long_steps]
        kw = self.model.tuner_inputs(query_states, None, self.tasks)
        selection = None if self.model.tuner is None else self.model.tuner.selection()
        if selection is not None and self.selection is not None and not torch.equal(selection, self.selection):
            self.cache = None  # the tuner now modulates the window differently: recompute it
        self.selection = selection
        if self.raw is not None:  # embed the window with the entries just chosen
            tok = torch.stack([f(x) for f, x in zip(self.embedders, self.raw)], dim=2)
            self.emb = self.model._combine(tok, self.t_emb[:, :, None], slice(None))
        if not self.use_cache or self.cache is None:
            self.cache, self.cached = KVCache(self.model.cfg.gpt.n_layer), 0
        seq = self.emb.reshape(self.n, -1, self.emb.shape[-1])[:, self.cached: upto]
        h = self.model.transformer(seq, cache=self.cache, last=True, **kw)
        self.cached = upto
        if not self.use_cache:
            self.cache = None
        self.forwards += 1
        return h[:, -1]

    @torch.no_grad()
    def act(self, states: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        m = self.model
        states = states.to(self.device, self.dtype)
        rtg = rtg.to(self.device, self.dtype)[:, None]
        self._new_step(timesteps)
        self.s_emb[:, self.steps - 1] = m.query_states(states)
        if self.span is not None and self.span > self.k:  # the episode's last `span` state embeddings (query)
            if self.long_steps == self.span:
                self.s_long = torch.roll(self.s_long, -1, dims=1)
                self.long_steps -= 1
            self.s_long[:, self.long_steps] = self.s_emb[:, self.steps - 1]
            self.long_steps += 1
        if isinstance(m, MultiDomainDT):
            self._put(0, states, m.embed_state, self.s_emb[:, self.steps - 1])
            self._put(1, rtg, m.embed_return)
            tokens = torch.full((self.n, m.cfg.act_dim), m.tokenizer.pad_token, device=self.device)
            for i in range(int(self.act_dims.max())):
                nxt = m.head(self._run()).argmax(-1)
                tokens[:, i] = torch.where(i < self.act_dims, nxt, m.tokenizer.pad_token)
                self._put(2 + i, tokens[:, i], m.embed_action)
            for i in range(int(self.act_dims.max()), m.cfg.act_dim):
                self._put(2 + i, tokens[:, i], m.embed_action)
            return m.tokenizer.decode(tokens)
        self._put(0, rtg, m.embed_return)
        self._put(1, states, m.embed_state, self.s_emb[:, self.steps - 1])
        mask = torch.arange(m.cfg.act_dim, device=self.device)[None] < self.act_dims[:, None]
        action = m.head(self._run()).clamp(-1.0, 1.0) * mask  # an MLP head (LaMo) has no tanh
        self._put(2, action, m.embed_action)
        return action.float()

    @torch.no_grad()
    def observe(self, rewards: torch.Tensor):
        if isinstance(self.model, MultiDomainDT):
            self._put(self.per_step - 1, rewards.to(self.device, self.dtype)[:, None], self.model.embed_reward)
