"""SAC replay-buffer datasets: a tiny budget writes a valid dataset, an interrupted run resumes to
exactly the uninterrupted result, conflicts and bad input are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtune.data import sac
from dtune.data.sac import SACConfig, collect_sac, learned
from dtune.data.storage import DatasetError, dataset_dir, read_episodes, read_metadata

TASK = "cartpole-balance"


def tiny(root, **kw) -> SACConfig:
    return SACConfig(**{"tasks": TASK, "steps": 100, "horizon": 20, "learning_starts": 30, "batch_size": 8,
                        "hidden": 8, "checkpoint_every": 30, "random_episodes": 2, "workers": 1,
                        "data_dir": str(root), "progress": False, **kw})


def assert_same_run(a_root, b_root):
    """The same dataset and the same final agent in two data roots."""
    from safetensors.torch import load_file

    a, b = read_episodes(a_root, TASK, "sac-replay"), read_episodes(b_root, TASK, "sac-replay")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    wa = load_file(str(dataset_dir(a_root, TASK, "sac-replay") / "agent" / "policy.safetensors"))
    wb = load_file(str(dataset_dir(b_root, TASK, "sac-replay") / "agent" / "policy.safetensors"))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    root = tmp_path_factory.mktemp("sac-whole")
    summary = collect_sac(tiny(root))
    return root, summary


def test_tiny_budget_writes_a_valid_minari_dataset(whole):
    import minari

    root, summary = whole
    assert summary[0]["done"] and summary[0]["steps"] == 100
    path = dataset_dir(root, TASK, "sac-replay")
    ds = minari.load_dataset(str(path))  # Minari's own loader reads it (the agent/ folder beside data/ too)
    eps = list(ds.iterate_episodes())
    assert len(eps) == 5 and all(len(e.rewards) == 20 for e in eps)
    assert all(e.truncations[-1] and not e.terminations.any() for e in eps)  # DMC: time limit, no terminal
    assert all(len(e.observations) == 21 for e in eps)
    meta = read_metadata(root, TASK, "sac-replay")
    d = meta["dtune"]
    ep = read_episodes(root, TASK, "sac-replay")
    returns = np.add.reduceat(ep["rewards"].astype(np.float64), np.arange(0, 100, 20))
    assert d["ref_max_score"] == pytest.approx(returns.mean(), rel=1e-6)  # the dataset's mean return
    assert meta["ref_min_score"] == pytest.approx(d["ref_min_score"])  # Minari's field, for its users
    assert isinstance(d["sac_learned"], bool) and "random_reference" in d
    assert (path / "agent" / "policy.safetensors").exists()
    assert (root / ".work" / "sac-replay" / TASK / "state.json").exists()  # kept: a larger --steps continues it


def test_the_stored_agent_loads_and_acts(whole):
    root, _ = whole
    agent = sac.load_agent(dataset_dir(root, TASK, "sac-replay") / "agent")
    action, _ = agent.predict(np.zeros(5, np.float32), deterministic=True)
    assert action.shape == (1,) and -1 <= float(action[0]) <= 1


def test_interrupted_run_resumes_to_the_uninterrupted_result(whole, tmp_path):
    """Two sessions of 40 steps then the rest (new agent objects each time, as after a restart)
    give the same dataset and the same final agent as one uninterrupted run."""
    root, _ = whole
    first = collect_sac(tiny(tmp_path, session_steps=40))
    assert not first[0]["done"] and first[0]["steps"] == 40
    state = json.loads((tmp_path / ".work" / "sac-replay" / TASK / "state.json").read_text())
    assert state["episodes"] == 2 and state["num_timesteps"] == 40
    assert collect_sac(tiny(tmp_path, session_steps=40))[0]["steps"] == 80  # a second session
    assert collect_sac(tiny(tmp_path))[0]["done"]
    assert_same_run(root, tmp_path)
    assert collect_sac(tiny(tmp_path)) == []  # finished: nothing left to do


def test_other_settings_conflict_and_bad_input(whole, tmp_path):
    root, _ = whole
    with pytest.raises(DatasetError, match="other settings"):
        collect_sac(tiny(root, gamma=0.9))
    collect_sac(tiny(tmp_path, session_steps=20))  # an unfinished run
    with pytest.raises(DatasetError, match="--overwrite"):
        collect_sac(tiny(tmp_path, hidden=16))
    with pytest.raises(ValueError, match="--steps"):
        collect_sac(tiny(tmp_path, steps=0))
    with pytest.raises(ValueError, match="--session-steps"):
        collect_sac(tiny(tmp_path, session_steps=0))


def test_a_kill_in_the_middle_of_a_checkpoint_resumes_exactly(whole, tmp_path, monkeypatch):
    """A process killed after some of a checkpoint's files are written (here: before its episodes)
    resumes from the previous whole checkpoint, to exactly the uninterrupted result."""
    root, _ = whole
    real, calls = sac._save_episodes, [0]

    def dying(path, episodes):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint: agent, optimiser and buffer written, the rest not
            raise KeyboardInterrupt("killed while saving")
        return real(path, episodes)

    monkeypatch.setattr(sac, "_save_episodes", dying)
    with pytest.raises(KeyboardInterrupt):
        collect_sac(tiny(tmp_path))
    monkeypatch.setattr(sac, "_save_episodes", real)
    wd = tmp_path / ".work" / "sac-replay" / TASK
    state = json.loads((wd / "state.json").read_text())
    assert state["num_timesteps"] == 40 and (wd / state["checkpoint"] / "episodes.npz").exists()
    assert collect_sac(tiny(tmp_path))[0]["done"]
    assert_same_run(root, tmp_path)
    assert sorted(p.name for p in wd.iterdir() if p.name.startswith("ckpt-")) == [json.loads(
        (wd / "state.json").read_text())["checkpoint"]]  # older checkpoints deleted


def test_learned_flag_on_hand_made_returns():
    flat = np.full(20, 10.0)
    assert learned(flat, random_mean=10.0, random_std=1.0) == (False, 0.0)
    rising = np.linspace(10, 500, 20)
    ok, gain = learned(rising, random_mean=10.0, random_std=5.0)
    assert ok and gain == pytest.approx(np.mean(rising[-2:]) - 10.0)
    assert learned(np.zeros(0), 0.0, 0.0) == (False, 0.0)
    # a sparse task (random 146 ± 285 over 10 episodes, DMC's best return 1000): a last tenth that
    # succeeds in 7 of 10 episodes has learned; the bar is 3 standard errors of the difference of the
    # means, not 3 random standard deviations (which put it above 1000)
    sparse = np.array([0.0] * 90 + [1000, 0, 1000, 1000, 0, 1000, 1000, 0, 1000, 1000])
    assert learned(sparse, 146.2, 285.19, random_episodes=10)[0]
    assert not learned(sparse, 146.2, 285.19, random_episodes=1)[0]  # one random episode: not enough evidence
    assert not learned(np.array([0.0] * 95 + [1000] + [0.0] * 4), 146.2, 285.19, random_episodes=10)[0]


def test_data_report_and_list_show_the_references(whole, tmp_path, capsys):
    from dtune.cli import main
    from dtune.report.data import data_report

    root, summary = whole
    md = data_report(TASK, "sac-replay", str(root), str(tmp_path / "rep"))
    assert TASK in md and "ref min (random)" in md
    rows = json.loads((tmp_path / "rep" / "datasets.json").read_text())
    assert rows[0]["random_reference"] == pytest.approx(summary[0]["ref_min_score"])
    assert rows[0]["reference"].startswith("data")
    # a suite with D4RL-style references: the data's normalised score uses them
    from dtune.tasks import get_task
    from tests.conftest import collect_tiny

    collect_tiny(tmp_path / "hop", tasks="hopper", episodes=3, horizon=20, source="random")
    spec = get_task("hopper")
    assert "hopper" in data_report("hopper", "random", str(tmp_path / "hop"), str(tmp_path / "rep2"))
    row = json.loads((tmp_path / "rep2" / "datasets.json").read_text())[0]
    assert row["random_reference"] == spec.ref_min_score and row["ref_max_score"] == spec.ref_max_score
    assert row["normalized_data_score"] == pytest.approx(
        100 * (row["return_mean"] - spec.ref_min_score) / (spec.ref_max_score - spec.ref_min_score))
    assert rows[0]["steps"] == 100 and (tmp_path / "rep" / "learning_curves.png").stat().st_size > 10_000
    main(["data", "list", "--data-dir", str(root)])
    out = capsys.readouterr().out
    assert "random ref (= ref min)" in out and f"{summary[0]['ref_min_score']:.2f}" in out


def test_rollouts_of_the_stored_agent(whole, tmp_path):
    """D4RL's medium recipe, second half: the stored agent's own episodes as a new dataset,
    reproducible, refusing to overwrite the agent's dataset."""
    import shutil

    from dtune.data.sac import RolloutConfig, collect_rollouts

    root, _ = whole
    shutil.copytree(root / "dtune", tmp_path / "dtune")
    cfg = lambda **kw: RolloutConfig(**{"tasks": TASK, "agent": "sac-replay", "source": "medium", "steps": 30,  # noqa: E731
                                        "horizon": 20, "workers": 1, "data_dir": str(tmp_path), "progress": False, **kw})
    out = collect_rollouts(cfg())
    assert out[0]["steps"] == 40 and out[0]["episodes"] == 2  # rounded up to whole episodes
    meta = read_metadata(tmp_path, TASK, "medium")["dtune"]
    assert meta["agent"] == "sac-replay" and meta["ref_min_score"] == read_metadata(tmp_path, TASK, "sac-replay")["dtune"]["ref_min_score"]
    first = read_episodes(tmp_path, TASK, "medium")
    assert collect_rollouts(cfg()) == []  # done: skipped
    collect_rollouts(cfg(source="medium2"))
    np.testing.assert_array_equal(first["actions"], read_episodes(tmp_path, TASK, "medium2")["actions"])  # seeded
    with pytest.raises(ValueError, match="replace the dataset that holds the agent"):
        collect_rollouts(cfg(source="sac-replay"))
    with pytest.raises(DatasetError, match="no stored agent"):
        collect_rollouts(cfg(agent="random", source="x"))
    # LaMo's filter: only episodes above a return; the budget counts kept steps
    returns = np.add.reduceat(first["rewards"], np.cumsum(np.r_[0, first["lengths"][:-1]]))
    cut = float(np.sort(returns)[0])  # drops at least the worse of the first two episodes
    kept = collect_rollouts(cfg(source="filtered", min_return=cut))[0]
    ep = read_episodes(tmp_path, TASK, "filtered")
    assert kept["steps"] >= 30 and np.all(np.add.reduceat(ep["rewards"], np.cumsum(np.r_[0, ep["lengths"][:-1]])) > cut)
    assert read_metadata(tmp_path, TASK, "filtered")["dtune"]["episodes_rolled_out"] > kept["episodes"]
    with pytest.raises(DatasetError, match="min-return"):
        collect_rollouts(cfg(source="none", min_return=1e9))


def test_stop_at_a_return_evaluates_and_stops_early(tmp_path):
    """--stop-at: training stops at the first checkpoint whose evaluation reaches the level; the
    buffer up to then is the dataset (D4RL's medium-replay)."""
    out = collect_sac(tiny(tmp_path, source="medium-replay", stop_at="-1"))  # any return reaches -1
    assert out[0]["done"] and out[0]["steps"] == 40 and len(out[0]["evaluations"]) == 1
    meta = read_metadata(tmp_path, TASK, "medium-replay")["dtune"]
    assert meta["stopped_early"] and meta["stop_at_return"] == -1.0 and meta["stats"]["steps"] == 40
    with pytest.raises(ValueError, match="defines no such level"):
        collect_sac(tiny(tmp_path, stop_at="medium"))  # DMC has no D4RL levels
    from dtune.data.sac import stop_return

    assert stop_return("medium", "hopper") == 1400.0


def test_a_finished_run_extends_to_a_larger_budget_exactly(whole, tmp_path):
    """`--steps` beyond a finished run continues it from its kept checkpoint: 60 steps, then 100,
    give the dataset and agent of one 100-step run; other settings still conflict."""
    root, _ = whole
    assert collect_sac(tiny(tmp_path, steps=60))[0]["steps"] == 60
    assert read_metadata(tmp_path, TASK, "sac-replay")["dtune"]["steps"] == 60
    with pytest.raises(DatasetError, match="other settings"):
        collect_sac(tiny(tmp_path, steps=100, hidden=16))
    assert collect_sac(tiny(tmp_path, steps=100))[0]["steps"] == 100
    assert_same_run(root, tmp_path)
    assert read_metadata(tmp_path, TASK, "sac-replay")["dtune"]["steps"] == 100
    # budgets that are not whole episodes: 50 ends at 60, then 70 at 80, as one run asked for 70
    odd, direct = tmp_path / "odd", tmp_path / "direct"
    assert collect_sac(tiny(odd, steps=50))[0]["steps"] == 60
    assert collect_sac(tiny(odd, steps=70))[0]["steps"] == 80
    collect_sac(tiny(direct, steps=70))
    a, b = read_episodes(direct, TASK, "sac-replay"), read_episodes(odd, TASK, "sac-replay")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    collect_sac(tiny(odd, steps=70, keep_checkpoint=False))  # done: only its checkpoint goes
    assert not (odd / ".work").exists() and read_episodes(odd, TASK, "sac-replay")["lengths"].sum() == 80
    # without a kept checkpoint there is nothing to continue: a larger budget conflicts
    other = tmp_path / "other"
    collect_sac(tiny(other, steps=60, keep_checkpoint=False))
    assert not (other / ".work").exists()
    with pytest.raises(DatasetError, match="other settings"):
        collect_sac(tiny(other, steps=100))
