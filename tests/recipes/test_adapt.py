"""`dtune adapt` end to end on tiny data: train, save only the adapter, reload, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dtune import tuners
from dtune.tuners import NORMALISER
from dtune.cli import main
from dtune.recipes.adapt import AdaptConfig, adapt
from dtune.recipes import adapt as adapt_module
from dtune.recipes import tuning
from dtune.recipes.evaluate import EvalConfig, evaluate


def cfg(base, tiny_data, out, **kw):
    kw = {"task": "door-open-v3", "method": "lora", "steps": 4, "batch_size": 8, "eval_episodes": 2,
          "pretrain_episodes": 1, "horizon": 10, "data_dir": str(tiny_data), "progress": False, "device": "cpu",
          "log_every": 2, **kw}
    return AdaptConfig(checkpoint=str(base), out=str(out), **kw)


def test_adapt_saves_only_the_adapter_and_reloads_it(base, tiny_data, tmp_path):
    res = adapt(cfg(base, tiny_data, tmp_path / "a"))
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"adapter.safetensors", "adapter.json", "config.json", "metrics.csv", "result.json", "result.md"} <= files
    saved = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    # LoRA: no base weight is saved, only its tensors and the state statistics
    assert saved and all(k.startswith("tuner.") or k in NORMALISER for k in saved) and set(NORMALISER) <= set(saved)
    assert res["trainable"] == sum(v.numel() for k, v in saved.items() if k not in NORMALISER)
    assert 0 < res["trainable_pct"] < 100 and res["steps"] == 4
    for key in ("new_task_before", "new_task_score", "pretrain_before", "pretrain_after", "train_s", "wall_s"):
        assert key in res
    assert json.loads((tmp_path / "a" / "result.json").read_text()) == res
    # both pre-training evaluations are kept, per task (the report's per-domain figures)
    for name, key in (("eval_pretrain_before.json", "pretrain_before"), ("eval_pretrain.json", "pretrain_after")):
        assert json.loads((tmp_path / "a" / name).read_text())["mean_score"] == res[key]
    # `dtune evaluate --adapter` reproduces the new-task score: same episodes, same model
    again = evaluate(EvalConfig(checkpoint=str(base), adapter=str(tmp_path / "a"), episodes=2, horizon=10, progress=False))
    assert list(again["tasks"]) == ["door-open-v3"]
    assert again["tasks"]["door-open-v3"]["score"] == res["new_task_score"]
    # the unadapted model's pre-training and new-task scores were cached in the checkpoint
    cached = {(tuple(k["tasks"]), k["episodes"]) for k in
              (json.loads(p.read_text())["key"] for p in (base / "eval_cache").glob("*.json"))}
    assert {(("door-open-v3",), 2), (("cartpole-balance", "reach-v3"), 1)} <= cached
    with pytest.raises(ValueError, match="already holds a dtune adapt run"):
        adapt(cfg(base, tiny_data, tmp_path / "a"))


def test_another_method_reads_the_unadapted_scores_from_the_cache(base, tiny_data, tmp_path, monkeypatch):
    first = adapt(cfg(base, tiny_data, tmp_path / "a"))
    calls = []
    real = tuning.evaluate_model

    def counted(*a, **k):
        calls.append(a[2])
        return real(*a, **k)

    monkeypatch.setattr(tuning, "evaluate_model", counted)
    monkeypatch.setattr(adapt_module, "evaluate_model", counted)
    second = adapt(cfg(base, tiny_data, tmp_path / "b", method="full", seed=1))
    assert len(calls) == 2  # the adapted model on the new task and on the pre-training tasks; nothing unadapted
    assert second["new_task_before"] == first["new_task_before"]
    assert second["pretrain_before"] == first["pretrain_before"]


@pytest.mark.parametrize("method", ["ewc", "l2m-pretrain-keys", "l2p"])
def test_methods_that_need_pretraining_data_or_pools(base, tiny_data, tmp_path, method):
    res = adapt(cfg(base, tiny_data, tmp_path / method, method=method, pretrain_eval=False, eval_episodes=1))
    if method == "ewc":
        assert res["trainable_pct"] == 100.0
        assert "routing" not in res and not (tmp_path / method / "routing.json").exists()
    else:
        assert res["pool_entries_used"] and res["per_task"] < res["trainable"]
        counts = json.loads((tmp_path / method / "eval_task.json").read_text())["routing"]["door-open-v3"]
        top_k = 1 if method.startswith("l2m") else tuners.read_adapter_config(tmp_path / method)["config"]["top_k"]
        horizon = json.loads((tmp_path / method / "eval_task.json").read_text())["env_steps"]
        assert sum(counts.values()) == horizon * top_k  # every step of the episode, each chosen entry
        assert res["routing"] == "routing.md" and (tmp_path / method / "routing.png").exists()
    doc = tuners.read_adapter_config(tmp_path / method)
    assert doc["tasks"] == ["door-open-v3"] and doc["base_digest"] == tuners.base_digest(base)


def test_cli_adapt_with_method_options(base, tiny_data, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["adapt", "--checkpoint", str(base), "--task", "door-open-v3", "--method", "lora", "--r", "2",
               "--target-modules", "q", "k", "--steps", "2", "--batch-size", "4", "--no-pretrain-eval",
               "--eval-episodes", "1", "--horizon", "5", "--data-dir", str(tiny_data), "--no-progress", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0
    conf = json.loads((out / "config.json").read_text())
    assert conf["method_config"]["r"] == 2 and conf["method_config"]["target_modules"] == ["q", "k"]
    assert "| lora" in capsys.readouterr().out
    rc = main(["evaluate", "--checkpoint", str(base), "--adapter", str(out), "--episodes", "1", "--horizon", "5",
               "--no-progress"])
    assert rc == 0


def test_cli_bad_input(base, tiny_data, tmp_path, capsys):
    assert main(["adapt", "--checkpoint", str(base), "--method", "lorra", "--out", str(tmp_path / "x")]) == 2
    assert "Did you mean lora" in capsys.readouterr().err
    assert main(["adapt", "--checkpoint", str(base), "--task", "hamer-v3", "--out", str(tmp_path / "x"),
                 "--data-dir", str(tiny_data)]) == 2
    assert "hammer-v3" in capsys.readouterr().err
    assert main(["adapt", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["adapt", "--checkpoint", str(base), "--method", "l2m", "--oracle", "--pretrain-keys",
                 "--task", "door-open-v3", "--data-dir", str(tiny_data), "--out", str(tmp_path / "y"), "--no-progress",
                 "--device", "cpu"]) == 2
    assert "oracle" in capsys.readouterr().err
    assert not (tmp_path / "y" / "adapter.json").exists()


@pytest.mark.parametrize("method", ["lora", "l2m-pretrain-keys", "ewc"])
def test_adapt_resume_equals_the_uninterrupted_run(base, tiny_data, tmp_path, monkeypatch, method):
    from dtune.recipes.adapt import resume
    from tests.conftest import die_after_save, training_clock

    kw = dict(method=method, steps=6, pretrain_eval=False, ckpt_every=2, log_every=1)
    training_clock(monkeypatch)  # one second an update
    full = adapt(cfg(base, tiny_data, tmp_path / "full", **kw))
    die_after_save(monkeypatch, lambda step, extra: step == 4)
    with pytest.raises(KeyboardInterrupt):
        adapt(cfg(base, tiny_data, tmp_path / "cut", **kw))
    monkeypatch.undo()
    training_clock(monkeypatch)
    again = resume(str(tmp_path / "cut"), progress=False)  # the run's own settings and method options
    monkeypatch.undo()
    assert again["new_task_score"] == full["new_task_score"] and again["new_task_return"] == full["new_task_return"]
    # the training time is the run's, over both invocations; the rate is this invocation's (2 updates in 2 s)
    assert full["train_s"] == again["train_s"] == 6.0 and full["steps_per_s"] == again["steps_per_s"] == 1.0
    a = load_file(str(tmp_path / "full" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("full", "cut")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    # resuming the finished run says so; with other settings it is refused (its result is not that command's)
    assert resume(str(tmp_path / "cut"), progress=False) == json.loads((tmp_path / "cut" / "result.json").read_text())
    if method == "lora":
        with pytest.raises(ValueError, match="differ from the run"):
            adapt(cfg(base, tiny_data, tmp_path / "cut", **{**kw, "steps": 7}, resume=True))


def test_a_task_gets_the_same_target_however_it_is_evaluated(base, tiny_data, tmp_path):
    """door-open-v3 (not a pre-training task of `base`): `dtune evaluate` of the base checkpoint,
    `dtune adapt` and `dtune continual` (both on part of its data, --max-episodes) and `dtune
    evaluate` of the adapter all aim at the best return of its whole dataset."""
    from dtune.data.dataset import TrajectoryData
    from dtune.recipes.continual import ContinualConfig, continual

    task = "door-open-v3"
    whole = TrajectoryData(tiny_data, task).task_info[task]["return_max"]
    part = next(n for n in range(1, 6) if TrajectoryData(tiny_data, task, n).task_info[task]["return_max"] < whole)
    kw = dict(episodes=1, horizon=4, progress=False)
    targets = {"evaluate base": evaluate(EvalConfig(checkpoint=str(base), tasks=task, **kw))["tasks"][task]["target_return"]}
    adapt(cfg(base, tiny_data, tmp_path / "a", steps=2, max_episodes=part, pretrain_eval=False, eval_episodes=1, horizon=4))
    targets["adapt"] = json.loads((tmp_path / "a" / "eval_task.json").read_text())["tasks"][task]["target_return"]
    targets["evaluate adapter"] = evaluate(EvalConfig(adapter=str(tmp_path / "a"), **kw))["tasks"][task]["target_return"]
    continual(ContinualConfig(checkpoint=str(base), out=str(tmp_path / "c"), sequence=task, method="lora", steps_per_task=2,
                              batch_size=8, max_episodes=part, eval_episodes=1, horizon=4, data_dir=str(tiny_data),
                              progress=False, device="cpu"))
    targets["continual"] = json.loads((tmp_path / "c" / "evals" / f"after_00_{task}.json").read_text())["tasks"][task]["target_return"]
    assert targets == {k: pytest.approx(whole, rel=1e-6) for k in targets}


def test_cli_l2m_with_the_routing_options(base, tiny_data, tmp_path):
    out = tmp_path / "routed"
    rc = main(["adapt", "--checkpoint", str(base), "--task", "door-open-v3", "--method", "l2m", "--pool-size", "4",
               "--query-whitening", "--pretrain-keys", "--query-span", "8", "--calibrate-margin", "0.9",
               "--steps", "2", "--batch-size", "4",
               "--no-pretrain-eval", "--eval-episodes", "1", "--horizon", "10", "--data-dir", str(tiny_data),
               "--no-progress", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    conf = json.loads((out / "config.json").read_text())
    assert conf["method_config"]["query_whitening"] and conf["method_config"]["query_span"] == 8
    tensors = load_file(str(out / "adapter.safetensors"))
    assert "tuner.query_whiten" in tensors and not torch.equal(tensors["tuner.query_whiten"], torch.eye(32))
    result = json.loads((out / "result.json").read_text())
    assert result["routing_margin"] == pytest.approx(float(tensors["tuner.margin"])) and bool(tensors["tuner.calibrated"])


@pytest.fixture(scope="module")
def unseen_data(tmp_path_factory):
    """pendulum-swingup, a DMC task `base` never saw: its columns have no pre-training statistics."""
    from tests.conftest import collect_tiny

    root = tmp_path_factory.mktemp("unseen")
    collect_tiny(root, tasks="pendulum-swingup", episodes=2, horizon=30, source="random")
    return root


def test_unseen_columns_take_the_new_tasks_statistics(base, unseen_data, tmp_path):
    """`--new-columns task` z-scores the columns no pre-training task fills with the new task's
    own statistics and keeps them in the adapter; every other column keeps the base's; `raw` (the
    default) leaves them as they were. The adapted model evaluates with them (`dtune evaluate`)."""
    from dtune.data.dataset import TrajectoryData
    from dtune.models.io import load_model, run_layout
    from dtune.tasks import get_task

    task = "pendulum-swingup"
    kw = dict(task=task, steps=2, eval_episodes=1, pretrain_eval=False, horizon=10, data_dir=str(unseen_data))
    adapt(cfg(base, unseen_data, tmp_path / "task", new_columns="task", **kw))
    adapt(cfg(base, unseen_data, tmp_path / "raw", **kw))
    model, run_config = load_model(base)
    cols = run_layout(run_config).columns(get_task(task))
    own_mean, own_std = TrajectoryData(unseen_data, task, layout=run_layout(run_config)).own_stats()
    others = np.setdiff1d(np.arange(model.cfg.state_dim), cols)
    for name, mean, std in (("task", own_mean, own_std), ("raw", model.state_mean.numpy(), model.state_std.numpy())):
        adapted, _, doc = tuners.load_adapted(base, tmp_path / name)
        np.testing.assert_array_equal(adapted.state_mean[cols].numpy(), mean[cols])
        np.testing.assert_array_equal(adapted.state_std[cols].numpy(), std[cols])
        assert torch.equal(adapted.state_mean[others], model.state_mean[others])
        assert torch.equal(adapted.state_std[others], model.state_std[others])
        scale = doc["task_info"][task]["state_scale"]  # raw: no statistics, nothing to report or clip
        assert scale["worst_column"].startswith("dmc/pendulum/") if name == "task" else \
            (scale["worst_column"], scale["columns_without_statistics"]) == (None, 3)
        again = evaluate(EvalConfig(adapter=str(tmp_path / name), episodes=1, horizon=10, progress=False))
        result = json.loads((tmp_path / name / "result.json").read_text())
        assert again["tasks"][task]["return_mean"] == result["new_task_return"]
    assert np.all(model.state_mean[cols].numpy() == 0) and not np.all(own_mean[cols] == 0)


def test_state_clip_replaces_the_checkpoints_and_old_runs_resume_as_they_ran(base, tiny_data, tmp_path, capsys):
    """`--state-clip` overrides the checkpoint's clip (kept in the adapter); the run warns of a task
    whose states are out of scale. A run whose config predates `new_columns` resumes with `raw`,
    the behaviour it ran with, and refuses `task`; one whose config predates `state_clip` (the
    checkpoint's clip: none for a checkpoint of that time) refuses a clip."""
    from dtune.recipes.adapt import resume

    assert load_model_config(base)["state_clip"] == 10.0  # `dtune pretrain`'s default
    res = adapt(cfg(base, tiny_data, tmp_path / "a", steps=2, state_clip=3.0, pretrain_eval=False, eval_episodes=1))
    assert json.loads((tmp_path / "a" / "adapter.json").read_text())["state_clip"] == 3.0
    adapted, _, _ = tuners.load_adapted(base, tmp_path / "a")
    assert adapted.cfg.state_clip == 3.0
    scale = json.loads((tmp_path / "a" / "adapter.json").read_text())["task_info"]["door-open-v3"]["state_scale"]
    assert scale["clip"] == 3.0 and scale["max_abs_z"] > 0
    if scale["frac_beyond_limit"] > tuning.SCALE_WARNING:
        assert "door-open-v3's states lie outside the checkpoint's state statistics" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--state-clip must be positive"):
        adapt(cfg(base, tiny_data, tmp_path / "bad", steps=2, state_clip=-1.0))
    path = tmp_path / "a" / "config.json"
    saved = json.loads(path.read_text())
    del saved["adapt"]["new_columns"], saved["adapt"]["state_clip"]  # as written before the options existed
    path.write_text(json.dumps(saved))
    kw = dict(steps=2, pretrain_eval=False, eval_episodes=1, resume=True)
    with pytest.raises(ValueError, match="new_columns: 'raw' -> 'task'"):
        adapt(cfg(base, tiny_data, tmp_path / "a", new_columns="task", **kw))
    with pytest.raises(ValueError, match="state_clip: None -> 3.0"):
        adapt(cfg(base, tiny_data, tmp_path / "a", state_clip=3.0, **kw))
    assert resume(str(tmp_path / "a"), progress=False) == res


def load_model_config(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())["model"]


def test_an_exported_adapter_keeps_its_state_normalisation(base, unseen_data, tmp_path):
    """`dtune export` writes the adapter's clip and state statistics into the new checkpoint: it
    evaluates as the adapted model did, and a later adaptation sees the filled columns as its own."""
    from dtune.models.io import load_model
    from dtune.recipes.export import ExportConfig, export

    task = "pendulum-swingup"
    kw = dict(task=task, steps=2, eval_episodes=1, pretrain_eval=False, horizon=10, data_dir=str(unseen_data))
    res = adapt(cfg(base, unseen_data, tmp_path / "a", new_columns="task", state_clip=3.0, **kw))
    export(ExportConfig(adapter=str(tmp_path / "a"), out=str(tmp_path / "m")))
    adapted, _, _ = tuners.load_adapted(base, tmp_path / "a")
    exported, config = load_model(tmp_path / "m")
    assert exported.cfg.state_clip == 3.0 and config["model"]["state_clip"] == 3.0 and task in config["tasks"]
    assert torch.equal(exported.state_mean, adapted.state_mean) and torch.equal(exported.state_std, adapted.state_std)
    again = evaluate(EvalConfig(checkpoint=str(tmp_path / "m"), tasks=task, episodes=1, horizon=10, progress=False))
    assert again["tasks"][task]["return_mean"] == res["new_task_return"]
    assert tuning.seen_columns(config)[tuning.run_layout(config).columns(tuning.get_task(task))].all()
