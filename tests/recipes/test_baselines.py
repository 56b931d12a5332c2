"""d3rlpy baselines on dtune's datasets: every algorithm trains and is scored by dtune's
evaluator; resume continues exactly; the data subset is the one a DT run gets."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("d3rlpy", reason="d3rlpy is installed by `make install` (without its pins); see the README")

from dtune.recipes.baselines import ALGOS, BaselineConfig, mdp_dataset, train_baseline  # noqa: E402
from dtune.data.dataset import SUBSET_RULE  # noqa: E402


@pytest.fixture(scope="module")
def hopper_data(tmp_path_factory):
    from tests.conftest import collect_tiny

    root = tmp_path_factory.mktemp("hopper")
    collect_tiny(root, tasks="hopper", episodes=6, horizon=40, source="random")
    return root


def cfg(root, out, **kw) -> BaselineConfig:
    return BaselineConfig(**{"task": "hopper", "steps": 8, "steps_per_epoch": 4, "batch_size": 8, "eval_episodes": 1,
                             "out": str(out), "data_dir": str(root), "progress": False, **kw})


@pytest.mark.parametrize("algo", ALGOS)
def test_every_baseline_trains_and_is_scored_by_dtune(hopper_data, tmp_path, algo):
    r = train_baseline(cfg(hopper_data, tmp_path / algo, algo=algo))
    assert r["method"] == algo and r["steps"] == 8 and r["score_kind"] == "normalized"
    # D4RL's normalised score with the suite's references, from the same evaluator as DT runs
    assert r["score"] == pytest.approx((r["return_mean"] + 20.3) / (3234.3 + 20.3), rel=1e-6)
    assert json.loads((tmp_path / algo / "result.json").read_text())["score"] == r["score"]
    assert (tmp_path / algo / "d3rlpy" / algo).is_dir()  # d3rlpy's own logs in the run folder
    assert json.loads((tmp_path / algo / "config.json").read_text())["kind"] == "baseline"


def test_resume_continues_exactly(hopper_data, tmp_path):
    from safetensors.torch import load_file

    train_baseline(cfg(hopper_data, tmp_path / "whole", algo="td3+bc"))
    train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc", steps=4))
    first = json.loads((tmp_path / "parts" / "checkpoint" / "state.json").read_text())["train_s"]
    again = train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc", steps=4, resume=True))
    assert first > 0 and again["train_s"] >= first  # nothing left to train: the first invocation's time
    # a finished run resumed with its own settings gives its result back, untouched (study scripts check runs so)
    result = (tmp_path / "parts" / "result.json").read_bytes()
    assert train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc", steps=4, resume=True)) == again
    assert (tmp_path / "parts" / "result.json").read_bytes() == result
    with pytest.raises(ValueError, match="trained for 4 updates"):
        train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc", steps=2, resume=True))
    (tmp_path / "parts" / "result.json").unlink()  # cut while evaluating: the checkpoint still says 4 updates
    with pytest.raises(ValueError, match="trained for 4 updates"):
        train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc", steps=2, resume=True))
    (tmp_path / "parts" / "result.json").write_bytes(result)
    # other evaluation settings than the result's: evaluated again, not the old result
    other = train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc", steps=4, eval_episodes=2, resume=True))
    assert other["eval"]["episodes_per_task"] == 2 and other["steps"] == 4
    train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc", resume=True))
    logs = d3rlpy_logs(tmp_path / "whole")  # the run's own epochs and steps, one header per gradient file
    assert [r[:2] for r in logs["critic_loss.csv"]] == [["1", "4"], ["2", "8"]]
    grads = [v for k, v in logs.items() if k.endswith("_grad.csv")]
    assert grads and all([r[:2] for r in v] == [["epoch", "step"], ["1", "4"], ["2", "8"]] for v in grads)
    assert d3rlpy_logs(tmp_path / "parts") == logs
    a = load_file(str(tmp_path / "whole" / "checkpoint" / "ckpt-8" / "networks.safetensors"))
    b = load_file(str(tmp_path / "parts" / "checkpoint" / "ckpt-8" / "networks.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    with pytest.raises(ValueError, match="--resume"):
        train_baseline(cfg(hopper_data, tmp_path / "parts", algo="iql", resume=True))
    with pytest.raises(ValueError, match="already holds"):
        train_baseline(cfg(hopper_data, tmp_path / "parts", algo="td3+bc"))


def test_a_learning_curve_leaves_training_unchanged_and_survives_a_resume(hopper_data, tmp_path):
    from safetensors.torch import load_file

    with pytest.raises(ValueError, match="multiple of --steps-per-epoch"):
        train_baseline(cfg(hopper_data, tmp_path / "bad", algo="iql", eval_every=6))
    assert not (tmp_path / "bad").exists()
    plain = train_baseline(cfg(hopper_data, tmp_path / "plain", algo="iql", steps=12))
    whole = train_baseline(cfg(hopper_data, tmp_path / "whole", algo="iql", steps=12, eval_every=4))
    assert "curve" not in plain and [c["step"] for c in whole["curve"]] == [4, 8, 12]
    assert whole["curve"][-1]["score_standard"] == whole["score"] == plain["score"]
    assert all(np.isfinite(c["score_standard"]) for c in whole["curve"])
    a = load_file(str(tmp_path / "plain" / "checkpoint" / "ckpt-12" / "networks.safetensors"))
    b = load_file(str(tmp_path / "whole" / "checkpoint" / "ckpt-12" / "networks.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # evaluating did not touch training
    # in two invocations, the second cut between its checkpoint at 8 and the point there: the same curve
    train_baseline(cfg(hopper_data, tmp_path / "parts", algo="iql", steps=8, eval_every=4))
    curve = tmp_path / "parts" / "curve.jsonl"
    assert [json.loads(x)["step"] for x in curve.read_text().splitlines()] == [4]  # 8 was the end: not a point
    res = train_baseline(cfg(hopper_data, tmp_path / "parts", algo="iql", steps=12, eval_every=4, resume=True))
    assert res["curve"] == whole["curve"]


def test_a_run_interrupted_while_saving_resumes_from_the_last_whole_checkpoint(hopper_data, tmp_path, monkeypatch):
    """The second epoch's save dies after its networks are written, before its optimiser states:
    the checkpoint on disk is still the first epoch's, whole, and resuming gives the uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    train_baseline(cfg(hopper_data, tmp_path / "whole", algo="td3+bc"))
    real, calls = torch.save, []

    def dies_on_the_second_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dies_on_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train_baseline(cfg(hopper_data, tmp_path / "cut", algo="td3+bc"))
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 4
    train_baseline(cfg(hopper_data, tmp_path / "cut", algo="td3+bc", resume=True))
    folder = [json.loads((tmp_path / d / "checkpoint" / "state.json").read_text())["checkpoint"] for d in ("whole", "cut")]
    assert folder == ["ckpt-8", "ckpt-8"]
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoint").iterdir()) == ["ckpt-8", "state.json"]
    a = load_file(str(tmp_path / "whole" / "checkpoint" / "ckpt-8" / "networks.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint" / "ckpt-8" / "networks.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert d3rlpy_logs(tmp_path / "cut") == d3rlpy_logs(tmp_path / "whole")  # the epoch-2 row logged before the kill: once


def d3rlpy_logs(run) -> dict:
    """d3rlpy's CSV logs of a run: every file's (epoch, step) column pairs, and the values where
    they are not timings."""
    logs = {}
    for path in sorted((run / "d3rlpy").rglob("*.csv")):
        rows = [x.split(",") for x in path.read_text().splitlines()]
        logs[path.name] = [r[:2] if path.name.startswith("time_") else r for r in rows]
    return logs


def test_resume_refuses_a_run_whose_data_subset_an_older_rule_chose(hopper_data, tmp_path):
    train_baseline(cfg(hopper_data, tmp_path / "parts", algo="bc", steps=4, data_ratio=0.5))
    path = tmp_path / "parts" / "config.json"
    doc = json.loads(path.read_text())
    assert doc["baseline"]["data_subset"] == SUBSET_RULE
    doc["baseline"].pop("data_subset")  # as dtune wrote it before the subsets were nested
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="older rule.*without --resume"):
        train_baseline(cfg(hopper_data, tmp_path / "parts", algo="bc", data_ratio=0.5, resume=True))


def test_dataset_conversion_and_data_ratio(hopper_data):
    from dtune.data.dataset import TrajectoryData

    ds, info = mdp_dataset(hopper_data, "hopper", "random")
    # the hopper falls (a termination) before the 40-step limit, else the episode is a timeout
    assert [bool(e.terminated) for e in ds.episodes] == [len(e.rewards) < 40 for e in ds.episodes]
    timeouts = sum(not e.terminated for e in ds.episodes)  # d3rlpy drops a timeout's last transition
    assert info["episodes"] == 6 and ds.transition_count == info["steps"] - timeouts
    half, hinfo = mdp_dataset(hopper_data, "hopper", "random", data_ratio=0.5, seed=2)
    dt = TrajectoryData(hopper_data, "hopper", data_ratio=0.5, ratio_seed=2)
    assert hinfo["episodes"] == 3 and hinfo["steps"] == dt.task_info["hopper"]["steps"]  # the DT run's subset
    np.testing.assert_array_equal(np.concatenate([e.observations for e in half.episodes]),
                                  dt.domains[0].tasks[0].obs)


def test_replay_from_keeps_the_dt_runs_later_episodes(hopper_data, tmp_path):
    """`--replay-from` gives a baseline the same later episodes of a replay buffer as a DT run."""
    import shutil

    from dtune.data.dataset import TrajectoryData
    from dtune.data.storage import dataset_dir

    shutil.copytree(dataset_dir(hopper_data, "hopper", "random"), dataset_dir(tmp_path, "hopper", "medium-replay"))
    ds, info = mdp_dataset(tmp_path, "hopper", "medium-replay", replay_from=0.5)
    dt = TrajectoryData(tmp_path, "hopper", source="medium-replay", replay_from=0.5)
    assert info["episodes"] == 3 == dt.task_info["hopper"]["episodes"] and info["replay_from"] == 0.5
    np.testing.assert_array_equal(np.concatenate([e.observations for e in ds.episodes]), dt.domains[0].tasks[0].obs)
    whole = TrajectoryData(tmp_path, "hopper", source="medium-replay")
    np.testing.assert_array_equal(dt.domains[0].tasks[0].obs, whole.domains[0].tasks[0].obs[-len(dt.domains[0].tasks[0].obs):])
    with pytest.raises(ValueError, match="none of the run's datasets is one \\(hopper: random\\)"):
        mdp_dataset(hopper_data, "hopper", "random", replay_from=0.5)  # not a replay buffer


def test_dtune_evaluate_scores_a_baseline_run_again_and_leaves_it_untouched(hopper_data, tmp_path, capsys):
    """`dtune evaluate --checkpoint RUN`: the policy of a finished baseline run, rebuilt on its data subset,
    scores as the run did with the same episodes, and with more; the run folder is only read."""
    from dtune.models.io import CheckpointError
    from dtune.recipes.evaluate import EvalConfig, evaluate

    run = tmp_path / "bc"
    r = train_baseline(cfg(hopper_data, run, algo="bc", data_ratio=0.5, seed=1, eval_episodes=2))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = evaluate(EvalConfig(checkpoint=str(run), episodes=2, progress=False, json=str(tmp_path / "ev.json")))
    same = ("score", "return_mean", "return_std", "episodes")
    assert {k: again["tasks"]["hopper"][k] for k in same} == {k: r["eval"]["tasks"]["hopper"][k] for k in same}
    assert again["tasks"]["hopper"]["score"] == r["score"] and again["step"] == 8 and again["method"] == "bc"
    assert json.loads((tmp_path / "ev.json").read_text())["tasks"]["hopper"]["score"] == r["score"]
    more = evaluate(EvalConfig(checkpoint=str(run), episodes=3, targets="protocol", progress=False))
    assert "not conditioned on a return" in capsys.readouterr().out
    assert more["tasks"]["hopper"]["episodes"] == 3
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match="trained on hopper only"):
        evaluate(EvalConfig(checkpoint=str(run), tasks="walker2d", progress=False))
    kept = tmp_path / "kept"  # a study's copy without its weights
    kept.mkdir()
    (kept / "config.json").write_bytes((run / "config.json").read_bytes())
    (kept / "result.json").write_bytes((run / "result.json").read_bytes())
    with pytest.raises(CheckpointError, match=f"no checkpoint.*score the run it was copied from, {run}"):
        evaluate(EvalConfig(checkpoint=str(kept), progress=False))
    with pytest.raises(CheckpointError, match="takes no adapter"):
        evaluate(EvalConfig(checkpoint=str(run), adapter=str(run), progress=False))
    # a copy whose result says it trained on other data, and one not finished: refused, and noted
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run, other)
    doc = json.loads((other / "result.json").read_text())
    doc["data"]["episodes"] += 1
    (other / "result.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not the one the run .* trained on .*episodes"):
        evaluate(EvalConfig(checkpoint=str(other), progress=False))
    (other / "result.json").unlink()
    cut = evaluate(EvalConfig(checkpoint=str(other), episodes=2, seed=7, progress=False))
    assert "cut before it finished" in capsys.readouterr().out
    assert any("cut before it finished" in n for n in cut["notes"]) and any("seed 7" in n for n in cut["notes"])
