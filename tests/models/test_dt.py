import pytest
import torch

from dtune.models import build_model, preset

S = 12


def make_batch(b=3, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, k, dtype=torch.bool)
    valid[0, :2] = False
    return {
        "states": torch.randn(b, k, S, generator=g), "actions": torch.rand(b, k, 6, generator=g) * 2 - 1,
        "action_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], dtype=torch.bool)[:b],
        "rtg": torch.randn(b, k, generator=g), "rewards": torch.randn(b, k, generator=g),
        "timesteps": torch.arange(k).repeat(b, 1), "valid": valid,
    }


LAMO = {"embedding": "mlp", "head": "mlp", "ln_before_timestep": True}  # LaMo's DT options


@pytest.fixture(params=["mddt", "dt", "dt-lamo"])
def model(request):
    torch.manual_seed(0)
    kind, extra = ("dt", LAMO) if request.param == "dt-lamo" else (request.param, {})
    return build_model(preset("tiny", kind, state_dim=S, max_timestep=64, **extra)).eval()


def test_loss_is_finite_and_trains(model):
    batch = make_batch()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(30):
        loss, metrics = model.train().loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert torch.isfinite(loss) and loss.item() < 0.7 * first


def test_outputs_causal_in_time(model):
    batch = make_batch()
    out = model(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["states"][:, 3:] += 1
    changed["actions"][:, 3:] *= -1
    changed["rtg"][:, 3:] += 1
    out2 = model(changed)
    torch.testing.assert_close(out[:, :3], out2[:, :3])
    assert not torch.allclose(out[:, 3:], out2[:, 3:])


def test_padded_action_dims_and_padding_steps_do_not_matter(model):
    batch = make_batch()
    out = model(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["actions"][0, :, 4:] = 0.7  # task 0 has 4 action dims
    changed["states"][0, :2] = 5.0  # left padding of row 0
    torch.testing.assert_close(model(changed)[0, 2:], out[0, 2:])


def rollout(model, act_dims, steps, use_cache, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(act_dims)
    pol = model.policy(torch.tensor(act_dims), use_cache=use_cache)
    acts = []
    for t in range(steps):
        a = pol.act(torch.randn(n, S, generator=g), torch.randn(n, generator=g), torch.full((n,), t))
        pol.observe(torch.randn(n, generator=g))
        acts.append(a)
    return torch.stack(acts), pol


def test_cache_equals_full_recompute(model):
    k = model.cfg.context_len
    with_cache, p1 = rollout(model, [4, 6, 1], k + 4, True)
    without, p2 = rollout(model, [4, 6, 1], k + 4, False)
    torch.testing.assert_close(with_cache, without, atol=1e-5, rtol=1e-5)
    assert p1.forwards == p2.forwards


def test_policy_matches_training_forward(model):
    """What the policy decodes equals the training forward on the same window."""
    k = model.cfg.context_len
    g = torch.Generator().manual_seed(1)
    act_dims = [4, 6]
    pol = model.policy(torch.tensor(act_dims))
    hist = {"states": [], "actions": [], "rtg": [], "rewards": [], "timesteps": []}
    for t in range(k + 2):
        s, r = torch.randn(2, S, generator=g), torch.randn(2, generator=g)
        a = pol.act(s, r, torch.full((2,), t))
        rew = torch.randn(2, generator=g)
        pol.observe(rew)
        for key, v in zip(hist, (s, a, r, rew, torch.full((2,), t))):
            hist[key].append(v)
    batch = {key: torch.stack(v[-k:], 1) for key, v in hist.items()}
    batch["valid"] = torch.ones(2, k, dtype=torch.bool)
    batch["action_mask"] = torch.arange(6)[None] < torch.tensor(act_dims)[:, None]
    out = model(batch)
    if model.cfg.kind == "mddt":
        pred = model.tokenizer.decode(out[:, -1].argmax(-1).masked_fill(~batch["action_mask"], model.tokenizer.pad_token))
    else:
        pred = out[:, -1].clamp(-1, 1) * batch["action_mask"]
    torch.testing.assert_close(pred, batch["actions"][:, -1], atol=1e-5, rtol=1e-5)


def test_training_forward_runs_the_final_block_for_the_read_tokens_only(model, monkeypatch):
    """The loss reads a few tokens per timestep (the s token of the classic DT, R and a^1..a^(A-1)
    of the MDDT), and only they go through the final block: outputs, loss and every gradient equal
    those of the full forward sliced afterwards, also with padding."""
    from dtune.models.backbone import Dropout

    for m in model.modules():  # dropout off (the two paths draw their masks in another order)
        if isinstance(m, Dropout):
            m.p = 0.0
        if hasattr(m, "attn_dropout"):
            m.attn_dropout = 0.0
    model.train()
    batch = make_batch()
    seen = []
    real = model.transformer.forward

    def spy(*args, **kw):
        seen.append(kw.get("rows"))
        return real(*args, **kw)

    monkeypatch.setattr(model.transformer, "forward", spy)
    sliced = model.backbone

    def full(tokens, valid, s, all_valid, routed, outputs, **kw):  # the whole sequence, sliced after
        return sliced(tokens, valid, s, all_valid, routed, **kw)[:, :, list(outputs)]

    runs = []
    for backbone in (full, sliced):
        monkeypatch.setattr(model, "backbone", backbone)
        model.zero_grad()
        out = model(batch)
        loss, _ = model.loss(batch)
        loss.backward()
        runs.append((out, loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (out_a, loss_a, grad_a), (out_b, loss_b, grad_b) = runs
    n = model.tokens_per_step
    read = 1 if model.cfg.kind == "dt" else model.cfg.act_dim
    assert seen[0] is None and len(seen[-1]) == read * batch["states"].shape[1] and read < n
    torch.testing.assert_close(out_b, out_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-5)
    assert len(grad_a) == len(grad_b)
    for a, b in zip(grad_a, grad_b):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_timestep_beyond_table_is_rejected(model):
    pol = model.policy(torch.tensor([2]))
    with pytest.raises(ValueError, match="timestep"):
        pol.act(torch.zeros(1, S), torch.zeros(1), torch.tensor([64]))


def test_mddt_autoregression_stops_at_the_largest_action_dim():
    torch.manual_seed(0)
    m = build_model(preset("tiny", "mddt", state_dim=S)).eval()
    _, pol = rollout(m, [4, 4], 3, True)
    assert pol.forwards == 3 * 4
    acts, _ = rollout(m, [2, 4], 2, True)
    assert torch.all(acts[:, 0, 2:] == 0) and torch.all(acts[:, 1, 4:] == 0)


def test_lamo_options_change_only_what_they_name():
    from dtune.models.dt import MLPEmbedding

    torch.manual_seed(0)
    classic = build_model(preset("tiny", "dt", state_dim=S))
    lamo = build_model(preset("tiny", "dt", state_dim=S, **LAMO))
    assert isinstance(lamo.embed_state, MLPEmbedding) and isinstance(classic.embed_state, torch.nn.Linear)
    assert not any(isinstance(m, torch.nn.Tanh) for m in lamo.head) and isinstance(classic.head[-1], torch.nn.Tanh)
    # the backbone (the part a language model initialises) is the same in both
    assert {k for k in classic.state_dict() if k.startswith("transformer.")} == \
        {k for k in lamo.state_dict() if k.startswith("transformer.")}
    with pytest.raises(ValueError, match="for `dt` models"):
        preset("tiny", "mddt", embedding="mlp")
    with pytest.raises(ValueError, match="unknown head"):
        preset("tiny", "dt", head="relu")
