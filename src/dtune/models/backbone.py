"""The GPT backbone every dtune model runs on.

One readable file, in the spirit of nanoGPT. Module names are stable and are the targeting API
of the adaptation methods (`h.0.attn.q`, `h.3.mlp.fc` ...):

    GPT
      wpe (learned positions only)
      h[i]: Block
        ln_1, attn: Attention(q, k, v, out), ln_2, mlp: MLP(fc, act, proj) or MLP(gate, fc, act, proj)
      ln_f

By default: pre-LayerNorm, GELU MLP, no positional embedding (models add their own timestep
embeddings), attention through `scaled_dot_product_attention`. The config also covers the
pre-trained language models that `dtune.models.lm` converts into these modules: GPT-2 (learned
positions, `c_attn` split into q/k/v) and the Llama family (RMSNorm, SwiGLU MLP, rotary
positions, grouped-query attention, no biases).

Extension points used by the adaptation methods:

* `prompt`: extra input tokens `(B, P, D)` placed before the sequence; every token sees them.
* `prefix`: per-layer extra keys/values `[(k, v)]` with `k, v: (B, H, P, hd)`; every token
  attends to them (prefix-tuning, P-tuning v2).
* `cache`: a :class:`KVCache` for incremental decoding; new tokens attend to the cached ones
  (a prompt is cached with the first tokens).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """Size of the transformer."""

    n_layer: int = 3
    """Number of blocks."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 128
    """Width (must be divisible by n_head; head width = n_embd // n_head)."""
    n_kv_head: int | None = None
    """Key/value heads: None = n_head; fewer (dividing n_head) is grouped-query attention (Llama):
    `k` and `v` output n_kv_head heads, each shared by n_head // n_kv_head query heads."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches."""
    mlp_ratio: int = 4
    """MLP hidden width = mlp_ratio * n_embd (unless mlp_hidden is set)."""
    mlp_hidden: int | None = None
    """MLP hidden width, when it is no multiple of n_embd (Llama's `intermediate_size`); None =
    mlp_ratio * n_embd."""
    bias: bool = True
    """Biases in linear layers and LayerNorms (GPT-2 has them; Llama has none)."""
    ln_eps: float = 1e-5
    """Epsilon of the norms (LayerNorm or RMSNorm)."""
    norm: str = "layernorm"
    """`layernorm` (GPT-2) or `rmsnorm` (Llama: scale only, never a bias)."""
    mlp: str = "gelu"
    """`gelu`: fc -> act -> proj (GPT-2). `swiglu` (Llama): proj(silu(gate(x)) * fc(x)), with an
    extra `gate` Linear; `fc` is the up projection and `proj` the down projection."""
    activation: str = "gelu_tanh"
    """Activation of the `gelu` MLP: `gelu_tanh` (GPT-2's tanh approximation; configs written
    before this field existed mean it) or `gelu` (exact, erf): within 5e-4 of each other, and on
    CPUs the exact one runs forward + backward about 3x faster (torch's tanh is slow there), so the
    presets use it. The `swiglu` MLP always uses SiLU."""
    positions: str = "none"
    """Position information added by the backbone: `none` (the models add timestep embeddings),
    `learned` (GPT-2: a table `wpe` of n_positions vectors added to the input) or `rotary`
    (Llama: RoPE applied to queries and keys in every head). Positions count from the first token
    of the sequence, prompt tokens included; with a cache, new tokens continue after the cached
    ones."""
    n_positions: int = 1024
    """Size of the position table (positions = `learned`): the longest sequence."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies (positions = `rotary`)."""

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must be None or a divisor of n_head ({self.n_head})")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden ({self.mlp_hidden}) must be None or positive")
        for name, allowed in (("activation", ACTIVATIONS), ("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.positions == "learned" and self.n_positions < 1:
            raise ValueError(f"n_positions ({self.n_positions}) must be positive with learned positions")
        if self.positions == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary positions need an even head width, not {self.n_embd // self.n_head}")


ACTIVATIONS = {"gelu_tanh": "tanh", "gelu": "none"}
"""Activation name -> the `approximate` argument of `nn.GELU`."""
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("none", "learned", "rotary")


@functools.lru_cache(maxsize=64)
def _held(value: float, dtype: torch.dtype) -> float:
    """`value` as `dtype` holds it (bf16 rounds 1 / 0.9 to 1.109375)."""
    return torch.tensor(value, dtype=dtype).item()


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout on CPUs from 16-bit random integers, four per 64-bit draw (the keep probability
    exact to 1/65536), where torch's Bernoulli sampling took a quarter of a small model's training
    step; torch's own dropout on GPUs.

    The mask is built once in `x`'s dtype with the rescaling in it (0 or 1 / (1 - p)), so forward
    and backward are one multiplication each. In 16-bit dtypes 1 / (1 - p) is not representable
    (bf16 holds 1.109375 for p = 0.1), so the scale is the dtype's nearest value and the keep
    probability is 1 / scale: the output's expectation is still exactly the input (for p = 0.1 in
    bf16 the drop rate is 0.0986).
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    if p >= 1.0:
        return x * 0
    n = x.numel()
    scale = _held(1.0 / (1.0 - p), x.dtype)
    # int64 over its whole range: random_() without bounds leaves the top bit 0
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1).view(torch.int16)[:n]
    keep = bits.view(x.shape) >= round((1.0 - 1.0 / scale) * 65536) - 32768
    return x * keep.to(x.dtype).mul_(scale)


class Dropout(nn.Module):
    """:func:`dropout` as a module (a drop-in for `nn.Dropout`: no parameters, same state dict)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): x / rms(x) * weight, computed in float32."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm(cfg: GPTConfig) -> nn.Module:
    """The norm layer the config asks for (LayerNorm or RMSNorm)."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.ln_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps, bias=cfg.bias)


def rotary(cfg: GPTConfig, t0: int, t: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines `(t, head_dim)` of the rotary embedding for positions t0 .. t0 + t - 1
    (Llama's layout: the two halves of a head are rotated against each other)."""
    hd = cfg.n_embd // cfg.n_head
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd))
    angles = torch.arange(t0, t0 + t, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `(B, H, T, hd)` by the angles of :func:`rotary`."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding (with
    grouped-query attention the n_kv_head heads are kept, before their repetition)."""

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.head_dim = d // cfg.n_head
        n_kv_head = cfg.n_kv_head or cfg.n_head
        self.n_rep = cfg.n_head // n_kv_head  # query heads per key/value head
        self.q = nn.Linear(d, d, bias=cfg.bias)
        self.k = nn.Linear(d, n_kv_head * self.head_dim, bias=cfg.bias)
        self.v = nn.Linear(d, n_kv_head * self.head_dim, bias=cfg.bias)
        self.out = nn.Linear(d, d, bias=cfg.bias)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = Dropout(cfg.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, -1, self.head_dim).transpose(1, 2)

    def forward(self, x, mask, layer: int, cache: KVCache | None = None, prefix=None, rope=None,
                rows: slice | torch.Tensor | None = None):
        """`rows`: queries of these tokens only (a slice or index of `x`'s tokens; their outputs
        `(B, len(rows), D)`, `mask` already holds their rows only); keys and values of all."""
        if torch.is_autocast_enabled(x.device.type):  # cast once for q, k and v, not three times
            x = x.to(torch.get_autocast_dtype(x.device.type))
        xq = x if rows is None else x[:, rows]
        b, t, d = xq.shape
        q, k, v = self._heads(self.q(xq)), self._heads(self.k(x)), self._heads(self.v(x))
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, *((cos, sin) if rows is None else (cos[rows], sin[rows]))), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        if self.n_rep > 1:  # grouped-query attention: each key/value head serves n_rep query heads
            k, v = k.repeat_interleave(self.n_rep, dim=1), v.repeat_interleave(self.n_rep, dim=1)
        if prefix is not None:
            pk, pv = prefix
            k = torch.cat([pk.to(k.dtype).expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.to(v.dtype).expand(b, -1, -1, -1), v], dim=2)
            mask = F.pad(mask, (pk.shape[2], 0), value=True)  # GPT.forward builds a mask when prefix is set
        if x.device.type == "cpu" and (self.training and self.attn_dropout > 0 or q.dtype != torch.float32):
            y = self._attend(q, k, v, mask, self.attn_dropout if self.training else 0.0)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0,
                is_causal=mask is None and rows is None,  # rows without a mask: the last token's (all keys)
            )
        return self.resid_dropout(self.out(y.transpose(1, 2).reshape(b, t, d)))

    def _attend(self, q, k, v, mask, p: float):
        """Attention written out (what SDPA's math path computes), used on CPUs for training with
        dropout (the masks come from :func:`dropout`) and in 16-bit precision, where torch's SDPA
        kernels ran 2x (inference) to 6x (training) slower than this at dtune's sizes. Without a
        mask the queries are the last `t` tokens, causal."""
        b, h, t, hd = q.shape
        tk = k.shape[2]
        if mask is None:
            mask = torch.ones(t, tk, dtype=torch.bool, device=q.device).tril(tk - t)
        # the mask as an additive bias, so that one baddbmm does scores, scaling and masking (a third
        # faster than matmul, scale and masked_fill at dtune's sizes)
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        if bias.dim() == 4:  # (B|1, 1, t, tk)
            bias = bias.expand(b, h, t, tk).reshape(b * h, t, tk)
        att = torch.baddbmm(bias, q.reshape(b * h, t, hd), k.reshape(b * h, tk, hd).transpose(1, 2),
                            alpha=1.0 / math.sqrt(hd))
        return dropout(att.view(b, h, t, tk).softmax(-1), p, True) @ v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = cfg.mlp_hidden or cfg.mlp_ratio * cfg.n_embd
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.act = nn.SiLU() if self.swiglu else nn.GELU(approximate=ACTIVATIONS[cfg.activation])
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x):
        if self.swiglu:
            return self.dropout(self.proj(self.act(self.gate(x)) * self.fc(x)))
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = norm(cfg)
        self.attn = Attention(cfg)
        self.ln_2 = norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, mask, layer, cache=None, prefix=None, rope=None, rows: slice | torch.Tensor | None = None):
        """`rows`: the outputs of these tokens only `(B, len(rows), D)` (a slice or index of `x`'s
        tokens; keys and values of every token still go into the cache)."""
        a = self.attn(self.ln_1(x), mask, layer, cache, prefix, rope, rows)
        x = (x if rows is None else x[:, rows]) + a
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Causal transformer over embeddings `(B, T, D)` -> hidden states `(B, T, D)`."""

    family = "gpt"  # backbone family: selects the tuners' default target modules

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.drop = Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = norm(cfg)
        if cfg.positions == "learned":
            self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("attn.out.weight", "mlp.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    @staticmethod
    def attention_mask(valid: torch.Tensor | None, t_new: int, t_past: int = 0, n_open: int = 0,
                       device=None) -> torch.Tensor:
        """Boolean mask `(B|1, 1, t_new, t_past + t_new)`, True = may attend.

        Causal over past + new tokens. `valid` `(B, t_past + t_new)` marks real (not padding)
        tokens: no token attends to a padding token other than itself (so no row is empty). The
        first `n_open` positions (prompt tokens) are visible to every token.
        """
        t_all = t_past + t_new
        qi = torch.arange(t_past, t_all, device=device)[:, None]
        ki = torch.arange(t_all, device=device)[None, :]
        mask = (ki <= qi)[None, None]
        if valid is not None:
            mask = mask & (valid[:, None, None, :] | (ki == qi)[None, None])
        if n_open:
            mask = mask | (ki < n_open)[None, None]
        return mask

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None, cache: KVCache | None = None,
                prompt: torch.Tensor | None = None, prefix: list | None = None, last: bool = False,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run the blocks.

        Args:
            x: input embeddings of the new tokens `(B, T, D)`.
            valid: `(B, t_past + T)` bool, False at padding tokens (None = all real).
            cache: key/value cache; the new tokens attend to what it holds and are appended.
            prompt: `(B|1, P, D)` tokens prepended to the input, visible to every token; their
                outputs are dropped. With a cache, the prompt runs (and is cached) only when the
                cache is empty; later calls find it there and ignore `prompt`.
            prefix: per-layer `(k, v)` each `(B|1, H, P, hd)` (H = n_head, also with fewer
                key/value heads; no rotary positions), attended to by every token.
            last: return the last token's hidden state only `(B, 1, D)`: the final block then runs
                attention and MLP for that token alone (its keys and values for all, into the
                cache), about a fifth less work for a window in a 3-block model (inference).
            rows: return the hidden states of these new tokens only `(B, len(rows), D)` (a 1-D index
                into `x`'s tokens): the final block runs queries, MLP and final norm for them alone,
                the others' keys and values still count. Training reads a few tokens per timestep
                (the classic DT one of three), so this skips up to two thirds of the final block.
        """
        if last and rows is not None:
            raise ValueError("pass either last=True or rows, not both")
        n_prompt = 0
        if prompt is not None and (cache is None or cache.length == 0):
            n_prompt = prompt.shape[1]
            x = torch.cat([prompt.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
            if valid is not None:
                valid = F.pad(valid, (n_prompt, 0), value=True)
        t_past = cache.length if cache is not None else 0
        plain = valid is None and t_past == 0 and n_prompt == 0 and prefix is None
        mask = None if plain else self.attention_mask(valid, x.shape[1], t_past, n_prompt, x.device)
        rope = None
        if self.cfg.positions == "learned":
            if t_past + x.shape[1] > self.cfg.n_positions:
                raise ValueError(f"sequence of {t_past + x.shape[1]} tokens is longer than the position table "
                                 f"({self.cfg.n_positions})")
            x = x + self.wpe(torch.arange(t_past, t_past + x.shape[1], device=x.device))
        elif self.cfg.positions == "rotary":
            rope = rotary(self.cfg, t_past, x.shape[1], x.device)
        x = self.drop(x)
        final_rows, final_mask = None, mask
        if last:
            final_rows = slice(-1, None)
            final_mask = None if mask is None else mask[..., -1:, :]
        elif rows is not None:
            final_rows = rows.to(x.device) + n_prompt
            full = mask if mask is not None else self.attention_mask(None, x.shape[1], t_past, device=x.device)
            final_mask = full[..., final_rows, :]
        for i, block in enumerate(self.h):
            final = i == len(self.h) - 1
            x = block(x, final_mask if final else mask, i, cache, None if prefix is None else prefix[i], rope,
                      final_rows if final else None)
        x = self.ln_f(x)
        return x[:, n_prompt:] if n_prompt and final_rows is None else x
