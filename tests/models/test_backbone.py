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
    for lane in range(4):  # each 16-bit quarter of a 64-bit draw is uniform (a signed draw's top bit too)
        assert abs(1 - kept[lane::4].mean().item() - 0.1) < 0.01
    odd = torch.ones(3, 5, 7, dtype=torch.bfloat16)  # odd sizes, bf16
    assert dropout(odd, 0.5, True).shape == odd.shape
    half = dropout(torch.ones(4_000_000, dtype=torch.bfloat16), 0.1, True)  # bf16 cannot hold 1/0.9:
    assert half.dtype == torch.bfloat16 and set(half.unique().tolist()) == {0.0, 1.109375}
    assert abs(half.float().mean().item() - 1) < 8e-4  # the keep rate makes up for the rounded scale (bias 1.6e-3)
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))
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


# --- the fields that describe pre-trained LMs (GPT-2, Llama): dtune.models.lm builds them ---

LLAMA_LIKE = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=16, dropout=0.0, mlp_hidden=24, bias=False,
                  norm="rmsnorm", mlp="swiglu", positions="rotary", rope_theta=100.0)
GPT2_LIKE = dict(n_layer=2, n_head=2, n_embd=16, dropout=0.0, positions="learned", n_positions=12)


@pytest.mark.parametrize("kw,match", [
    (dict(norm="batchnorm"), "unknown norm 'batchnorm'; choose one of layernorm, rmsnorm"),
    (dict(mlp="relu"), "unknown mlp 'relu'; choose one of gelu, swiglu"),
    (dict(positions="alibi"), "unknown positions 'alibi'; choose one of none, learned, rotary"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head"),
    (dict(n_kv_head=0), "n_kv_head"),
    (dict(mlp_hidden=0), "mlp_hidden"),
    (dict(positions="learned", n_positions=0), "n_positions"),
    (dict(n_embd=12, n_head=4, positions="rotary"), "even head width"),
])
def test_bad_lm_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)


def test_configs_without_the_lm_fields_keep_the_old_model():
    from dtune.models import ModelConfig

    old = {"n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0, "mlp_ratio": 4, "bias": True, "ln_eps": 1e-5}
    cfg = ModelConfig(gpt=dict(old)).gpt
    assert (cfg.norm, cfg.mlp, cfg.positions, cfg.n_kv_head, cfg.mlp_hidden) == ("layernorm", "gelu", "none", None, None)
    m = GPT(cfg)
    assert not hasattr(m, "wpe") and not hasattr(m.h[0].mlp, "gate")
    assert isinstance(m.h[0].ln_1, torch.nn.LayerNorm) and m.h[0].mlp.fc.out_features == 64


@pytest.mark.parametrize("kw", [LLAMA_LIKE, GPT2_LIKE], ids=["llama", "gpt2"])
def test_lm_layouts_cache_and_prompt_equal_full_forward(kw):
    """Positions (rotary or learned) continue after the cached tokens, prompt tokens included."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**kw)).eval()
    x, prompt = torch.randn(2, 8, 16), torch.randn(1, 3, 16)
    full = gpt(x)
    cache = KVCache(2)
    parts = [gpt(x[:, :3], cache=cache), gpt(x[:, 3:4], cache=cache), gpt(x[:, 4:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    with_prompt = gpt(x, prompt=prompt)
    assert not torch.allclose(with_prompt, full)
    cache = KVCache(2)
    parts = [gpt(x[:, :5], prompt=prompt, cache=cache), gpt(x[:, 5:], prompt=prompt, cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), with_prompt, atol=1e-5, rtol=1e-5)
    assert cache.length == 3 + 8


def test_positions_make_the_order_matter():
    def model(**kw):  # one block (causal masking alone orders tokens after it); weights far
        gpt = GPT(GPTConfig(**{**kw, "n_layer": 1})).eval()  # from their init (else uniform attention)
        with torch.no_grad():
            for p in gpt.parameters():
                p.normal_(0.0, 0.5)
        return gpt

    torch.manual_seed(0)
    x = torch.randn(1, 4, 16)
    swapped = x[:, [1, 0, 2, 3]]
    for kw in (LLAMA_LIKE, GPT2_LIKE):
        gpt = model(**kw)
        assert not torch.allclose(gpt(x)[:, 2:], gpt(swapped)[:, 2:], atol=1e-3)
    gpt = model(**{**LLAMA_LIKE, "positions": "none"})
    torch.testing.assert_close(gpt(x)[:, 2:], gpt(swapped)[:, 2:])  # no positions: order-blind


def test_grouped_query_attention_shapes_and_prefix():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**LLAMA_LIKE)).eval()
    attn = gpt.h[0].attn
    assert attn.q.out_features == 16 and attn.k.out_features == attn.v.out_features == 8  # 2 kv heads of 4
    names = {n for n, _ in gpt.named_modules()}
    assert {"h.0.mlp.gate", "h.0.mlp.fc", "h.0.mlp.proj", "h.0.attn.q"} <= names
    x = torch.randn(2, 5, 16)
    prefix = [(torch.randn(1, 4, 3, 4), torch.randn(1, 4, 3, 4)) for _ in range(2)]  # n_head (4) heads
    y = gpt(x, prefix=prefix)
    assert y.shape == x.shape and not torch.allclose(y, gpt(x))
    cache = KVCache(2)
    gpt(x, cache=cache)
    assert cache.k[0].shape == (2, 2, 5, 4)  # the cache keeps the 2 key/value heads


def test_learned_positions_table_limit():
    gpt = GPT(GPTConfig(**GPT2_LIKE)).eval()
    gpt(torch.randn(1, 12, 16))
    with pytest.raises(ValueError, match="longer than the position table"):
        gpt(torch.randn(1, 13, 16))


LAYOUTS = {"gpt": dict(n_layer=2, n_head=2, n_embd=16, dropout=0.0), "llama": LLAMA_LIKE, "gpt2": GPT2_LIKE}


def case_args(model: GPT, case: str) -> dict:
    """The extra inputs of a test case for a 7-token batch of 3 (padding, prompt or prefix)."""
    args = {}
    if case == "padding":
        args["valid"] = torch.tensor([[False, True, True, True, True, True, True]] * 3)
    if case == "prompt":
        args["prompt"] = torch.randn(1, 2, 16)
    if case == "prefix":
        h = model.cfg.n_head
        args["prefix"] = [(torch.randn(1, h, 3, 16 // h), torch.randn(1, h, 3, 16 // h)) for _ in range(2)]
    return args


@pytest.mark.parametrize("layout", ["gpt", "llama", "gpt2"])
@pytest.mark.parametrize("case", ["plain", "padding", "cache", "prompt", "prefix"])
@pytest.mark.parametrize("bf16", [False, True])
def test_last_token_output_equals_full_forward(layout, case, bf16):
    """`last=True` (what the evaluator asks for) gives the full forward's last hidden state, fills
    the cache the same way, and later tokens see the same keys and values."""
    kw = LAYOUTS[layout]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**kw)).eval()
    x = torch.randn(3, 7, 16)
    args = case_args(model, case)
    tol = dict(atol=3e-2, rtol=3e-2) if bf16 else {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if case == "cache":
            full_cache, last_cache = KVCache(2), KVCache(2)
            model(x[:, :3], cache=full_cache), model(x[:, :3], cache=last_cache, last=True)
            full, last = model(x[:, 3:6], cache=full_cache), model(x[:, 3:6], cache=last_cache, last=True)
            for a, b in zip(full_cache.k + full_cache.v, last_cache.k + last_cache.v):
                torch.testing.assert_close(a, b, **tol)
            full, last = model(x[:, 6:], cache=full_cache), model(x[:, 6:], cache=last_cache)
        else:
            full, last = model(x, **args), model(x, **args, last=True)
    assert last.shape == (3, 1, 16)
    torch.testing.assert_close(last.float(), full[:, -1:].float(), **tol)


@pytest.mark.parametrize("layout", ["gpt", "llama", "gpt2"])
@pytest.mark.parametrize("case", ["plain", "padding", "cache", "prompt", "prefix"])
@pytest.mark.parametrize("bf16", [False, True])
def test_selected_rows_equal_full_forward_with_gradients(layout, case, bf16):
    """`rows` (what training asks for: the tokens the loss reads) gives the full forward's hidden
    states of those tokens, and the same gradients for every weight and input, in training mode
    (written-out attention on CPUs) and in evaluation mode (SDPA in fp32)."""
    kw = LAYOUTS[layout]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**kw))
    for block in model.h:  # a rate that drops nothing, so training mode takes the written-out attention in fp32 too
        block.attn.attn_dropout = 1e-12
    x = torch.randn(3, 7, 16, requires_grad=True)
    rows = torch.tensor([1, 2, 4, 6])
    args = case_args(model, case)
    tol = dict(atol=3e-2, rtol=3e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    for train in (True, False):
        model.train(train)
        outs, grads = [], []
        for sel in (None, rows):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if case == "cache":
                    cache = KVCache(2)
                    model(x[:, :3], cache=cache)
                    y = model(x[:, 3:], cache=cache, rows=None if sel is None else torch.tensor([0, 2, 3]))
                    y = y[:, [0, 2, 3]] if sel is None else y
                else:
                    y = model(x, **args, rows=sel)
                    y = y[:, rows] if sel is None else y
            weights = torch.linspace(-1, 1, y.numel()).view(y.shape)
            grads.append(torch.autograd.grad((y.float() * weights).sum(), [x, *model.parameters()], allow_unused=True))
            outs.append(y.float())
        assert outs[1].shape == (3, 3 if case == "cache" else 4, 16)
        torch.testing.assert_close(outs[1], outs[0], **tol)
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(b.float(), a.float(), **tol)
    with pytest.raises(ValueError, match="either last=True or rows"):
        model(x, last=True, rows=rows)
