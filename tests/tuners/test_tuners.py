"""One matrix over every registered method and variant, plus the method-specific checks."""

from __future__ import annotations

import json

import pytest
import torch

from dtune import tuners
from dtune.models import build_model, preset
from dtune.train import checkpoint as ckpt
from dtune.tuners.base import REGISTRY

ALL = tuners.METHODS + list(tuners.PRESETS)
BASE_TRAINING = {"full", "head", "last-k", "l2", "ewc"}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(preset("tiny"))


def make_batch(b=4, k=5, seed=1, valid_from=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, k, dtype=torch.bool)
    valid[0, :valid_from] = False  # left padding on the first sample
    return {"states": torch.randn(b, k, 154, generator=g), "actions": torch.rand(b, k, 6, generator=g) * 2 - 1,
            "action_mask": torch.ones(b, 6, dtype=torch.bool), "rtg": torch.randn(b, k, generator=g),
            "rewards": torch.randn(b, k, generator=g), "timesteps": torch.arange(k).repeat(b, 1), "valid": valid}


def train_steps(model, batches, lr=1e-2, task="reach-v3"):
    model.tuner.begin_task(task)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for batch in batches:
        loss, _ = model.loss(batch)
        aux = model.tuner.aux_loss()
        if aux is not None:
            loss = loss + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def base_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("tuner.")}


def expected_base_trainable(method, model):
    names = [n for n, _ in model.named_parameters() if not n.startswith("tuner.")]
    if method in ("full", "l2", "ewc"):
        return set(names)
    if method == "head":
        return {n for n in names if n.startswith("head.")}
    if method == "last-k":  # tiny has 2 blocks; default k = 1
        return {n for n in names if n.startswith(("transformer.h.1.", "transformer.ln_f.", "head."))}
    return set()


@pytest.mark.parametrize("name", ALL)
def test_only_the_intended_parameters_train(name):
    model = tiny_model()
    before = base_state(model)
    method, _ = tuners.resolve_method(name)
    tuners.attach(model, name)
    trainable = set(tuners.trainable_names(model))
    expected = expected_base_trainable(method, model)
    assert {n for n in trainable if not n.startswith("tuner.")} == expected
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("tuner."))
    assert REGISTRY[method].trains_base == (method in BASE_TRAINING)
    tuner_params = [n for n in trainable if n.startswith("tuner.")]
    assert (len(tuner_params) > 0) == (method not in BASE_TRAINING)
    tuner_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("tuner.")}
    train_steps(model, [make_batch(seed=s) for s in range(3)])
    after = base_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_changed = changed - expected
    assert not frozen_changed, f"{name} changed frozen base tensors {sorted(frozen_changed)[:3]}"
    if method in BASE_TRAINING:
        assert changed, f"{name} trained nothing"
    else:  # base weights stay bit-identical; the method's own parameters moved
        assert not changed
        assert any(not torch.equal(p, tuner_before[n]) for n, p in model.named_parameters() if n in tuner_before)


@pytest.mark.parametrize("name", ALL)
def test_identity_methods_leave_outputs_unchanged_before_training(name):
    model = tiny_model().eval()
    batch = make_batch(valid_from=2)
    with torch.no_grad():
        y0 = model(batch)
    tuner = tuners.attach(model, name)
    tuner.begin_task("reach-v3")
    with torch.no_grad():
        y1 = model(batch)
    if tuner.identity_at_init:
        assert torch.equal(y0, y1)
    else:  # prompts and prefixes change the computation from the start
        assert not torch.equal(y0, y1)


def test_identity_at_init_is_declared_as_the_issue_says():
    for name in ("lora", "ia3", "adapter", "l2m"):
        assert REGISTRY[name].identity_at_init
    for name in ("prompt", "prefix", "ptuning-v2", "l2p"):
        assert not REGISTRY[name].identity_at_init


def write_base_run(path, model, tasks=("reach-v3",)):
    """A run directory as `dtune pretrain` writes it, for ``model``."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"model": model.cfg.to_dict(), "train": {"model": "tiny"}, "tasks": list(tasks),
              "task_info": {t: {"return_max": 100.0} for t in tasks}, "resolved": {}}
    (path / ckpt.CONFIG).write_text(json.dumps(config))
    ckpt.save_weights(model, path, 0)
    return path


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    model = tiny_model()
    base = write_base_run(tmp_path / "base", model)
    tuners.attach(model, name)
    train_steps(model, [make_batch(seed=s) for s in range(2)])
    if getattr(model.tuner.config, "pretrain_keys", False):
        model.tuner.fit_pretrain_keys([torch.randn(5, 32), torch.randn(7, 32)])
    tuners.save_adapter(tmp_path / "ad", model, {"base_digest": tuners.base_digest(base), "tasks": ["door-open-v3"],
                                                 "task_info": {"door-open-v3": {"return_max": 5.0}}})
    saved = set(json.loads((tmp_path / "ad" / tuners.ADAPTER_CONFIG).read_text())["tensors"])
    if name not in ("full", "l2", "ewc"):  # only what the method trained
        assert saved < set(model.state_dict())
    loaded, config, doc = tuners.load_adapted(base, tmp_path / "ad")
    assert config["task_info"]["door-open-v3"]["return_max"] == 5.0 and doc["tasks"] == ["door-open-v3"]
    batch = make_batch(seed=9, valid_from=1)
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
        if model.tuner.routes:
            assert torch.equal(model.tuner.selection(), loaded.tuner.selection())


@pytest.mark.parametrize("name", ALL)
def test_policy_with_cache_matches_recompute(name):
    """Incremental decoding with any tuner (prompts cached once, pools re-selected as the window
    slides) gives the actions of a full recompute."""
    model = tiny_model()
    tuners.attach(model, name)
    train_steps(model, [make_batch(seed=s) for s in range(2)])
    g = torch.Generator().manual_seed(3)
    states = torch.randn(8, 3, 154, generator=g)
    runs = []
    for use_cache in (True, False):
        pol = model.policy([4, 4, 6], use_cache=use_cache, tasks=["reach-v3", "door-open-v3", "reach-v3"])
        acts = []
        for t in range(8):  # context 5: the window slides three times
            acts.append(pol.act(states[t], torch.full((3,), 1.0 - 0.1 * t), torch.full((3,), t)))
            pol.observe(torch.full((3,), 0.1))
        runs.append(torch.stack(acts))
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


def test_lora_matches_peft_on_the_same_module():
    peft = pytest.importorskip("peft")
    model = tiny_model()
    tuners.attach(model, "lora", tuners.make_config("lora", r=4, lora_alpha=8, target_modules=["q", "v"]))
    for layer in model.tuner.layers.values():  # a trained-looking update (B starts at zero)
        torch.nn.init.normal_(layer.lora_B.weight)
    attn = model.transformer.h[0].attn
    import copy

    reference = copy.deepcopy(attn)
    reference._forward_hooks.clear()
    for m in reference.modules():
        m._forward_hooks.clear()
    reference = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"]), reference)
    for name in ("q", "v"):
        ours = model.tuner.layers[f"h_0_attn_{name}"]
        theirs = getattr(reference, name)
        theirs.lora_A["default"].weight.data.copy_(ours.lora_A.weight)
        theirs.lora_B["default"].weight.data.copy_(ours.lora_B.weight)
    x = torch.randn(2, 7, 32)
    mask = torch.ones(1, 1, 7, 7, dtype=torch.bool).tril()
    with torch.no_grad():
        assert torch.allclose(attn.eval()(x, mask, 0), reference.eval()(x, mask, 0), atol=1e-6)
    # and peft's default initialisation gives the same starting point: an update of zero
    fresh = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q"]), copy.deepcopy(reference))
    assert torch.count_nonzero(fresh.q.lora_B["default"].weight) == 0


def test_l2m_picks_different_keys_for_two_tasks():
    """Two toy tasks whose states differ: after training on one and then the other (the second
    avoiding the first one's key through the selection-count penalty), inputs of each task pick
    their own entry at inference."""
    model = tiny_model()
    tuners.attach(model, "l2m", tuners.make_config("l2m", pool_size=6))
    centre = torch.randn(2, 154, generator=torch.Generator().manual_seed(5))
    a = [make_batch(seed=s) for s in range(40)]
    b = [make_batch(seed=100 + s) for s in range(40)]
    for task, batches in enumerate((a, b)):  # each task's states lie around its own centre
        for batch in batches:
            batch["states"] = centre[task] + 0.3 * batch["states"]
    train_steps(model, a, lr=5e-2, task="task-a")
    model.tuner.end_task()
    train_steps(model, b, lr=5e-2, task="task-b")
    model.tuner.end_task()
    with torch.no_grad():
        model(a[0])
        sel_a = model.tuner.selection().clone()
        model(b[0])
        sel_b = model.tuner.selection().clone()
    assert sel_a.unique().numel() == 1 and sel_b.unique().numel() == 1
    assert sel_a[0] != sel_b[0]
    assert model.tuner.pool.prev_counts[sel_a[0]] > 0 and model.tuner.pool.prev_counts[sel_b[0]] > 0


def test_l2m_oracle_routes_by_task_and_leaves_unknown_tasks_unmodulated():
    model = tiny_model()
    tuners.attach(model, "l2m-oracle")
    train_steps(model, [make_batch(seed=s) for s in range(3)], task="door-open-v3")
    pol = model.policy([4, 4], tasks=["door-open-v3", "reach-v3"])
    pol.act(torch.randn(2, 154), torch.ones(2), torch.zeros(2, dtype=torch.long))
    assert model.tuner.selection().tolist() == [0, -1]


def test_l2m_pretrain_keys_select_no_modulation():
    model = tiny_model()
    tuners.attach(model, "l2m-pretrain-keys")
    batch = make_batch()
    q = model.embed_state(batch["states"]).mean(1).detach()
    model.tuner.fit_pretrain_keys([q])
    model.tuner.begin_task("x")
    model.eval()
    with torch.no_grad():
        model(batch)
    assert (model.tuner.selection() == -1).all()
    model.train()  # while training the pre-training keys never compete
    model(batch)
    assert (model.tuner.selection() >= 0).all()


def test_penalties_are_zero_at_the_anchor_and_grow_away_from_it():
    from dtune.tuners.penalty import Anchor

    model = tiny_model()
    tuners.attach(model, "ewc")
    anchor = Anchor(model, l2_lambda=1.0, ewc_lambda=400.0)
    anchor.consolidate(model, [make_batch(seed=s) for s in range(3)], lambda b: model.loss(b)[0])
    assert set(anchor.fisher) == set(tuners.trainable_names(model))
    assert all((f >= 0).all() for f in anchor.fisher.values()) and any(f.sum() > 0 for f in anchor.fisher.values())
    assert float(anchor.penalty(model)) == 0.0
    with torch.no_grad():
        model.head.weight.add_(0.1)
    assert float(anchor.penalty(model)) > 0.0
    with pytest.raises(ValueError, match="EWC needs batches"):
        Anchor(model, ewc_lambda=1.0).consolidate(model)


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Did you mean lora"):
        tuners.make_config("lorra")
    with pytest.raises(ValueError, match="has no option"):
        tuners.make_config("lora", num_virtual_tokens=3)
    with pytest.raises(ValueError, match="match no module"):
        tuners.attach(tiny_model(), "lora", tuners.make_config("lora", target_modules=["query"]))
    with pytest.raises(ValueError, match="oracle"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", oracle=True, pretrain_keys=True))
    with pytest.raises(ValueError, match="num_layers"):
        tuners.attach(tiny_model(), "last-k", tuners.make_config("last-k", num_layers=5))
    with pytest.raises(ValueError, match="modulation"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", modulation="dora"))
    model = tiny_model()
    tuners.attach(model, "lora")
    with pytest.raises(ValueError, match="already has"):
        tuners.attach(model, "ia3")
    # an adapter trained on another base checkpoint is refused
    base_a = write_base_run(tmp_path / "a", tiny_model(0))
    base_b = write_base_run(tmp_path / "b", tiny_model(1))
    tuners.save_adapter(tmp_path / "ad", model, {"base_digest": tuners.base_digest(base_a), "base_checkpoint": str(base_a),
                                                 "tasks": ["reach-v3"]})
    tuners.load_adapted(base_a, tmp_path / "ad")
    with pytest.raises(tuners.AdapterError, match="another base checkpoint"):
        tuners.load_adapted(base_b, tmp_path / "ad")
    with pytest.raises(tuners.AdapterError, match="no adapter"):
        tuners.load_adapted(base_a, tmp_path / "nothing")
