"""LaMo's Decision Transformer built from a language model: the blocks carry the LM's weights,
the language head computes the LM's logits (without GPT-2's position table, as LaMo), and the
DT trains and acts."""

import pytest
import torch

from dtune.models.lamo import lamo_model
from dtune.models.lm import load_lm
from tests.models.test_lm import saved, tiny_gpt2, tiny_llama

S, A = 11, 3


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return saved(tiny_gpt2(), tmp_path_factory.mktemp("gpt2"))


def test_blocks_hold_the_lm_weights_and_the_language_head_its_logits(gpt2_dir):
    model = lamo_model(gpt2_dir, S, A, context_len=4, max_timestep=50)
    lm = load_lm(gpt2_dir)
    for k, v in lm.transformer.state_dict().items():
        if not k.startswith("wpe."):
            assert torch.equal(model.transformer.state_dict()[k], v), k
    assert "wpe.weight" not in model.transformer.state_dict()  # LaMo drops GPT-2's position table
    with torch.no_grad():
        lm.transformer.wpe.weight.zero_()  # the LM without positions is what the language loss sees
        ids = torch.randint(0, 50, (2, 9))
        torch.testing.assert_close(model.eval().language_logits(ids), lm(ids), atol=1e-5, rtol=1e-5)
    assert model.cfg.embedding == "mlp" and model.cfg.head == "mlp" and model.cfg.ln_before_timestep
    assert model.cfg.lm == str(gpt2_dir) and not model.cfg.type_embedding


def test_random_init_ablation_and_no_language_head(gpt2_dir):
    scratch = lamo_model(gpt2_dir, S, A, pretrained=False, language=False, mlp_embeddings=False)
    assert not hasattr(scratch, "lm_wte") and scratch.cfg.embedding == "linear" and scratch.cfg.head == "tanh"
    lm = load_lm(gpt2_dir)
    assert not torch.equal(scratch.transformer.h[0].attn.q.weight, lm.transformer.h[0].attn.q.weight)
    with pytest.raises(ValueError, match="no language-model embedding"):
        scratch.language_logits(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_random_lm_starts_its_language_loss_at_chance(gpt2_dir, tmp_path, family):
    """`--no-pretrained` initialises the language embedding and head as the LM's own random init
    (std 0.02): its text cross-entropy starts near log(vocabulary), not far above it."""
    import math

    import torch.nn.functional as F

    d = gpt2_dir if family == "gpt2" else saved(tiny_llama(tie=False), tmp_path / "llama")
    torch.manual_seed(0)
    model = lamo_model(d, S, A, pretrained=False).eval()
    vocab = model.cfg.vocab_size
    ids = torch.randint(0, vocab, (4, 16))
    with torch.no_grad():
        logits = model.language_logits(ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1)).item()
    assert abs(loss - math.log(vocab)) < 0.1, (loss, math.log(vocab))


def test_llama_keeps_rotary_positions_and_an_untied_head(tmp_path):
    d = saved(tiny_llama(tie=False), tmp_path / "llama")
    model = lamo_model(d, S, A)
    lm = load_lm(d)
    assert model.cfg.gpt.positions == "rotary" and model.lm_head is not None
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model.eval().language_logits(ids), lm(ids), atol=1e-5, rtol=1e-5)
    assert lamo_model(d, S, A, keep_rotary=False).cfg.gpt.positions == "none"


def test_the_lamo_dt_trains_and_acts(gpt2_dir):
    from tests.models.test_dt import make_batch

    torch.manual_seed(0)
    model = lamo_model(gpt2_dir, 12, 6, context_len=5, max_timestep=64)
    batch = make_batch()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("lm_")], 3e-3)
    first = None
    for _ in range(40):
        loss, _ = model.train().loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.7 * first
    pol = model.eval().policy(torch.tensor([6, 2]))
    a = pol.act(torch.randn(2, 12), torch.randn(2), torch.zeros(2, dtype=torch.long))
    assert a.shape == (2, 6) and a.abs().max() <= 1 and torch.all(a[1, 2:] == 0)


def test_dropout_defaults_to_the_lms_own(gpt2_dir, tmp_path):
    """GPT-2 was trained with dropout 0.1 (LaMo keeps it); Llama-family models without: dropout
    through their blocks would wreck the language model (SmolLM2: text CE 4.2 -> 8.5)."""
    assert lamo_model(gpt2_dir, S, A).cfg.gpt.dropout == 0.1
    llama = saved(tiny_llama(tie=True), tmp_path / "llama")
    assert lamo_model(llama, S, A).cfg.gpt.dropout == 0.0
    assert lamo_model(llama, S, A, dropout=0.05).cfg.gpt.dropout == 0.05


def test_only_the_first_blocks_of_the_lm(gpt2_dir):
    model = lamo_model(gpt2_dir, S, A, context_len=4, max_timestep=50, n_layer=1)
    lm = load_lm(gpt2_dir)
    assert model.cfg.gpt.n_layer == 1 and len(model.transformer.h) == 1
    for k, v in model.transformer.state_dict().items():
        assert torch.equal(v, lm.transformer.state_dict()[k]), k  # block 0 and the final norm, as the LM's
    with pytest.raises(ValueError, match="lm_layers must lie in 1..2"):
        lamo_model(gpt2_dir, S, A, n_layer=3)
