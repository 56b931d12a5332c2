"""One matrix over every registered method and variant, plus the method-specific checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dtune import tuners
from dtune.models import build_model, preset
from dtune.models import io as ckpt
from dtune.tuners.base import REGISTRY

ALL = tuners.METHODS + list(tuners.PRESETS)
BASE_TRAINING = {"full", "head", "last-k", "l2", "ewc"}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(preset("tiny"))


def make_batch(b=4, k=5, seed=1, valid_from=0, state_dim=154, act_dim=6):
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(b, k, dtype=torch.bool)
    valid[0, :valid_from] = False  # left padding on the first sample
    return {"states": torch.randn(b, k, state_dim, generator=g), "actions": torch.rand(b, k, act_dim, generator=g) * 2 - 1,
            "action_mask": torch.ones(b, act_dim, dtype=torch.bool), "rtg": torch.randn(b, k, generator=g),
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


def test_lora_bias_lora_only_trains_the_targeted_biases_like_peft():
    """peft's `bias="lora_only"`: the targeted layers' biases train (in place, saved with the
    adapter), no other base weight does."""
    peft = pytest.importorskip("peft")
    model = tiny_model()
    tuners.attach(model, "lora", tuners.make_config("lora", r=4, target_modules=["q", "v"], bias="lora_only"))
    ours = {n for n in tuners.trainable_names(model) if not n.startswith("tuner.")}
    assert ours and all(n.endswith((".q.bias", ".v.bias")) for n in ours)
    attn = copy.deepcopy(tiny_model().transformer.h[0].attn)
    reference = peft.inject_adapter_in_model(peft.LoraConfig(r=4, target_modules=["q", "v"], bias="lora_only"), attn)
    theirs = {n.replace(".base_layer", "") for n, p in reference.named_parameters() if p.requires_grad and "lora_" not in n}
    assert theirs == {n.split("attn.", 1)[1] for n in ours if ".h.0." in n}
    assert ours <= set(tuners.adapter_state(model))
    plain = tiny_model()
    tuners.attach(plain, "lora", tuners.make_config("lora", r=4, target_modules=["q", "v"]))
    assert all(n.startswith("tuner.") for n in tuners.trainable_names(plain))
    with pytest.raises(ValueError, match="lora_only"):
        tuners.make_config("lora", bias="all")


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


def test_l2m_lock_share_keeps_an_earlier_tasks_keys_and_entries():
    """With `lock_share`, the entries task A used are locked at its end: task B, whose states are
    A's (so without locks it would pull A's key and retrain A's entry), trains other entries, and
    A's keys and modulators stay bit-identical; at evaluation A's entries still compete."""
    model = tiny_model()
    tuners.attach(model, "l2m", tuners.make_config("l2m", pool_size=4, lock_share=0.2, count_penalty=0.0))
    a = [make_batch(seed=s) for s in range(6)]
    train_steps(model, a, lr=5e-2, task="task-a")
    used = model.tuner.pool.counts.clone()
    model.tuner.end_task()
    locked = model.tuner.pool.locked.clone()
    assert locked.any() and torch.equal(locked, used / used.sum() >= 0.2)
    keys = model.tuner.pool.keys.detach().clone()
    mods = {n: p.detach().clone() for n, p in model.tuner.mods.named_parameters()}
    train_steps(model, [make_batch(seed=s) for s in range(6)], lr=5e-2, task="task-b")  # the same states
    assert model.tuner.pool.counts[locked].sum() == 0 and model.tuner.pool.counts.sum() > 0
    assert torch.equal(model.tuner.pool.keys[locked], keys[locked])
    for n, p in model.tuner.mods.named_parameters():
        assert torch.equal(p[locked], mods[n][locked]), n
    with torch.no_grad():  # evaluation: every entry competes
        model(a[0])
    assert bool(locked[model.tuner.selection()].any())


def test_pool_locks_leave_entries_free_and_old_adapters_load(tmp_path):
    from dtune.tuners.pool import KeyPool

    pool = KeyPool(3, 4)
    pool.counts.copy_(torch.tensor([5.0, 3.0, 2.0]))
    pool.end_task(lock_share=0.1, keep_free=1)  # all three qualify; the least used stays free
    assert pool.locked.tolist() == [True, True, False] and pool.prev_counts.tolist() == [5, 3, 2]
    pool.counts.copy_(torch.tensor([0.0, 0.0, 4.0]))
    pool.end_task(lock_share=0.1, keep_free=1)
    assert pool.locked.tolist() == [True, True, False]
    pool.train()
    assert pool.choose(torch.randn(8, 4), 1, 0.0).unique().tolist() == [2]
    with pytest.raises(ValueError, match="unlocked entries"):
        pool.choose(torch.randn(8, 4), 2, 0.0)
    with pytest.raises(ValueError, match="lock_share"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", lock_share=1.5))
    # an adapter saved before pools had locks: nothing locked
    for method in ("l2m", "l2p"):
        model = tiny_model()
        tuners.attach(model, method)
        tuners.save_adapter(tmp_path / method, model, {})
        file = tmp_path / method / tuners.ADAPTER_WEIGHTS
        tensors = {k: v for k, v in load_file(str(file)).items() if not k.endswith("pool.locked")}
        save_file(tensors, str(file))
        loaded = tiny_model()
        tuners.apply_adapter(loaded, tmp_path / method)
        assert not loaded.tuner.pool.locked.any()


@pytest.mark.parametrize("kind", ["lora", "linear"])
def test_l2m_entries_on_a_mixed_batch_equal_each_sample_on_its_own_entry(kind):
    """An evaluation batch mixes tasks: every sample gets what its own entry gives it alone (nothing
    for -1, no modulation), forward and backward."""
    from dtune.tuners.l2m import PoolDelta, PoolLora

    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6)
    pool = PoolLora(base, 4, 2, 4.0, 0.0) if kind == "lora" else PoolDelta(base, 4)
    with torch.no_grad():
        for p in pool.parameters():
            p.normal_()
    x = torch.randn(7, 3, 8)
    idx = torch.tensor([2, -1, 0, 2, 3, -1, 0])
    run = (lambda xs, i: pool(xs, i)) if kind == "lora" else (lambda xs, i: pool(xs, i, torch.float32))
    mixed = run(x, idx)
    alone = torch.stack([run(x[b:b + 1], idx[b:b + 1])[0] if idx[b] >= 0 else torch.zeros(3, 6) for b in range(7)])
    assert torch.allclose(mixed, alone, atol=1e-5)
    grads = torch.autograd.grad(mixed.square().sum(), list(pool.parameters()))
    ref = torch.autograd.grad(alone.square().sum(), list(pool.parameters()))
    assert all(torch.allclose(g, r, atol=1e-4) for g, r in zip(grads, ref))
    assert all(g[1].abs().sum() == 0 for g in grads)  # entry 1: no sample chose it


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


def perturb_trainable(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", ALL)
def test_a_deepcopied_adapted_model_is_independent_of_the_original(name, tmp_path):
    """copy.deepcopy(adapted model): the copy's hooks use the copy's tuner and modules, so training
    or changing the copy leaves the original alone, detaching one leaves the other adapted, and
    both save and load their own adapters (pickling works the same way)."""
    import pickle

    method, _ = tuners.resolve_method(name)
    model = tiny_model()
    base = write_base_run(tmp_path / "base", model)
    batch = make_batch(seed=9, valid_from=1)
    with torch.no_grad():
        y_base = model.eval()(batch)
    tuners.attach(model, name)
    train_steps(model, [make_batch(seed=0)])
    with torch.no_grad():
        y = model(batch)
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}

    twin = copy.deepcopy(model)
    if method == "ptuning-v2":
        assert all(a is b for a, b in zip(twin.tuner._blocks, twin.transformer.h))
    with torch.no_grad():
        assert torch.equal(twin(batch), y)
    perturb_trainable(twin)
    with torch.no_grad():
        y_twin = twin(batch)
        assert not torch.equal(y_twin, y), "changing the copy's parameters did not change the copy"
        assert torch.equal(model(batch), y), "changing the copy changed the original"
    train_steps(twin, [make_batch(seed=s) for s in (1, 2)])
    with torch.no_grad():
        y_twin = twin(batch)
        assert not torch.equal(y_twin, y)
        assert torch.equal(model(batch), y), "training the copy changed the original"

    meta = {"base_digest": tuners.base_digest(base), "tasks": ["reach-v3"]}
    tuners.save_adapter(tmp_path / "a", model, meta)
    tuners.save_adapter(tmp_path / "b", twin, meta)
    with torch.no_grad():
        assert torch.equal(tuners.load_adapted(base, tmp_path / "a")[0](batch), y)
        assert torch.equal(tuners.load_adapted(base, tmp_path / "b")[0](batch), y_twin)

    tuners.detach(twin)
    assert twin.tuner is None
    assert hooks == {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}
    with torch.no_grad():
        assert torch.equal(model(batch), y), "detaching the copy changed the original"
        if method not in BASE_TRAINING:  # the copy is the base model again
            assert torch.equal(twin(batch), y_base)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in twin.modules())

    other = copy.deepcopy(model)
    tuners.detach(model)  # and the other way round
    with torch.no_grad():
        assert torch.equal(other(batch), y)
    pickled = pickle.loads(pickle.dumps(other))
    with torch.no_grad():
        assert torch.equal(pickled(batch), y)


def test_hooks_must_be_methods_of_the_tuner():
    model = tiny_model()
    tuner = tuners.attach(model, "lora")
    with pytest.raises(TypeError, match="bound method"):
        tuner.hook(model.transformer.h[0].attn.k, lambda m, args, out: out)


SAVED = ["embed_state", "ln_1"]  # a top-level module and a suffix of one module per block


@pytest.mark.parametrize("name", ALL)
def test_modules_to_save_train_with_every_method_and_travel_in_the_adapter(name, tmp_path):
    """peft's modules_to_save: whole base modules train (in place) next to any method, count as
    trainable, are saved in the adapter and restored by loading it."""
    method, _ = tuners.resolve_method(name)
    model = tiny_model()
    base = write_base_run(tmp_path / "base", model)
    before = base_state(model)
    # an L2M entry holding its own embed_state would clash with training it in place (tested apart)
    own = {"entry_modules": ["head"]} if getattr(tuners.make_config(name), "entry_modules", None) else {}
    tuners.attach(model, name, tuners.make_config(name, modules_to_save=SAVED, **own))
    saved = {n for n, _ in model.named_parameters()
             if n.startswith(("embed_state.", "transformer.h.0.ln_1.", "transformer.h.1.ln_1."))}
    assert len(saved) == 6
    expected = expected_base_trainable(method, model) | saved
    trainable = set(tuners.trainable_names(model))
    assert {n for n in trainable if not n.startswith("tuner.")} == expected
    params = dict(model.named_parameters())
    counts = tuners.parameter_counts(model)
    assert counts["trainable"] == sum(p.numel() for n, p in params.items() if n.startswith("tuner.") or n in expected)
    assert counts["per_task"] >= sum(params[n].numel() for n in saved)
    train_steps(model, [make_batch(seed=s) for s in range(2)])
    after = base_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= expected and saved <= changed  # in place, nothing else of the base moved
    tuners.save_adapter(tmp_path / "ad", model, {"base_digest": tuners.base_digest(base), "tasks": ["reach-v3"]})
    doc = json.loads((tmp_path / "ad" / tuners.ADAPTER_CONFIG).read_text())
    assert saved <= set(doc["tensors"]) and doc["config"]["modules_to_save"] == SAVED
    loaded, _, _ = tuners.load_adapted(base, tmp_path / "ad")  # the checkpoint's embed_state, then the adapter's
    assert set(tuners.trainable_names(loaded)) == trainable
    batch = make_batch(seed=9, valid_from=1)
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    assert all(torch.equal(params[n], dict(loaded.named_parameters())[n]) for n in saved)


def test_modules_to_save_that_match_nothing_are_refused_and_leave_the_model_alone():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"'embed_states' matches no module.*embed_state.*head"):
        tuners.attach(model, "lora", tuners.make_config("lora", modules_to_save=["head", "embed_states"]))
    assert model.tuner is None and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="matches no module"):  # no parameters: nothing to train
        tuners.attach(model, "prompt", tuners.make_config("prompt", modules_to_save=["act"]))
    tuners.attach(model, "lora", tuners.make_config("lora", modules_to_save=["head"]))  # still attachable


@pytest.mark.parametrize("name, key, ff", [("lora", "lora", None), ("ia3", "ia3", ["proj"]),
                                         ("adapter", "adapter", None), ("l2m", "lora", None),
                                         ("l2m-ia3", "ia3", ["proj"])])
def test_default_target_modules_come_from_the_backbone_family_and_are_saved_resolved(name, key, ff, tmp_path):
    from dtune.tuners.base import DEFAULT_FEEDFORWARD_MODULES, DEFAULT_TARGET_MODULES

    # the lists every config hard-coded before (the committed adapters of results/ rely on them)
    assert DEFAULT_TARGET_MODULES["gpt"] == {"lora": ["q", "v", "fc", "proj"], "ia3": ["k", "v", "proj"],
                                             "adapter": ["attn", "mlp"]}
    assert DEFAULT_FEEDFORWARD_MODULES["gpt"] == ["proj"]
    targets = DEFAULT_TARGET_MODULES["gpt"][key]
    config = tuners.make_config(name)
    assert config.target_modules is None
    model = tiny_model()
    assert type(model.transformer).family == "gpt"
    base = write_base_run(tmp_path / "base", model)
    tuners.attach(model, name, config)
    assert config.target_modules is None  # the caller's config is left as given
    assert model.tuner.config.target_modules == targets
    assert getattr(model.tuner.config, "feedforward_modules", None) == ff
    tuners.save_adapter(tmp_path / "ad", model, {"base_digest": tuners.base_digest(base)})
    doc = json.loads((tmp_path / "ad" / tuners.ADAPTER_CONFIG).read_text())
    assert doc["config"]["target_modules"] == targets
    loaded, _, _ = tuners.load_adapted(base, tmp_path / "ad")
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_default_target_modules_of_another_backbone_family(monkeypatch):
    from dtune.tuners import base

    model = tiny_model()
    model.transformer.family = "t5"
    with pytest.raises(ValueError, match="no default target_modules .*'t5'.*pass target_modules explicitly"):
        tuners.attach(model, "lora")
    assert model.tuner is None
    tuners.attach(model, "lora", tuners.make_config("lora", target_modules=["k"]))  # explicit lists need no table
    assert sorted(model.tuner.layers) == ["h_0_attn_k", "h_1_attn_k"]
    tuners.detach(model)
    tuners.attach(model, "prompt")  # methods without target modules do not care
    tuners.detach(model)
    monkeypatch.setitem(base.DEFAULT_TARGET_MODULES, "t5", {"lora": ["out"]})
    tuners.attach(model, "lora")
    assert model.tuner.config.target_modules == ["out"]
    assert sorted(model.tuner.layers) == ["h_0_attn_out", "h_1_attn_out"]


RESULTS = Path(__file__).resolve().parents[2] / "results"
COMMITTED = sorted(RESULTS.glob("adapt_cw10/before_fixes/runs/*/*/adapter.json")) + \
    sorted(RESULTS.glob("continual_cw10/runs/*/adapter/adapter.json"))
MT40 = RESULTS / "mt40_small" / "checkpoint"


@pytest.mark.skipif(not COMMITTED or not MT40.exists(), reason="no committed adapters / base checkpoint")
def test_committed_adapter_configs_give_the_tensors_they_list():
    """adapter.json files written before target_modules defaulted to None: their configs (explicit
    lists, or None for l2m) still attach to the exact tensors they saved."""
    base_model, _, _ = tuners.load_adapted(MT40, None)
    for path in COMMITTED:
        doc = json.loads(path.read_text())
        model = copy.deepcopy(base_model)
        tuners.attach(model, doc["method"], tuners.config_from_dict(doc["method"], doc["config"]))
        newer = {f"tuner.{k}" for k in model.tuner.state_defaults()} | set(tuners.NORMALISER)  # added since
        assert sorted(set(tuners.adapter_state(model)) - newer) == doc["tensors"], path


@pytest.mark.skipif(not COMMITTED or not MT40.exists(), reason="no committed adapters / base checkpoint")
@pytest.mark.parametrize("run", sorted({p.parent.name for p in COMMITTED if p.parent.parent.name == "hammer-v3"}))
def test_committed_adapters_load_onto_the_committed_checkpoint(run, tmp_path):
    """Only adapter.json is committed: the weights are made here (the committed config attached and
    its parameters moved), then ``load_adapted`` reads them with the committed adapter.json."""
    source = RESULTS / "adapt_cw10" / "before_fixes" / "runs" / "hammer-v3" / run
    doc = json.loads((source / tuners.ADAPTER_CONFIG).read_text())
    model, _, _ = tuners.load_adapted(MT40, None)
    tuners.attach(model, doc["method"], tuners.config_from_dict(doc["method"], doc["config"]))
    model.tuner.load_extra_state(doc["state"])
    perturb_trainable(model, seed=3)
    if getattr(model.tuner.config, "pretrain_keys", False):
        model.tuner.fit_pretrain_keys([torch.randn(5, 128), torch.randn(7, 128)])
    out = tmp_path / "adapter"
    out.mkdir()
    (out / tuners.ADAPTER_CONFIG).write_text((source / tuners.ADAPTER_CONFIG).read_text())
    newer = {f"tuner.{k}" for k in model.tuner.state_defaults()} | set(tuners.NORMALISER)  # filled in: not in
    # adapters of that time (the state statistics: the base's)
    tensors = {k: v.detach().contiguous() for k, v in tuners.adapter_state(model).items() if k not in newer}
    assert sorted(tensors) == doc["tensors"]
    save_file(tensors, str(out / tuners.ADAPTER_WEIGHTS))
    loaded, config, loaded_doc = tuners.load_adapted(MT40, out)
    assert loaded_doc["method"] == doc["method"] and "hammer-v3" in config["task_info"]
    batch = make_batch(seed=9, valid_from=1)
    model.eval()
    with torch.no_grad():
        y = loaded(batch)
        assert y.shape == (4, 5, 6, 64) and torch.isfinite(y).all()
        assert torch.equal(y, model(batch))


POOL_OPTIONS = {"l2m": {"pool_size": 8}, "l2p": {"pool_size": 8, "top_k": 2}}


@pytest.mark.parametrize("name", ["l2m", "l2p"])
def test_training_and_evaluation_route_every_window_alike(name):
    """By default (the L2M reference code's routing) a window chooses its pool entries on its own,
    while training and at evaluation alike: the same windows get the same entries."""
    model = tiny_model()
    tuners.attach(model, name, tuners.make_config(name, **POOL_OPTIONS[name]))
    model.tuner.begin_task("reach-v3")
    batch = make_batch(b=16, seed=3)
    model.eval()
    with torch.no_grad():
        model(batch)
    evaluated = model.tuner.selection().clone()
    assert evaluated.reshape(16, -1)[:, 0].unique().numel() > 1  # the windows do not all prefer one entry
    model.train()
    model.loss(batch)
    assert torch.equal(model.tuner.selection(), evaluated)


@pytest.mark.parametrize("name", ["l2m", "l2p"])
def test_batchwise_routing_votes_while_training_and_at_evaluation(name):
    """`batchwise=True`: the windows of one task share the entries most of them choose, in a
    training batch (one task) and among the evaluation windows of each task."""
    model = tiny_model()
    tuners.attach(model, name, tuners.make_config(name, batchwise=True, **POOL_OPTIONS[name]))
    model.tuner.begin_task("reach-v3")
    batch = make_batch(b=16, seed=3)
    model.train()
    model.loss(batch)
    trained = model.tuner.selection().clone()
    assert (trained == trained[0]).all()
    model.eval()
    with torch.no_grad():
        model(batch)  # no task names: the batch is one task's windows, as in training
    assert torch.equal(model.tuner.selection(), trained)
    g = torch.Generator().manual_seed(4)
    centre = 3 * torch.randn(2, 154, generator=g)
    states = centre[[0, 1, 0, 1, 0, 1]] + torch.randn(6, 154, generator=g)
    pol = model.policy([4] * 6, tasks=["a", "b", "a", "b", "a", "b"])
    pol.act(states, torch.ones(6), torch.zeros(6, dtype=torch.long))
    sel = model.tuner.selection()
    assert (sel[0::2] == sel[0]).all() and (sel[1::2] == sel[1]).all()  # one choice per task


@pytest.mark.parametrize("name", ["l2m", "l2p"])
def test_a_bf16_training_step_routes_near_ties_like_fp32_evaluation(name):
    """The query and its key similarities are fp32 under bf16 autocast too: windows whose two
    best keys nearly tie choose the same entry while training (bf16) as at evaluation (fp32)."""
    from dtune.tuners.base import query_from

    model = tiny_model()
    extra = {"top_k": 1} if name == "l2p" else {}
    tuners.attach(model, name, tuners.make_config(name, pool_size=2, batchwise=False, **extra))
    model.tuner.begin_task("reach-v3")
    batch = make_batch(b=64, seed=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        q = query_from(model.embed_state(batch["states"]), batch["valid"])
        k0 = q.mean(0) + q.std(0) * torch.randn(q.shape[1], generator=g)
        model.tuner.pool.keys.copy_(torch.stack([k0, k0 + 2e-3 * k0.norm() * torch.randn(q.shape[1], generator=g)]))
    model.eval()
    with torch.no_grad():
        model(batch)
    evaluated = model.tuner.selection().clone()
    assert 0 < int((evaluated == 0).sum()) < 64  # near-ties that go both ways
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(batch)
    assert torch.equal(model.tuner.selection(), evaluated)


def _train_with_adamw(model, batches, task, weight_decay=0.1):
    from dtune.train.optim import make_optimizer

    model.tuner.begin_task(task)
    model.train()
    opt = make_optimizer(model, 1e-2, weight_decay)
    for batch in batches:
        loss, _ = model.loss(batch)
        aux = model.tuner.aux_loss()
        if aux is not None:
            loss = loss + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.tuner.end_task()
    model.eval()


@pytest.mark.parametrize("modulation", ["lora", "ia3"])
def test_weight_decay_leaves_the_pool_entries_of_earlier_tasks_alone_l2m(modulation):
    """Training task B (entry 1) with AdamW and weight decay leaves task A's entry 0 bit-identical."""
    model = tiny_model()
    tuners.attach(model, "l2m", tuners.make_config("l2m", oracle=True, modulation=modulation, pool_size=3))
    _train_with_adamw(model, [make_batch(seed=s) for s in range(3)], "task-a")
    entries = {n: p.detach().clone() for n, p in model.tuner.mods.named_parameters()}
    assert any(not torch.equal(e[0], e[1]) for e in entries.values())  # task A trained its entry
    _train_with_adamw(model, [make_batch(seed=10 + s) for s in range(5)], "task-b")
    for n, p in model.tuner.mods.named_parameters():
        assert torch.equal(p[0], entries[n][0]), f"{n}: task A's entry changed while training task B"
        assert torch.equal(p[2], entries[n][2]), f"{n}: an unused entry changed"
    assert any(not torch.equal(p[1], entries[n][1]) for n, p in model.tuner.mods.named_parameters())


def test_weight_decay_leaves_unselected_prompts_of_the_pool_alone_l2p():
    model = tiny_model()
    tuners.attach(model, "l2p", tuners.make_config("l2p", pool_size=6, top_k=2))
    centre = torch.randn(154, generator=torch.Generator().manual_seed(6))
    batches = [make_batch(seed=s) for s in range(5)]
    for b in batches:
        b["states"] = centre + 0.1 * b["states"]
    with torch.no_grad():
        q = model.embed_state(batches[0]["states"]).mean((0, 1))
        model.tuner.pool.keys.copy_(torch.stack([q, q, -q, -q, -q, -q]))  # task B's windows choose entries 0, 1
    before = {n: p.detach().clone() for n, p in model.tuner.named_parameters()}
    _train_with_adamw(model, batches, "task-b")
    assert model.tuner.pool.prev_counts[2:].sum() == 0 and model.tuner.pool.prev_counts[:2].sum() > 0
    assert torch.equal(model.tuner.prompts[2:], before["prompts"][2:])
    assert torch.equal(model.tuner.pool.keys[2:], before["pool.keys"][2:])
    assert not torch.equal(model.tuner.prompts[:2], before["prompts"][:2])


def test_ewc_modes_sum_or_replace_the_fishers_of_successive_tasks():
    """"online" adds each consolidation's Fisher to the sum; "separate" (the reference code's)
    keeps only the last one's. Two consolidations on the same batches: 2F against F."""
    from dtune.tuners.penalty import Anchor

    model = tiny_model()
    tuners.attach(model, "ewc")
    batches = [make_batch(seed=s) for s in range(2)]
    fishers = {}
    for mode in ("online", "separate"):
        anchor = Anchor(model, ewc_lambda=1.0, mode=mode)
        for _ in range(2):
            anchor.consolidate(model, batches, lambda b: model.loss(b)[0])
        fishers[mode] = anchor.fisher
    once = Anchor(model, ewc_lambda=1.0)
    once.consolidate(model, batches, lambda b: model.loss(b)[0])
    for n, f in once.fisher.items():
        assert torch.allclose(fishers["separate"][n], f) and torch.allclose(fishers["online"][n], 2 * f)
    no_fisher = Anchor(model, l2_lambda=1.0, ewc_lambda=1.0, mode="separate")
    no_fisher.consolidate(model, with_fisher=False)  # the anchor only: L2 pulls, EWC not yet
    assert no_fisher.anchor and not no_fisher.fisher
    with pytest.raises(ValueError, match="'online' or 'separate'"):
        Anchor(model, ewc_lambda=1.0, mode="sum")
    with pytest.raises(ValueError, match="'online' or 'separate'"):
        tuners.make_config("ewc").__class__(ewc_mode="sum")


def test_ewc_penalty_has_the_reference_codes_strength():
    """The reference code's EWC penalty is `lambda * sum F (w - w0)^2` (no 1/2), so lambda 400
    means what it means there; L2 stays `lambda/2 * sum (w - w0)^2`."""
    from dtune.tuners.penalty import Anchor

    model = tiny_model()
    tuners.attach(model, "ewc")
    anchor = Anchor(model, ewc_lambda=400.0)
    anchor.consolidate(model, [make_batch(seed=s) for s in range(2)], lambda b: model.loss(b)[0])
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.head.weight.add_(0.1)
    params = dict(model.named_parameters())
    expected = sum((anchor.fisher[n] * (params[n] - start[n]) ** 2).sum() for n in anchor.fisher)
    assert float(anchor.penalty(model)) == pytest.approx(400.0 * float(expected), rel=1e-5)
    l2 = Anchor(model, l2_lambda=2.0)
    l2.anchor = start
    assert float(l2.penalty(model)) == pytest.approx(0.5 * 2.0 * float(((params["head.weight"] - start["head.weight"]) ** 2).sum()), rel=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_every_method_trains_on_a_grouped_query_rotary_backbone(name):
    """LaMo's Llama-family backbones (SmolLM2: 9 query / 3 key-value heads, rotary positions)
    take every method: it trains, and cached decoding gives the recompute's actions."""
    import dataclasses

    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, gpt=dataclasses.replace(cfg.gpt, n_kv_head=cfg.gpt.n_head // 2, positions="rotary",
                                                           norm="rmsnorm", mlp="swiglu", bias=False))
    torch.manual_seed(0)
    model = build_model(cfg)
    tuners.attach(model, name)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_steps(model, [make_batch(seed=s) for s in range(2)])
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    states = torch.randn(7, 2, 154, generator=torch.Generator().manual_seed(3))
    runs = []
    for use_cache in (True, False):
        pol = model.policy([4, 6], use_cache=use_cache, tasks=["reach-v3", "door-open-v3"])
        acts = []
        for t in range(7):
            acts.append(pol.act(states[t], torch.full((2,), 1.0 - 0.1 * t), torch.full((2,), t)))
            pol.observe(torch.full((2,), 0.1))
        runs.append(torch.stack(acts))
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


def test_l2m_query_whitening_fits_the_pretraining_queries_and_travels_in_the_adapter(tmp_path):
    model = tiny_model()
    tuners.attach(model, "l2m", tuners.make_config("l2m", query_whitening=True, pretrain_keys=True, pool_size=4))
    tuner = model.tuner
    d = model.cfg.gpt.n_embd
    g = torch.Generator().manual_seed(0)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    raw = torch.randn(4000, d, generator=g) * torch.linspace(0.05, 0.5, d) @ rot + 3.0  # correlated, offset
    tuner.fit_whitening(raw)
    w = tuner.transform_query(raw)
    assert w.mean(0).abs().max() < 1e-3 and torch.allclose(torch.cov(w.T), torch.eye(d), atol=0.05)
    tuner.fit_pretrain_keys([raw[:2000], raw[2000:]])  # keys of whitened queries
    expected = torch.nn.functional.normalize(torch.nn.functional.normalize(w[:2000], dim=-1).mean(0), dim=0)
    assert torch.allclose(tuner.pre_keys[0], expected, atol=1e-5)
    base = write_base_run(tmp_path / "base", tiny_model())
    tuners.save_adapter(tmp_path / "a", model, {"base_digest": tuners.base_digest(base), "tasks": ["reach-v3"]})
    loaded, _, _ = tuners.load_adapted(base, tmp_path / "a")
    assert torch.equal(loaded.tuner.query_whiten, tuner.query_whiten) and torch.equal(loaded.tuner.query_mean, tuner.query_mean)
    with pytest.raises(ValueError, match="oracle"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", oracle=True, query_whitening=True))


@pytest.mark.parametrize("span", [None, 3, 5, 8])
def test_l2m_query_span_averages_the_episode_so_far_at_evaluation(span, monkeypatch):
    model = tiny_model()
    tuners.attach(model, "l2m", tuners.make_config("l2m", query_span=span, pool_size=4))
    model.eval()
    seen = []
    real = type(model.tuner).context

    def spy(self, state_emb, valid, tasks=None):
        seen.append(state_emb.clone())
        return real(self, state_emb, valid, tasks)

    monkeypatch.setattr(type(model.tuner), "context", spy)
    states = torch.randn(12, 2, 154, generator=torch.Generator().manual_seed(3))
    pol = model.policy([4, 6], use_cache=True, tasks=["reach-v3", "door-open-v3"])
    with torch.no_grad():
        emb = model.embed_state(states)  # (T, n, D)
    for t in range(12):
        seen.clear()
        pol.act(states[t], torch.full((2,), 1.0), torch.full((2,), t))
        pol.observe(torch.full((2,), 0.1))
        k = model.cfg.context_len
        width = min(t + 1, span or k)
        assert all(s.shape[1] == width for s in seen)
        assert torch.allclose(seen[-1], emb[t + 1 - width: t + 1].transpose(0, 1), atol=1e-6)


FOLDABLE = {"full", "head", "last-k", "l2", "ewc", "lora", "ia3"}


@pytest.mark.parametrize("name", ALL)
def test_merge_folds_the_method_into_the_weights_or_says_why_not(name):
    model = tiny_model()
    tuners.attach(model, name)
    train_steps(model, [make_batch(seed=s) for s in range(2)])
    batch = make_batch(seed=9, valid_from=1)
    with torch.no_grad():
        before = model(batch)
    if tuners.resolve_method(name)[0] not in FOLDABLE:
        with pytest.raises(ValueError, match="cannot be folded"):
            tuners.merge(model)
        return
    tuners.merge(model)
    assert model.tuner is None and not any(k.startswith("tuner.") for k in model.state_dict())
    with torch.no_grad():
        assert torch.allclose(model(batch), before, atol=1e-5)
    plain = tiny_model()
    if name in ("lora", "ia3"):  # the change is in the base weights now
        assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_l2m_calibrated_margin_keeps_the_tasks_windows_on_their_entry():
    model = tiny_model()
    tuners.attach(model, "l2m", tuners.make_config("l2m", pretrain_keys=True, calibrate_margin=0.9, pool_size=4))
    tuner = model.tuner
    d = model.cfg.gpt.n_embd
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    task_q = base + 0.3 * torch.randn(500, d, generator=g)  # the new task's queries
    pre_q = base + 0.3 * torch.randn(500, d, generator=g) + 0.2 * torch.randn(d, generator=g)  # nearby pre-training task
    tuner.fit_pretrain_keys([pre_q])
    with torch.no_grad():
        tuner.pool.keys[0] = base  # the entry the task trained
    gap = tuner._pre_scores(task_q) - tuner.pool.scores(task_q).max(-1).values
    before = (gap > 0).float().mean()
    margin = tuner.calibrate(task_q)
    assert margin == pytest.approx(float(torch.quantile(gap, 0.9)), abs=1e-6) and float(tuner.margin) == margin
    assert (gap > tuner.margin).float().mean() == pytest.approx(0.1, abs=0.01)  # 90% keep their entry
    assert before < 0.1  # uncalibrated (margin 0) even fewer fell to no modulation
    assert margin < 0  # most of the task's windows prefer its entry: more pre-training inputs go unmodulated
    assert tuner.calibrate(task_q[:10] * 0 + base) == pytest.approx(margin)  # after the first task, never lowered
    assert tuner.calibrate(pre_q) > margin  # a task near the pre-training one raises it
    with pytest.raises(ValueError, match="turn pretrain_keys on"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", calibrate_margin=0.9))


def test_l2m_task_gaussians_train_the_tasks_entry_and_route_by_density(tmp_path):
    model = tiny_model()
    tuners.attach(model, "l2m-gauss", tuners.make_config("l2m", task_gaussians=True, pool_size=4))
    tuner = model.tuner
    d = model.cfg.gpt.n_embd
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(2, d, generator=g)
    spread = torch.linspace(0.2, 1.0, d)
    clouds = [c + spread * torch.randn(3000, d, generator=g) for c in centres]
    batch = make_batch()
    for i, task in enumerate(("a", "b")):
        tuner.begin_task(task)
        model.train()
        model(batch)
        assert tuner.selection().tolist() == [i] * 4  # training: the task's own entry, whatever the query
        assert tuner.aux_loss() is None  # no keys to pull
        facts = tuner.fit_task_density(task, clouds[i][:2000] * (1 + i))  # task b varies twice as much
        assert facts["windows"] == 2000
        # one ridge for every task, from the first task's mean variance: a per-task ridge biases the log-determinants
        assert facts["ridge"] == pytest.approx(1e-2 * float(torch.cov(clouds[0][:2000].T).diagonal().mean()), rel=1e-4)
    clouds[1] = clouds[1] * 2
    held = [c[2000:] for c in clouds]
    assert (tuner.infer_task(held[0]) == 0).float().mean() > 0.97
    assert (tuner.infer_task(held[1]) == 1).float().mean() > 0.97
    own = tuner.task_log_likelihood(clouds[0][:2000])[:, 0]
    assert (own < tuner.density_threshold[0]).float().mean() == pytest.approx(0.01, abs=0.002)  # density_reject
    far = centres.mean(0) + 30 * torch.randn(50, d, generator=g)
    assert (tuner.infer_task(far) == -1).all()  # no task accepts: the unmodulated model
    model.eval()
    with torch.no_grad():
        model(batch)
        q = tuner.query(model.embed_state(batch["states"]), batch["valid"])
    assert torch.equal(tuner.selection(), tuner.infer_task(q))  # evaluation routes a window by its query
    # the densities travel in the adapter (sized by the number of tasks, unknown until loaded)
    base = write_base_run(tmp_path / "base", tiny_model())
    tuners.save_adapter(tmp_path / "a", model, {"base_digest": tuners.base_digest(base), "tasks": ["a", "b"]})
    loaded, _, _ = tuners.load_adapted(base, tmp_path / "a")
    assert loaded.tuner.density_precision.shape == (2, d, d)
    assert torch.equal(loaded.tuner.infer_task(held[1]), tuner.infer_task(held[1]))
    # without rejection every query takes the most likely task
    open_model = tiny_model()
    tuners.attach(open_model, "l2m", tuners.make_config("l2m", task_gaussians=True, density_reject=None, pool_size=4))
    open_model.tuner.begin_task("a")
    open_model.tuner.fit_task_density("a", clouds[0][:2000])
    assert (open_model.tuner.infer_task(far) == 0).all()
    with pytest.raises(ValueError, match="oracle"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", task_gaussians=True, oracle=True))
    with pytest.raises(ValueError, match="density_reject"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", task_gaussians=True, density_reject=1.5))


def test_l2m_pretrain_gaussians_make_no_modulation_a_class_that_competes_on_likelihood(tmp_path):
    model = tiny_model()
    tuners.attach(model, "l2m-gauss-pre")
    tuner = model.tuner
    assert tuner.config.pretrain_gaussians and tuner.config.density_reject is None
    d = model.cfg.gpt.n_embd
    g = torch.Generator().manual_seed(1)
    spread = torch.linspace(0.2, 1.0, d)
    new_centre, far_centre = 3 * torch.randn(2, d, generator=g)
    # pre-training task 0 far away; task 1 a near twin of the new task: shifted by 0.8 sd, half as spread
    clouds = [far_centre + spread * torch.randn(3000, d, generator=g),
              new_centre + 0.8 * spread + 0.5 * spread * torch.randn(3000, d, generator=g),
              new_centre + spread * torch.randn(3000, d, generator=g)]
    with pytest.raises(ValueError, match="task_gaussians"):
        tuners.attach(tiny_model(), "l2m", tuners.make_config("l2m", pretrain_gaussians=True))
    with pytest.raises(ValueError, match="no pre-training queries"):
        tuner.fit_pretrain_densities([])
    with pytest.raises(ValueError, match="at least 2"):  # one window: no covariance (NaN), refused
        tuner.fit_pretrain_densities([clouds[0][:1]])
    facts = tuner.fit_pretrain_densities([clouds[0][:2000], clouds[1][:2000]])
    assert facts["pretrain_gaussians"] == 2
    # the first fit sets the ridge every later fit shares: here the first pre-training task's
    assert facts["ridge"] == pytest.approx(1e-2 * float(torch.cov(clouds[0][:2000].T).diagonal().mean()), rel=1e-4)
    assert tuner.pre_density_precision.shape == (2, d, d)
    tuner.begin_task("new")
    assert tuner.fit_task_density("new", clouds[2][:2000])["ridge"] == facts["ridge"]
    with pytest.raises(ValueError, match="before the first task"):
        tuner.fit_pretrain_densities([clouds[0][:2000]])
    held = [c[2000:] for c in clouds]
    assert (tuner.infer_task(held[2]) == 0).float().mean() > 0.97  # the new task's windows: its entry
    for pre in held[:2]:
        assert (tuner.infer_task(pre) == -1).float().mean() > 0.97  # a pre-training task's: no modulation
    # l2m-gauss (rejection only) sends the twin's windows to the new task: they lie inside its Gaussian
    alone = tiny_model()
    tuners.attach(alone, "l2m-gauss")
    alone.tuner.begin_task("new")
    alone.tuner.fit_task_density("new", clouds[2][:2000])
    assert (alone.tuner.infer_task(held[0]) == -1).all()
    assert (alone.tuner.infer_task(held[1]) == 0).float().mean() > 0.9
    # the pre-training densities travel in the adapter (sized by the number of tasks, unknown until loaded)
    base = write_base_run(tmp_path / "base", tiny_model())
    tuners.save_adapter(tmp_path / "a", model, {"base_digest": tuners.base_digest(base), "tasks": ["new"]})
    loaded, _, _ = tuners.load_adapted(base, tmp_path / "a")
    assert loaded.tuner.pre_density_mean.shape == (2, d)
    assert torch.equal(loaded.tuner.infer_task(held[0]), tuner.infer_task(held[0]))


@pytest.mark.parametrize("name", sorted(tuners.REGISTRY))
def test_attach_puts_the_tuner_where_the_model_is(name):
    """A tuner attached to a model already on a device (a GPU in `dtune lamo`) builds its weights
    there; the meta device stands in for a GPU here."""
    model = build_model(preset("tiny", state_dim=10, act_dim=2)).to("meta")
    tuners.attach(model, name)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}


@pytest.mark.parametrize("kind", ["mddt", "dt", "dt-mlp"])
def test_l2m_entry_modules_give_every_task_its_own_embeddings_and_head(kind, tmp_path):
    """`entry_modules`: each entry holds its own copy of the embeddings and head (a difference to the
    base weights); routing still reads the unmodulated state embedding; a window routed to no entry
    runs the base model; the incremental policy re-embeds its window with the entry it routes to."""
    torch.manual_seed(0)
    cfg = preset("tiny", "mddt") if kind == "mddt" else preset(
        "tiny", "dt", context_len=5, **({"embedding": "mlp", "head": "mlp"} if kind == "dt-mlp" else {}))
    model = build_model(cfg)
    base = copy.deepcopy(model).eval()
    tuners.attach(model, "l2m", tuners.make_config("l2m", oracle=True, pool_size=3, entry_modules=["io"]))
    tuner = model.tuner
    assert tuner.config.entry_modules == list(type(model).io_modules)  # ["io"] resolved, saved explicitly
    mlp = [f"embed_{n}_{fc}" for n in ("return", "state", "action") for fc in ("fc1", "fc2")]
    expected = {"mddt": [*type(model).io_modules], "dt": ["embed_return", "embed_state", "embed_action", "embed_ln", "head_0"],
                "dt-mlp": [*mlp, "embed_ln", "head_0", "head_2"]}[kind]
    assert sorted(tuner.entries) == sorted(expected)  # an MLP embedding / head: each of its Linear layers
    act = 6 if kind == "mddt" else cfg.act_dim
    batch = make_batch(seed=2, state_dim=cfg.state_dim, act_dim=act)
    g = torch.Generator().manual_seed(2)
    before = base_state(model)
    train_steps(model, [batch] * 3, task="a")
    after = base_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base weights stay the checkpoint's
    for delta in tuner.entries.values():  # only the task's entry (slot 0) trained
        assert delta.weight[0].abs().sum() > 0 and delta.weight[1:].abs().sum() == 0
    # the query comes from the unmodulated state embedding, also while an entry is chosen
    tuner.context(base.embed_state(batch["states"]), batch["valid"], ["a"] * 4)
    assert torch.equal(model.query_states(batch["states"]), base.embed_state(batch["states"]))
    assert not torch.equal(model.embed_state(batch["states"]), base.embed_state(batch["states"]))
    # a window of a task without an entry runs the base model exactly; the trained task's does not
    model.eval()
    pol_tasks = ["a", "unknown", "a"]
    states = torch.randn(7, 3, cfg.state_dim, generator=g)
    runs = {}
    for name, m, use_cache in (("cache", model, True), ("full", model, False), ("base", base, True)):
        pol = m.policy([act] * 3, use_cache=use_cache, tasks=pol_tasks)
        acts = []
        for t in range(7):  # context 5: the window slides twice
            acts.append(pol.act(states[t], torch.full((3,), 1.0 - 0.1 * t), torch.full((3,), t)))
            pol.observe(torch.full((3,), 0.1))
        runs[name] = torch.stack(acts)
    assert torch.allclose(runs["cache"], runs["full"], atol=1e-5)
    assert torch.allclose(runs["cache"][:, 1], runs["base"][:, 1], atol=1e-5)  # no entry: the base model
    assert not torch.allclose(runs["cache"][:, 0], runs["base"][:, 0], atol=1e-3)  # task a's own modules
    if kind != "mddt":  # a step of the policy equals the model's forward over the same window
        tuner.current_task = "a"
        window = {"states": states[:5].transpose(0, 1), "actions": runs["cache"][:5].transpose(0, 1),
                  "action_mask": torch.ones(3, act, dtype=torch.bool),
                  "rtg": (1.0 - 0.1 * torch.arange(5.0)).repeat(3, 1), "rewards": torch.zeros(3, 5),
                  "timesteps": torch.arange(5).repeat(3, 1), "valid": torch.ones(3, 5, dtype=torch.bool)}
        with torch.no_grad():
            pred = model(window).clamp(-1, 1)
        assert torch.allclose(pred[0], runs["cache"][:5, 0], atol=1e-5)
    # the entries travel in the adapter
    path = write_base_run(tmp_path / "base", base)
    tuners.save_adapter(tmp_path / "ad", model, {"base_digest": tuners.base_digest(path), "tasks": ["a"]})
    loaded, _, _ = tuners.load_adapted(path, tmp_path / "ad")
    tuner.current_task = "a"
    loaded.tuner.current_task = "a"
    with torch.no_grad():
        assert torch.equal(loaded.eval()(batch), model(batch))
    # bad input
    with pytest.raises(ValueError, match="modules_to_save"):
        tuners.attach(build_model(cfg), "l2m", tuners.make_config("l2m", entry_modules=["io"], modules_to_save=["head"]))
    with pytest.raises(ValueError, match="valid names"):
        tuners.attach(build_model(cfg), "l2m", tuners.make_config("l2m", entry_modules=["embed_nothing"]))
    with pytest.raises(ValueError, match="embed_timestep"):
        tuners.attach(build_model(cfg), "l2m", tuners.make_config("l2m", entry_modules=["embed_timestep"]))


def test_l2m_gaussians_stay_finite_for_a_task_far_outside_the_pretraining_scale():
    """DMC6's cartpole-swingup on the MT40 + DMC10 checkpoint: one state feature was near-constant in
    pre-training (the pole's cosine in cartpole-balance, sd 4e-5), so the new task's queries reached
    norms of 25,000; the float32 covariance lost the ridge, its log-determinant came out NaN, and every
    window, pre-training ones included, was routed to that task's entry. Fitted in float64 the density
    is finite and routes as it should; a NaN likelihood (an adapter saved before) never wins."""
    model = tiny_model()
    tuners.attach(model, "l2m-gauss-pre")
    tuner = model.tuner
    d = model.cfg.gpt.n_embd
    g = torch.Generator().manual_seed(2)
    pre = torch.randn(3000, d, generator=g)
    tuner.fit_pretrain_densities([pre[:2000]])
    big = torch.randn(3000, d, generator=g)
    big[:, 0] = 2.5e4 + 1.5e4 * torch.randn(3000, generator=g)  # one direction 10^4 times the others,
    big[:, 1], big[:, 2] = -0.7 * big[:, 0], 0.3 * big[:, 0]  # entering three query dimensions
    naive = torch.cov(big[:2000].T) + float(tuner.density_ridge) * torch.eye(d)
    assert torch.isnan(torch.logdet(naive))  # what float32 gave
    tuner.begin_task("far")
    tuner.fit_task_density("far", big[:2000])
    assert torch.isfinite(tuner.density_logdet).all()
    assert (tuner.infer_task(big[2000:]) == 0).float().mean() > 0.97  # its own windows: its entry
    assert (tuner.infer_task(pre[2000:]) == -1).float().mean() > 0.97  # pre-training windows: unmodulated
    tuner.density_logdet[0] = float("nan")  # an adapter fitted before the fix
    assert (tuner.infer_task(pre[2000:]) == -1).all()


@pytest.mark.parametrize("method", ["full", "l2", "ewc"])
def test_no_method_trains_a_lamo_models_language_embedding_or_untied_head(method, tmp_path):
    """LaMo keeps the LM's token embedding and head frozen: full fine-tuning and its penalised variants
    leave them out of what trains and of the adapter; an older adapter that saved them unchanged still
    applies, one that changed them is refused."""
    from dtune.models import GPTConfig, ModelConfig

    cfg = ModelConfig(kind="dt", state_dim=5, act_dim=3, context_len=4, max_timestep=50, vocab_size=11,
                      tie_lm_head=False, gpt=GPTConfig(n_layer=1, n_head=1, n_embd=16))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.lm_head is not None
    base = copy.deepcopy(model.state_dict())
    tuners.attach(model, method)
    names = set(tuners.trainable_names(model))
    assert names and not any(n.startswith(("lm_wte.", "lm_head.")) for n in names)
    assert not any(k.startswith(("lm_wte.", "lm_head.")) for k in tuners.adapter_state(model))
    tuners.save_adapter(tmp_path / "ad", model, {})
    file = tmp_path / "ad" / tuners.ADAPTER_WEIGHTS
    tensors = load_file(str(file))
    save_file({**tensors, "lm_wte.weight": base["lm_wte.weight"]}, str(file))  # as full fine-tuning saved it before
    loaded = build_model(cfg)
    loaded.load_state_dict(base)
    tuners.apply_adapter(loaded, tmp_path / "ad")
    save_file({**tensors, "lm_wte.weight": base["lm_wte.weight"] + 1}, str(file))
    again = build_model(cfg)
    again.load_state_dict(base)
    with pytest.raises(tuners.AdapterError, match="differs from the base's"):
        tuners.apply_adapter(again, tmp_path / "ad")
