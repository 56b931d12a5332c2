import pytest
import torch

from dtune.models import GPT, GPTConfig, KVCache


@pytest.fixture
def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()


def test_module_names_are_the_targeting_api(gpt):
    names = {n for n, _ in gpt.named_modules()}
    for leaf in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.fc", "mlp.proj", "ln_1", "ln_2"):
        assert f"h.0.{leaf}" in names and f"h.1.{leaf}" in names


def test_causality(gpt):
    x = torch.randn(2, 10, 16)
    y = gpt(x)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, 16)
    y2 = gpt(x2)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


def test_cache_equals_full_recompute(gpt):
    x = torch.randn(3, 9, 16)
    full = gpt(x)
    cache = KVCache(2)
    parts = [gpt(x[:, :4], cache=cache), gpt(x[:, 4:5], cache=cache), gpt(x[:, 5:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 9


def test_padding_tokens_do_not_change_real_outputs(gpt):
    x = torch.randn(1, 6, 16)
    valid = torch.tensor([[False, False, True, True, True, True]])
    y = gpt(x, valid=valid)
    x2 = x.clone()
    x2[:, :2] = torch.randn(1, 2, 16)
    torch.testing.assert_close(gpt(x2, valid=valid)[:, 2:], y[:, 2:])
    torch.testing.assert_close(y[:, 2:], gpt(x[:, 2:]))  # same as no padding at all
    assert torch.isfinite(y).all()


def test_prompt_tokens_are_seen_by_all_and_dropped_from_output(gpt):
    x = torch.randn(2, 5, 16)
    prompt = torch.randn(1, 3, 16)
    y = gpt(x, prompt=prompt)
    assert y.shape == x.shape
    assert not torch.allclose(y[:, 0], gpt(x)[:, 0])
    # still causal among the real tokens
    x2 = x.clone()
    x2[:, 3:] = 0
    torch.testing.assert_close(gpt(x2, prompt=prompt)[:, :3], y[:, :3])
    # with a cache the prompt runs (and is cached) with the first tokens only: same outputs
    cache = KVCache(2)
    parts = [gpt(x[:, :2], prompt=prompt, cache=cache), gpt(x[:, 2:], prompt=prompt, cache=cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), y)
    assert cache.length == 3 + 5


def test_prefix_keys_values(gpt):
    x = torch.randn(2, 5, 16)
    zero_prefix = [(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)) for _ in range(2)]
    rand_prefix = [(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)) for _ in range(2)]
    y = gpt(x, prefix=rand_prefix)
    assert y.shape == x.shape and not torch.allclose(y, gpt(x))
    x2 = x.clone()
    x2[:, 3:] = 0
    torch.testing.assert_close(gpt(x2, prefix=rand_prefix)[:, :3], y[:, :3])
    assert torch.isfinite(gpt(x, prefix=zero_prefix)).all()


def test_bad_config():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_fast_dropout_rate_scale_and_gradient():
    import torch

    from dtune.models.backbone import Dropout, dropout

    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.1, True)
    kept = (y != 0).float()
    assert abs(1 - kept.mean().item() - 0.1) < 0.005  # drop rate p
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))  # survivors rescaled
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)  # gradient flows through kept entries only
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    odd = torch.ones(3, 5, 7, dtype=torch.bfloat16)  # odd sizes, bf16
    assert dropout(odd, 0.5, True).shape == odd.shape
    m = Dropout(0.3).eval()
    assert m(x) is x and "p=0.3" in repr(m)


def test_bad_activation():
    with pytest.raises(ValueError, match="gelu_tanh"):
        GPTConfig(activation="relu")


@pytest.mark.parametrize("activation,approximate", [("gelu", "none"), ("gelu_tanh", "tanh")])
def test_activation_choices(activation, approximate):
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, activation=activation))
    assert m.h[0].mlp.act.approximate == approximate
    assert GPTConfig().activation == "gelu_tanh"  # configs written before the field existed


def test_presets_use_exact_gelu():
    from dtune.models import PRESETS

    assert {p.activation for p in PRESETS.values()} == {"gelu"}


@pytest.mark.parametrize("case", ["causal", "padding", "cache", "prefix"])
def test_written_out_attention_equals_sdpa_in_bf16(gpt, case, monkeypatch):
    """On CPUs bf16 attention takes the written-out path (faster than torch's SDPA there); it must
    compute what SDPA computes, with every kind of mask."""
    import torch.nn.functional as F

    from dtune.models import backbone

    torch.manual_seed(1)
    x = torch.randn(3, 7, 16)
    kw = {}
    if case == "padding":
        kw["valid"] = torch.tensor([[False, True, True, True, True, True, True]] * 3)
    if case == "prefix":
        kw["prefix"] = [(torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)) for _ in range(2)]

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if case != "cache":
                return gpt(x, **kw).float()
            cache = KVCache(2)
            return torch.cat([gpt(x[:, :4], cache=cache), gpt(x[:, 4:], cache=cache)], 1).float()

    calls = []
    real = backbone.Attention._attend
    monkeypatch.setattr(backbone.Attention, "_attend", lambda self, *a: calls.append(1) or real(self, *a))
    written_out = run()
    assert calls  # the bf16 path was taken
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(backbone.Attention, "_attend", lambda self, q, k, v, mask, p: sdpa(
        q, k, v, attn_mask=mask, is_causal=mask is None))
    torch.testing.assert_close(written_out, run(), atol=3e-2, rtol=3e-2)
