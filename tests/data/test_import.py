"""`import_minari`: a Minari dataset already on disk (written here with Minari's own storage, as
D4RL's and DataCollector's datasets are) becomes dtune's dataset `(task, source)`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from dtune.data.importer import import_minari
from dtune.data.storage import DatasetError, dataset_dir, list_datasets, read_episodes, read_metadata
from dtune.tasks.kitchen import TASKS


def write_minari(folder, obs_space, act_space, episodes, metadata=None):
    """A Minari dataset at `folder` (its `data/` inside); `episodes`: dicts of EpisodeBuffer fields."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    (folder / "data").mkdir(parents=True)
    storage = MinariStorage.new(folder / "data", observation_space=obs_space, action_space=act_space)
    storage.update_episodes([EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)])
    storage.update_metadata({"dataset_id": f"test/{folder.name}-v0", "minari_version": minari.__version__,
                             **(metadata or {})})
    return folder


def box(n):
    return gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)


def flat_episode(rng, n, obs_dim, act_dim, seed, end="truncated", success=None, act_scale=1.0):
    term, trunc = np.zeros(n, bool), np.zeros(n, bool)
    (term if end == "terminated" else trunc)[-1] = True
    infos = {} if success is None else {"success": np.concatenate([[False], success])}  # reset() info first
    return dict(seed=seed, observations=rng.standard_normal((n + 1, obs_dim)).astype(np.float32),
                actions=(act_scale * rng.uniform(-1, 1, (n, act_dim))).astype(np.float32),
                rewards=rng.standard_normal(n), terminations=term, truncations=trunc, infos=infos)


def test_box_observations_with_references_success_and_ends(tmp_path):
    rng = np.random.default_rng(0)
    succ = np.zeros(7, bool)
    succ[-2:] = True
    eps = [flat_episode(rng, 7, 12, 2, 11, "truncated", succ), flat_episode(rng, 5, 12, 2, 12, "terminated", np.zeros(5, bool))]
    src = write_minari(tmp_path / "minari" / "reach", box(12), gym.spaces.Box(-1, 1, (2,), np.float32), eps,
                       {"ref_min_score": -3.0, "ref_max_score": 42.0})
    out = import_minari(src, "reacher2d", "medium", tmp_path / "dt")
    assert out == dataset_dir(tmp_path / "dt", "reacher2d", "medium")
    assert list_datasets(tmp_path / "dt") == [("reacher2d", "medium")]
    ep = read_episodes(tmp_path / "dt", "reacher2d", "medium")
    assert ep["lengths"].tolist() == [7, 5]
    np.testing.assert_allclose(ep["observations"][:7], eps[0]["observations"][:7])
    np.testing.assert_allclose(ep["observations"][7:], eps[1]["observations"][:5])
    np.testing.assert_allclose(ep["actions"], np.concatenate([e["actions"] for e in eps]))
    np.testing.assert_allclose(ep["rewards"], np.concatenate([e["rewards"] for e in eps]), rtol=1e-6)
    assert ep["success"].tolist() == succ.tolist() + [False] * 5  # the reset() info is dropped
    assert ep["terminals"].tolist() == [False] * 7 + [False] * 4 + [True]  # truncation is not a terminal
    meta = read_metadata(tmp_path / "dt", "reacher2d", "medium")
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-3.0, 42.0)
    assert meta["dtune"]["ref_min_score"] == -3.0 and meta["dtune"]["stats"]["episodes"] == 2
    assert meta["dtune"]["imported_from"]["dataset_id"] == "test/reach-v0"
    # the final observation and the time-limit truncation are stored as Minari has them
    import h5py

    with h5py.File(out / "data" / "main_data.hdf5") as f:
        np.testing.assert_allclose(f["episode_0/observations"][()], eps[0]["observations"])
        assert f["episode_0/truncations"][-1] and not f["episode_0/terminations"][-1]
        assert f["episode_1/terminations"][-1] and not f["episode_1/truncations"][-1]
        assert f["episode_0"].attrs["seed"] == 11


def test_kitchen_dict_observations_by_minari_id(tmp_path, monkeypatch):
    """D4RL's kitchen data in Minari: dict observations (59-dim `observation` + goals) -> the `observation` entry;
    no references in the data; an episode whose flags fire mid-way is split there."""
    rng = np.random.default_rng(1)
    goal = gym.spaces.Dict({k: box(1) for k in TASKS["kitchen-complete"]})
    obs_space = gym.spaces.Dict({"achieved_goal": goal, "desired_goal": goal, "observation": box(59)})

    def episode(n, term_at):
        t = np.zeros(n, bool)
        t[term_at] = True
        g = {k: np.zeros((n + 1, 1), np.float32) for k in TASKS["kitchen-complete"]}
        return dict(seed=None, observations={"achieved_goal": g, "desired_goal": g,
                                             "observation": rng.standard_normal((n + 1, 59)).astype(np.float32)},
                    actions=rng.uniform(-1.2, 1.2, (n, 9)).astype(np.float32), rewards=np.ones(n),
                    terminations=t, truncations=np.zeros(n, bool), infos={})

    eps = [episode(6, [2, 5]), episode(4, [3])]  # the first: two episodes back to back
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    write_minari(tmp_path / "minari" / "D4RL" / "kitchen" / "complete-v2", obs_space,
                 gym.spaces.Box(-1, 1, (9,), np.float32), eps)
    import_minari("D4RL/kitchen/complete-v2", "kitchen-complete", "complete", tmp_path / "dt")
    ep = read_episodes(tmp_path / "dt", "kitchen-complete", "complete")
    assert ep["observations"].shape == (10, 59) and ep["actions"].shape == (10, 9)
    assert ep["lengths"].tolist() == [3, 3, 4]
    assert ep["terminals"].tolist() == [False, False, True] * 2 + [False] * 3 + [True]
    np.testing.assert_allclose(ep["observations"][3:6], eps[0]["observations"]["observation"][3:6])
    assert np.abs(ep["actions"]).max() <= 1.0  # clipped to dtune's action range
    meta = read_metadata(tmp_path / "dt", "kitchen-complete", "complete")
    assert "ref_min_score" not in meta and meta["dtune"]["imported_from"]["observation_key"] == "observation"
    assert meta["dtune"]["imported_from"]["episodes_split"] == 1 and meta["dtune"]["clipped_action_steps"] > 0


def kitchen_goal_episode(keys, n=3):
    g = {k: np.zeros((n + 1, 1), np.float32) for k in keys}
    return dict(seed=0, observations={"desired_goal": g, "observation": np.zeros((n + 1, 59), np.float32)},
                actions=np.zeros((n, 9), np.float32), rewards=np.ones(n), terminations=np.zeros(n, bool),
                truncations=np.eye(n, dtype=bool)[-1], infos={})


def test_kitchen_data_of_other_subtasks_is_refused_and_goes_to_its_own_task(tmp_path):
    """D4RL's kitchen-mixed data rewards the bottom burner, not the slide cabinet: it is not
    kitchen-complete's data (its returns would count other subtasks than the evaluation)."""
    mixed = TASKS["kitchen-mixed"]
    space = gym.spaces.Dict({"desired_goal": gym.spaces.Dict({k: box(1) for k in mixed}), "observation": box(59)})
    src = write_minari(tmp_path / "mixed", space, gym.spaces.Box(-1, 1, (9,), np.float32), [kitchen_goal_episode(mixed)])
    with pytest.raises(DatasetError, match="bottom burner.*import it as task kitchen-mixed"):
        import_minari(src, "kitchen-complete", "mixed", tmp_path / "dt")
    assert not (tmp_path / "dt" / "dtune").exists() or not list((tmp_path / "dt" / "dtune").rglob("*.hdf5"))
    import_minari(src, "kitchen-mixed", "mixed", tmp_path / "dt")
    assert list_datasets(tmp_path / "dt") == [("kitchen-mixed", "mixed")]
    assert TASKS["kitchen-mixed"] == ("microwave", "kettle", "bottom burner", "light switch")  # D4RL's mixed


def test_clear_errors(tmp_path):
    rng = np.random.default_rng(2)
    src = write_minari(tmp_path / "m", box(12), gym.spaces.Box(-1, 1, (2,), np.float32), [flat_episode(rng, 3, 12, 2, 0)])
    with pytest.raises(DatasetError, match=r"12 dims and its actions 2, the task has 59 and 9"):
        import_minari(src, "kitchen-complete", "complete", tmp_path / "dt")
    with pytest.raises(DatasetError, match="no Minari dataset at"):
        import_minari(tmp_path / "nowhere", "reacher2d", "medium", tmp_path / "dt")
    with pytest.raises(ValueError, match="no version suffix"):
        import_minari(src, "reacher2d", "medium-v0", tmp_path / "dt")
    import_minari(src / "data", "reacher2d", "medium", tmp_path / "dt")  # the data/ folder itself is fine too
    with pytest.raises(DatasetError, match="already exists"):
        import_minari(src, "reacher2d", "medium", tmp_path / "dt")
    import_minari(src, "reacher2d", "medium", tmp_path / "dt", overwrite=True)
    img = write_minari(tmp_path / "img", gym.spaces.Dict({"pixels": box(4)}), gym.spaces.Box(-1, 1, (2,)),
                       [dict(seed=0, observations={"pixels": np.zeros((3, 4), np.float32)},
                             actions=np.zeros((2, 2), np.float32), rewards=np.zeros(2),
                             terminations=np.zeros(2, bool), truncations=np.array([False, True]), infos={})])
    with pytest.raises(DatasetError, match="without an 'observation' entry"):
        import_minari(img, "reacher2d", "x", tmp_path / "dt")
    nested = write_minari(tmp_path / "nested", gym.spaces.Dict({"observation": gym.spaces.Dict({"a": box(12)})}),
                          gym.spaces.Box(-1, 1, (2,)),
                          [dict(seed=0, observations={"observation": {"a": np.zeros((3, 12), np.float32)}},
                                actions=np.zeros((2, 2), np.float32), rewards=np.zeros(2),
                                terminations=np.zeros(2, bool), truncations=np.array([False, True]), infos={})])
    with pytest.raises(DatasetError, match="'observation' entry holds Dict observations"):
        import_minari(nested, "reacher2d", "x", tmp_path / "dt")


def test_malformed_episodes_are_refused_and_nothing_is_written(tmp_path):
    rng = np.random.default_rng(3)
    ep = flat_episode(rng, 3, 12, 2, 0)
    ep["actions"] = ep["actions"][:2]  # 3 steps, 2 actions
    src = write_minari(tmp_path / "bad", box(12), gym.spaces.Box(-1, 1, (2,), np.float32), [ep])
    with pytest.raises(DatasetError, match=r"episode 0 has 3 rewards but actions of shape \(2, 2\)"):
        import_minari(src, "reacher2d", "bad", tmp_path / "dt")
    ep = flat_episode(rng, 3, 12, 2, 0)
    ep["terminations"] = ep["terminations"][:2]
    src = write_minari(tmp_path / "flags", box(12), gym.spaces.Box(-1, 1, (2,), np.float32), [ep])
    with pytest.raises(DatasetError, match="2 terminations and 3 truncations"):
        import_minari(src, "reacher2d", "bad", tmp_path / "dt")
    assert list_datasets(tmp_path / "dt") == []


def test_the_command_line_imports(tmp_path, capsys):
    from dtune.cli import main

    rng = np.random.default_rng(1)
    eps = [flat_episode(rng, 6, 12, 2, 3, "truncated")]
    src = write_minari(tmp_path / "minari" / "r", box(12), gym.spaces.Box(-1, 1, (2,), np.float32), eps)
    assert main(["data", "import", str(src), "--task", "reacher2d", "--source", "mine",
                 "--data-dir", str(tmp_path / "dt")]) == 0
    assert "1 episodes, 6 steps" in capsys.readouterr().out
    assert list_datasets(tmp_path / "dt") == [("reacher2d", "mine")]
    assert main(["data", "import", str(src), "--task", "hopper", "--data-dir", str(tmp_path / "dt")]) == 2  # sizes
