"""LaMo's Decision Transformer: a classic DT whose backbone starts from a pre-trained causal LM.

:func:`lamo_config` and :func:`lamo_model` build it from a language model that
:func:`dtune.models.lm.load_lm` reads (GPT-2 or Llama-family directory, GGUF file, `dtune lm
pretrain` run, installed LM's name such as `smollm2`):

* the LM's blocks become the DT's `transformer` (same module names, so LoRA on `q`, `k`, `v`
  targets them); a learned position table (GPT-2's `wpe`) is dropped, as in LaMo's reference
  code (timestep embeddings say where a token is); rotary positions (Llama), which have no
  table and are part of how the blocks attend, are kept (`keep_rotary`);
* return, state and action embeddings are MLPs (Linear -> GELU -> Linear plus the first
  layer's output), the action head an MLP without tanh, the LayerNorm applied before the
  timestep embedding is added, no token-type embedding: LaMo's choices; `mlp_embeddings=False`
  gives the classic DT's linear embeddings and tanh head (the ablation, and LaMo's Hopper);
* with `language=True` the LM's token embedding (and its head, when not tied) stay in the model
  as `lm_wte` / `lm_head` for the auxiliary language loss
  (:meth:`dtune.models.dt.DecisionTransformer.language_logits`).

Which parameters train (LoRA on q/k/v plus the embeddings and heads, or everything but the LM's token
embedding and head) is the adaptation method's business (`dtune.tuners`), not this module's.
"""

from __future__ import annotations

import os
from dataclasses import replace

from dtune.models import ModelConfig, build_model


def lamo_config(lm_config, state_dim: int, act_dim: int, context_len: int = 20, max_timestep: int = 1000,
                mlp_embeddings: bool = True, language: bool = True, dropout: float | None = None,
                keep_rotary: bool = True, lm_path: str | None = None, n_layer: int | None = None) -> ModelConfig:
    """The DT's config around a converted LM's config (`dtune.models.lm.LMConfig`). `dropout`
    unset keeps the LM's own (GPT-2: 0.1, as LaMo; SmolLM2 and other Llama-family models: 0, as
    they were trained: dropout 0.1 through SmolLM2's 30 blocks doubles its text loss, CE 4.2 to 8.5).
    `n_layer` keeps only the LM's first blocks (unset: all)."""
    g = lm_config.gpt
    if n_layer is not None:
        if not 1 <= n_layer <= g.n_layer:
            raise ValueError(f"lm_layers must lie in 1..{g.n_layer} (the LM's blocks), got {n_layer}")
        g = replace(g, n_layer=n_layer)
    positions = g.positions if (g.positions == "rotary" and keep_rotary) else "none"
    gpt = replace(g, positions=positions, dropout=g.dropout if dropout is None else dropout)
    return ModelConfig(kind="dt", state_dim=state_dim, act_dim=act_dim, context_len=context_len,
                       max_timestep=max_timestep, type_embedding=False,
                       embedding="mlp" if mlp_embeddings else "linear", head="mlp" if mlp_embeddings else "tanh",
                       ln_before_timestep=True, gpt=gpt, vocab_size=lm_config.vocab_size if language else 0,
                       tie_lm_head=lm_config.tie_word_embeddings, lm=lm_path)


def lamo_model(lm_path: str | os.PathLike, state_dim: int, act_dim: int, pretrained: bool = True, lm=None, **kw):
    """A LaMo Decision Transformer whose blocks (and language embedding/head) hold the LM's
    weights; `pretrained=False` keeps the same architecture randomly initialised (the paper's
    ablation). `lm`: the LM of `lm_path` already loaded by `load_lm` (not read again). Other keyword
    arguments go to :func:`lamo_config`."""
    import torch

    from dtune.models.lm import lm_path as resolve, load_lm

    lm = load_lm(lm_path) if lm is None else lm
    cfg = lamo_config(lm.config, state_dim, act_dim, lm_path=str(resolve(lm_path)), **kw)  # a name: its file
    model = build_model(cfg)
    if not pretrained:
        return model
    n = cfg.gpt.n_layer
    blocks = {k: v for k, v in lm.transformer.state_dict().items()
              if not k.startswith("wpe.") and not (k.startswith("h.") and int(k.split(".")[1]) >= n)}
    model.transformer.load_state_dict(blocks)
    if cfg.vocab_size:
        with torch.no_grad():
            model.lm_wte.weight.copy_(lm.wte.weight)
            if model.lm_head is not None:
                model.lm_head.weight.copy_(lm.lm_head.weight)
    return model


__all__ = ["lamo_config", "lamo_model"]
