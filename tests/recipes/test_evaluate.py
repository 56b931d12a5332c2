import json

import numpy as np
import pytest

from dtune.recipes.evaluate import EvalConfig, evaluate
from dtune.recipes.pretrain import PretrainConfig, pretrain


REACH_60, DOOR_60 = 296.50312065367166, 147.45178540395307
"""Measured with dtune 0.1 (commit cf74b54) on the same checkpoint and settings."""


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pretrain(PretrainConfig(out=str(out), tasks="reach-v3,door-open-v3,cartpole-balance", model="tiny", steps=5,
                            batch_size=8, data_dir=str(tiny_data), progress=False, device="cpu"))
    return out


def test_evaluate_checkpoint_on_metaworld_and_dmc(run, tmp_path):
    res = evaluate(EvalConfig(checkpoint=str(run), episodes=2, horizon=12, json=str(tmp_path / "e.json"), progress=False))
    assert set(res["tasks"]) == {"reach-v3", "door-open-v3", "cartpole-balance"}
    mw = res["tasks"]["reach-v3"]
    assert mw["score_kind"] == "success" and 0.0 <= mw["score"] <= 1.0 and mw["episodes"] == 2
    assert res["tasks"]["cartpole-balance"]["score"] is None  # random-policy data: normalisation undefined
    assert res["mean_score"] == pytest.approx(np.mean([res["tasks"][t]["score"] for t in ("reach-v3", "door-open-v3")]))
    assert res["env_steps"] == 3 * 2 * 12
    assert json.loads((tmp_path / "e.json").read_text())["mean_score"] == res["mean_score"]


def test_cache_and_recompute_give_the_same_episodes(run):
    kw = dict(checkpoint=str(run), tasks="reach-v3", episodes=2, horizon=10, progress=False)
    a, b = evaluate(EvalConfig(**kw)), evaluate(EvalConfig(use_cache=False, **kw))
    assert a["tasks"]["reach-v3"]["return_mean"] == pytest.approx(b["tasks"]["reach-v3"]["return_mean"], rel=1e-6)


def test_chunks_give_the_same_result(run):
    kw = dict(checkpoint=str(run), tasks="reach-v3,door-open-v3", episodes=3, horizon=8, progress=False)
    a, b = evaluate(EvalConfig(**kw)), evaluate(EvalConfig(max_envs=2, **kw))
    for t in a["tasks"]:
        assert a["tasks"][t]["return_mean"] == pytest.approx(b["tasks"][t]["return_mean"], rel=1e-5)


def test_unknown_task_and_missing_checkpoint(run, tmp_path):
    from dtune.tasks import UnknownTaskError
    from dtune.models.io import CheckpointError

    with pytest.raises(UnknownTaskError, match="reach-v3"):
        evaluate(EvalConfig(checkpoint=str(run), tasks="reach-v9", progress=False))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        evaluate(EvalConfig(checkpoint=str(tmp_path / "nope"), progress=False))


def test_committed_checkpoint_evaluates_as_before():
    """The MT40 checkpoint of results/ (made by dtune 0.1: no stored layout) loads and gives the
    per-task returns it gave before the seams work (reach-v3 and door-open-v3, 4 episodes, seed 1000)."""
    from pathlib import Path

    ckpt = Path(__file__).resolve().parents[2] / "results" / "mt40_small" / "checkpoint"
    for workers in (0, 2):  # in this process, and environments in 2 worker processes
        res = evaluate(EvalConfig(checkpoint=str(ckpt), tasks="reach-v3,door-open-v3", episodes=4, seed=1000,
                                  horizon=60, progress=False, env_workers=workers))
        assert res["tasks"]["reach-v3"]["return_mean"] == pytest.approx(REACH_60, rel=1e-6)
        assert res["tasks"]["door-open-v3"]["return_mean"] == pytest.approx(DOOR_60, rel=1e-6)


def test_the_cached_unadapted_evaluation_is_keyed_by_the_code_that_made_it(run, monkeypatch):
    """`adapt` and `continual` cache the base checkpoint's evaluation in CHECKPOINT/eval_cache: a
    cache made by other evaluation code (another dtune version, or changed sources) is not reused."""
    from dtune.models.io import load_model
    from dtune.recipes import tuning

    calls = []
    real = tuning.evaluate_model

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(tuning, "evaluate_model", counted)
    model, config = load_model(run, "cpu")
    args = (str(run), model, config, ["reach-v3"], 1, 77, 3, False)
    first = tuning.cached_eval(*args)
    assert tuning.cached_eval(*args) == first and len(calls) == 1  # the same code: cached
    monkeypatch.setattr(tuning, "eval_code_digest", lambda: "other sources", raising=False)
    assert tuning.cached_eval(*args)["mean_score"] == first["mean_score"] and len(calls) == 2
    monkeypatch.setattr(tuning, "__version__", "99.0", raising=False)
    tuning.cached_eval(*args)
    assert len(calls) == 3


def test_protocol_targets_through_evaluate_and_the_command_line(run, capsys):
    from dtune.cli import main

    res = evaluate(EvalConfig(checkpoint=str(run), tasks="reach-v3", episodes=1, horizon=8, targets="protocol",
                              progress=False))
    r = res["protocol"]["tasks"]["reach-v3"]
    assert len(r["by_target"]) == 1 and r["standard"] == r["best"]  # no protocol: the usual target, once
    assert main(["evaluate", "--checkpoint", str(run), "--tasks", "reach-v3", "--episodes", "1", "--horizon", "8",
                 "--targets", "protocol", "--no-progress"]) == 0
    assert "score at standard target" in capsys.readouterr().out


def test_env_workers_overlapped_give_the_same_episodes(run):
    kw = dict(checkpoint=str(run), tasks="reach-v3,door-open-v3", episodes=2, horizon=8, progress=False)
    a, b = evaluate(EvalConfig(**kw)), evaluate(EvalConfig(env_workers=2, env_overlap=True, **kw))
    assert a["tasks"] == b["tasks"]


def test_bf16_evaluation_is_recorded(run):
    res = evaluate(EvalConfig(checkpoint=str(run), tasks="reach-v3", episodes=2, horizon=8, precision="bf16",
                              progress=False))
    assert res["precision"] == "bf16" and res["tasks"]["reach-v3"]["episodes"] == 2
