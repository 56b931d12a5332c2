import json

import numpy as np
import pytest

from dtune.eval.rollout import EvalConfig, evaluate, normalized_score, run_episodes, target_return
from dtune.models import build_model, preset
from dtune.tasks import get_task
from dtune.train.pretrain import PretrainConfig, pretrain


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


def test_targets_and_normalisation():
    spec = get_task("walker-walk")
    assert target_return(spec, None) == spec.target_return
    assert target_return(spec, {"return_max": 500.0}, 1.5) == 750.0
    assert normalized_score(60.0, {"ref_min_score": 10.0, "ref_max_score": 110.0}) == pytest.approx(0.5)
    assert normalized_score(60.0, {"ref_min_score": 10.0, "ref_max_score": 10.0}) is None
    assert normalized_score(60.0, {}) is None


def test_run_episodes_rejects_mixed_horizons():
    m = build_model(preset("tiny")).eval()
    with pytest.raises(ValueError, match="horizon"):
        run_episodes(m, [get_task("reach-v3", 5), get_task("reach-v3", 6)], [0, 1], [1.0, 1.0])


def test_unknown_task_and_missing_checkpoint(run, tmp_path):
    from dtune.tasks import UnknownTaskError
    from dtune.train.checkpoint import CheckpointError

    with pytest.raises(UnknownTaskError, match="reach-v3"):
        evaluate(EvalConfig(checkpoint=str(run), tasks="reach-v9", progress=False))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        evaluate(EvalConfig(checkpoint=str(tmp_path / "nope"), progress=False))
