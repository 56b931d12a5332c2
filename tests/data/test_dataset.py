import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from dtune.data.dataset import (SUBSET_RULE, TrajectoryData, WindowSampler, normalise_states, returns_to_go,
                                trajectory_subset)
from dtune.data.storage import read_episodes
from dtune.tasks import get_task, layout_for

STATE_DIM = 154  # Meta-World + DMC: the L2M layout


def test_returns_to_go_per_episode():
    r = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    np.testing.assert_allclose(returns_to_go(r, np.array([3, 2])), [6, 5, 3, 30, 20])


@pytest.fixture(scope="module")
def data(tiny_data):
    return TrajectoryData(tiny_data, "reach-v3,door-open-v3,cartpole-balance")


def test_domains_and_task_info(data):
    assert [d.name for d in data.domains] == ["metaworld", "dmc"]
    assert data.steps == 2 * 6 * 30 + 3 * 30
    info = data.task_info["reach-v3"]
    assert info["episodes"] == 6 and info["return_max"] >= info["return_mean"]


def test_sampler_shapes_padding_and_masks(data):
    k, b = 5, 64
    batch = WindowSampler(data, k, b, seed=0).sample()
    assert batch["states"].shape == (b, k, STATE_DIM) and batch["actions"].shape == (b, k, 6)
    for key in ("rtg", "rewards", "timesteps", "valid"):
        assert batch[key].shape == (b, k)
    is_mw = batch["task_id"] < 2
    assert is_mw.sum() == b // 2  # domains balanced
    # padded state dims and action dims are zero, and masks say which are real
    mw_slot = list(data.layout.columns(get_task("reach-v3")))
    cp_slot = list(data.layout.columns(get_task("cartpole-balance")))
    other = np.setdiff1d(np.arange(STATE_DIM), mw_slot)
    assert np.all(batch["states"][is_mw][..., other] == 0)
    assert np.all(batch["states"][~is_mw][..., np.setdiff1d(np.arange(STATE_DIM), cp_slot)] == 0)
    np.testing.assert_array_equal(batch["action_mask"][is_mw][0], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(batch["action_mask"][~is_mw][0], [1, 0, 0, 0, 0, 0])
    assert np.all(batch["actions"][is_mw][..., 4:] == 0) and np.all(batch["actions"][~is_mw][..., 1:] == 0)
    # windows are left-padded at an episode start and contiguous otherwise
    v, t = batch["valid"], batch["timesteps"]
    assert np.all(np.diff(v.astype(int), axis=1) >= 0)
    for row in range(b):
        real = t[row][v[row]]
        np.testing.assert_array_equal(np.diff(real), 1)
        assert v[row].sum() == min(k, real[-1] + 1)
    assert np.all(batch["states"][~v] == 0) and np.all(batch["rtg"][~v] == 0)


def test_rtg_and_rewards_scaled_by_the_tasks_reward_scale(data):
    batch = WindowSampler(data, 1, 400, seed=0).sample()
    first = batch["timesteps"][:, 0] == 0
    reach = first & (batch["task_id"] == 0)
    assert reach.any()
    raw = data.task_info["reach-v3"]["return_max"]
    assert batch["rtg"][reach, 0].max() * 200.0 <= raw * (1 + 1e-5)
    cp = batch["task_id"] == 2
    ep = read_episodes(data.root, "cartpole-balance", "random")
    assert set(np.round(batch["rewards"][cp, 0] * 100.0, 4)) <= set(np.round(ep["rewards"], 4))


def test_windows_match_the_episodes_on_disk(data):
    """Every window, rebuilt by hand from the dataset file: states z-scored in the task's
    columns, actions, rewards, returns-to-go and timesteps of the same episode."""
    from dtune.data.storage import read_episodes as read

    batch = WindowSampler(data, 4, 32, seed=5).sample()
    for row in range(32):
        task = data.tasks[batch["task_id"][row]]
        spec = get_task(task)
        ep = read(data.root, task, data.sources[task])
        starts = np.cumsum(ep["lengths"]) - ep["lengths"]
        cols = data.layout.columns(spec)
        for j in np.flatnonzero(batch["valid"][row]):
            t = batch["timesteps"][row, j]
            matches = [s + t for s in starts if s + t < len(ep["rewards"]) and t < ep["lengths"][list(starts).index(s)]]
            hits = [i for i in matches if np.allclose((ep["observations"][i] - data.state_mean[cols]) / data.state_std[cols],
                                                      batch["states"][row, j, cols], atol=1e-6)]
            assert hits, (task, row, j)
            i = hits[0]
            np.testing.assert_allclose(batch["actions"][row, j, : spec.act_dim], ep["actions"][i])
            assert batch["rewards"][row, j] == pytest.approx(ep["rewards"][i] / spec.reward_scale, rel=1e-6)


def test_sampler_is_deterministic_and_resumable(data):
    a = WindowSampler(data, 5, 32, seed=3)
    b = WindowSampler(data, 5, 32, seed=3)
    np.testing.assert_array_equal(a.sample()["states"], b.sample()["states"])
    state = a.state()
    x = a.sample()
    c = WindowSampler(data, 5, 32, seed=99)
    c.set_state(state)
    np.testing.assert_array_equal(c.sample()["actions"], x["actions"])


def test_trajectories_sampled_in_proportion_to_length(tiny_data):

    data = TrajectoryData(tiny_data, "reach-v3,door-open-v3", max_episodes=4)
    batch = WindowSampler(data, 1, 4000, seed=0).sample()
    # equal-length episodes: every task gets about half
    share = np.mean(batch["task_id"] == 0)
    assert 0.45 < share < 0.55


def test_cache_is_reused_and_rebuilt_when_broken(tiny_data):
    caches = sorted((tiny_data / ".cache").glob("reach-v3-expert-noise-*"))
    assert len(caches) == 1 and (caches[0] / "observations.npy").exists()
    # a new, broken file in its place (other loaders of this session keep mapping the old one)
    broken = caches[0] / ".broken"
    broken.write_bytes(b"not an array")
    os.replace(broken, caches[0] / "observations.npy")
    data = TrajectoryData(tiny_data, "reach-v3")
    assert data.task_info["reach-v3"]["episodes"] == 6


def test_a_cache_built_by_a_concurrent_process_is_kept(tiny_data, monkeypatch):
    """Two ranks of one run build the same cache at once: the loser keeps the winner's, leaves
    no temporary folder, and loads the same arrays."""
    from dtune.data import dataset

    shutil.rmtree(tiny_data / ".cache", ignore_errors=True)
    real, raced = np.save, []

    def save(path, arr):  # the other rank finishes first, while this one is still writing
        real(path, arr)
        if not raced and str(path).endswith("lengths.npy"):
            raced.append(1)
            winner = Path(path).parent.with_name(Path(path).parent.name.split(".")[1])
            shutil.copytree(Path(path).parent, winner)

    monkeypatch.setattr(dataset.np, "save", save)
    data = TrajectoryData(tiny_data, "reach-v3")
    monkeypatch.undo()
    assert raced and data.task_info["reach-v3"]["episodes"] == 6
    assert not list((tiny_data / ".cache").glob(".*tmp"))
    assert np.array_equal(TrajectoryData(tiny_data, "reach-v3").domains[0].tasks[0].obs, data.domains[0].tasks[0].obs)


def test_states_are_z_scored_with_the_training_statistics(data):
    obs = np.concatenate([t.obs for t in data.domains[0].tasks])  # Meta-World: columns 0-38
    z = (obs - data.state_mean[:39]) / data.state_std[:39]
    varying = data.state_std[:39] != 1
    np.testing.assert_allclose(z[:, varying].mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(z[:, varying].std(0), 1, atol=1e-3)
    reused = TrajectoryData(data.root, "reach-v3", state_stats=(data.state_mean, data.state_std), layout=data.layout)
    a = WindowSampler(reused, 3, 16, seed=1).sample()["states"]
    assert np.abs(a[..., :39]).max() < 50 and np.array_equal(reused.state_mean, data.state_mean)


def test_normalise_states_z_scores_then_clips():
    obs = np.array([[1.0, 2.0, -50.0], [3.0, 2.0, 50.0]])
    mean, std = np.array([2.0, 0.0, 0.0]), np.array([1.0, 0.5, 2.0])
    np.testing.assert_array_equal(normalise_states(obs, mean, std, None), [[-1, 4, -25], [1, 4, 25]])
    np.testing.assert_array_equal(normalise_states(obs, mean, std, 3.0), [[-1, 3, -3], [1, 3, 3]])
    np.testing.assert_array_equal(normalise_states(obs, mean, std, 0.0), normalise_states(obs, mean, std, None))


def test_columns_without_statistics_are_not_clipped():
    """A column with the placeholder statistics (mean 0, sd 1: no data varied it) has no sd to clip
    in: its raw values pass."""
    obs = np.array([[30.0, 30.0, 1.0], [-30.0, -30.0, -1.0]])
    mean, std = np.array([0.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.1])
    np.testing.assert_array_equal(normalise_states(obs, mean, std, 10.0), [[30, 10, 10], [-30, -10, -10]])
    np.testing.assert_array_equal(normalise_states(obs[0], mean, std, 10.0), [30, 10, 10])


def test_clipped_windows_equal_unclipped_ones_within_the_bound(data):
    """`state_clip` bounds the states of every window and changes nothing else: statistics with
    Meta-World's sds squeezed 100-fold put a task's states far out of scale."""
    std = data.state_std.copy()
    std[:39] /= 100
    stats = (data.state_mean, std)
    plain = TrajectoryData(data.root, "reach-v3", state_stats=stats, layout=data.layout)
    clipped = TrajectoryData(data.root, "reach-v3", state_stats=stats, layout=data.layout, state_clip=5.0)
    a, b = (WindowSampler(d, 3, 32, seed=2).sample() for d in (plain, clipped))
    assert np.abs(a["states"]).max() > 5 and np.abs(b["states"]).max() == 5
    np.testing.assert_array_equal(b["states"], np.clip(a["states"], -5, 5))
    assert all(np.array_equal(a[k], b[k]) for k in a if k != "states")
    with pytest.raises(ValueError, match="state_clip must be positive"):
        TrajectoryData(data.root, "reach-v3", state_stats=stats, layout=data.layout, state_clip=-1)


def test_scale_report_finds_the_column_out_of_scale(data):
    mean, std = data.state_mean.copy(), data.state_std.copy()
    cols = data.layout.columns(get_task("reach-v3"))
    obs = np.concatenate([t.obs for t in data.domains[0].tasks if t.spec.name == "reach-v3"])
    varying = cols[np.argmax(obs.std(0))]  # the column that varies most: squeeze its sd
    std[varying] = obs.std(0).max() / 1000
    squeezed = TrajectoryData(data.root, "reach-v3", state_stats=(mean, std), layout=data.layout)
    report = squeezed.scale_report(data.layout.column_names())["reach-v3"]
    assert report["worst_column"] == data.layout.column_names()[varying] == f"metaworld/obs[{varying}]"
    assert report["max_abs_z"] > 100 and 0 < report["frac_beyond_limit"] <= 1 / (39 - report["columns_without_statistics"])
    assert report["worst_column_std"] == pytest.approx(std[varying]) and report["clip"] is None
    own = data.scale_report()["reach-v3"]  # the data's own statistics: in scale
    assert own["max_abs_z"] < 10 and own["frac_beyond_limit"] == 0


def test_statistics_read_a_few_rows_at_a_time_and_equal_the_whole_arrays(data, monkeypatch):
    """The statistics pass reads the memory-mapped observations in chunks (no float64 copy of a whole
    task); chunks of 7 rows give what the whole arrays give."""
    whole = np.concatenate([t.obs for t in data.domains[0].tasks]).astype(np.float64)
    monkeypatch.setattr(TrajectoryData, "STATS_ROWS", 7)
    mean, std = data.own_stats()
    np.testing.assert_allclose(mean[:39], whole.mean(0), rtol=1e-6, atol=1e-7)
    expect = np.where(whole.std(0) > 1e-6, whole.std(0), 1.0)
    np.testing.assert_allclose(std[:39], expect, rtol=1e-6)


def test_tasks_with_fewer_keys_leave_other_domain_columns_zero(tmp_path):
    from tests.conftest import collect_tiny

    collect_tiny(tmp_path, tasks="finger-spin,finger-turn_easy", episodes=2, horizon=10, source="random")
    data = TrajectoryData(tmp_path, "finger-spin,finger-turn_easy")
    batch = WindowSampler(data, 3, 200, seed=0).sample()
    spin = batch["task_id"] == 0
    cols = data.layout.columns
    only_turn = np.setdiff1d(cols(get_task("finger-turn_easy")), cols(get_task("finger-spin")))
    assert len(only_turn) == 3 and spin.any()
    assert np.all(batch["states"][spin][..., only_turn] == 0)
    assert np.any(batch["states"][~spin][..., only_turn] != 0)


def test_input_layout_per_run(tiny_data):
    mw = TrajectoryData(tiny_data, "reach-v3,door-open-v3")
    assert (mw.layout.state_dim, mw.layout.act_dim) == (39, 4)
    batch = WindowSampler(mw, 5, 8, seed=0).sample()
    assert batch["states"].shape == (8, 5, 39) and batch["actions"].shape == (8, 5, 4)
    # a DMC-only run on its own tasks' slots only
    own = TrajectoryData(tiny_data, "cartpole-balance", layout=layout_for("cartpole-balance", scope="tasks"))
    assert (own.layout.state_dim, own.layout.act_dim) == (5, 1)
    # the L2M layout for Meta-World + DMC
    both = layout_for("mt40,dmc10")
    assert (both.state_dim, both.act_dim) == (154, 6)


def test_task_outside_the_layout_is_refused(tiny_data):
    with pytest.raises(ValueError, match="does not fit this model"):
        TrajectoryData(tiny_data, "cartpole-balance", layout=layout_for("reach-v3"))


def test_missing_datasets_are_all_named(tiny_data):
    from dtune.data.storage import DatasetError

    with pytest.raises(DatasetError) as e:
        TrajectoryData(tiny_data, "reach-v3,hammer-v3,push-v3")
    msg = str(e.value)
    assert "hammer-v3, push-v3" in msg and "dtune data collect --tasks hammer-v3,push-v3" in msg


def test_data_ratio_keeps_a_seeded_subset_of_whole_trajectories(tiny_data):
    full = TrajectoryData(tiny_data, "reach-v3,cartpole-balance")
    half = TrajectoryData(tiny_data, "reach-v3,cartpole-balance", data_ratio=0.5, ratio_seed=3)
    again = TrajectoryData(tiny_data, "reach-v3,cartpole-balance", data_ratio=0.5, ratio_seed=3)
    assert half.task_info["reach-v3"]["episodes"] == 3 and half.task_info["cartpole-balance"]["episodes"] == 1  # 1.5 of 3, rounded down
    assert half.task_info["reach-v3"]["data_ratio"] == 0.5
    tiny = TrajectoryData(tiny_data, "reach-v3", data_ratio=0.01)
    assert tiny.task_info["reach-v3"]["episodes"] == 1  # at least one trajectory
    # whole episodes, identical to the episodes on disk, the same for the same seed
    ep = read_episodes(tiny_data, "reach-v3", full.sources["reach-v3"])
    t = half.domains[0].tasks[0]
    starts = np.cumsum(ep["lengths"]) - ep["lengths"]
    firsts = [int(np.flatnonzero(np.all(ep["observations"] == t.obs[s], axis=1))[0]) for s in t.starts]
    assert set(firsts) <= set(starts.tolist())  # every kept episode starts where an episode starts
    for s, f in zip(t.starts, firsts):
        np.testing.assert_array_equal(t.obs[s: s + 30], ep["observations"][f: f + 30])
    np.testing.assert_array_equal(t.obs, again.domains[0].tasks[0].obs)
    subsets = {TrajectoryData(tiny_data, "reach-v3", data_ratio=0.5, ratio_seed=s).domains[0].tasks[0].obs.tobytes()
               for s in range(6)}
    assert len(subsets) > 1  # the seed chooses the subset
    with pytest.raises(ValueError, match="--data-ratio"):
        TrajectoryData(tiny_data, "reach-v3", data_ratio=0.0)
    assert half.task_info["reach-v3"]["data_subset"] == SUBSET_RULE and "data_subset" not in full.task_info["reach-v3"]


def test_data_ratio_subsets_of_one_seed_are_nested():
    """0.5% inside 1% inside 10% inside 50% for the same seed (LaMo's ratios): results across ratios
    differ by the data added, not by another draw; other seeds draw other subsets."""
    lengths = np.full(2000, 5)
    arrays = {"x": np.arange(10000)}
    for seed in range(3):
        kept = [set(trajectory_subset(lengths, arrays, r, seed, "hopper")[1]["x"][::5].tolist())
                for r in (0.005, 0.01, 0.1, 0.5)]
        assert [len(k) for k in kept] == [10, 20, 200, 1000]
        assert all(a < b for a, b in zip(kept, kept[1:]))  # strictly nested
    other = set(trajectory_subset(lengths, arrays, 0.01, 1, "hopper")[1]["x"][::5].tolist())
    assert other != set(trajectory_subset(lengths, arrays, 0.01, 0, "hopper")[1]["x"][::5].tolist())
    # rounded down like LaMo's code (`int(len * ratio)`), at least one episode
    odd = np.full(2190, 5)
    assert len(trajectory_subset(odd, {"x": np.arange(10950)}, 0.005, 0, "hopper")[0]) == 10  # 10.95 -> 10
    assert len(trajectory_subset(odd, {"x": np.arange(10950)}, 1e-6, 0, "hopper")[0]) == 1


def test_sources_as_recorded_by_a_run(tiny_data):
    data = TrajectoryData(tiny_data, "reach-v3,cartpole-balance",
                          source={"reach-v3": "expert-noise", "cartpole-balance": "random"})
    assert data.sources == {"reach-v3": "expert-noise", "cartpole-balance": "random"}
    from dtune.data.storage import DatasetError

    with pytest.raises(DatasetError, match="cartpole-balance \\(sac-replay\\)"):
        TrajectoryData(tiny_data, "reach-v3,cartpole-balance", source={"reach-v3": "expert-noise",
                                                                       "cartpole-balance": "sac-replay"})


def test_replay_from_keeps_a_replay_buffers_later_episodes(tmp_path):
    """`replay_from` drops the first int(f x E) episodes of replay buffers (in collection order),
    whole, before `max_episodes` and `data_ratio`; other sources stay whole; bad values are refused."""
    from dtune.data.dataset import is_replay_buffer, later_episodes
    from dtune.data.storage import Episode, write_dataset

    rng = np.random.default_rng(0)
    lengths = [4, 6, 5, 7, 3]  # episode i's rewards are all i: an episode is known by its rewards
    eps = [Episode(rng.standard_normal((n + 1, 5)).astype(np.float32), rng.uniform(-1, 1, (n, 1)).astype(np.float32),
                   np.full(n, float(i)), np.zeros(n + 1, bool), seed=i) for i, n in enumerate(lengths)]
    for source in ("sac-replay", "random"):
        write_dataset(tmp_path, "cartpole-balance", source, eps, {})
    assert is_replay_buffer("sac-replay") and is_replay_buffer("medium-replay") and not is_replay_buffer("random")

    def kept(source, **kw):
        data = TrajectoryData(tmp_path, "cartpole-balance", source=source, **kw)
        t = data.domains[0].tasks[0]
        return [int(t.rewards[s]) for s in t.starts], data.task_info["cartpole-balance"], t

    ids, info, t = kept("sac-replay", replay_from=0.5)
    assert ids == [2, 3, 4] and info["replay_from"] == 0.5  # int(2.5) = 2 dropped
    assert info["steps"] == 5 + 7 + 3 and info["train_return_mean"] == pytest.approx((2 * 5 + 3 * 7 + 4 * 3) / 3)
    assert len(t.rtg) == 15 and t.rtg[0] == 2 * 5  # returns-to-go of whole episodes
    assert kept("sac-replay", replay_from=0.5, max_episodes=2)[0] == [2, 3]  # replay_from first
    assert kept("sac-replay", replay_from=0.19)[0] == [0, 1, 2, 3, 4]  # int(0.95) = 0
    with pytest.raises(ValueError, match="none of the run's datasets is one \\(cartpole-balance: random\\)"):
        kept("random", replay_from=0.5)  # not a replay buffer: said, not silently ignored
    ratio = kept("sac-replay", replay_from=0.5, data_ratio=0.5, ratio_seed=1)[0]
    ep = {"rewards": np.concatenate([np.full(n, float(i)) for i, n in enumerate(lengths)])}
    sub_lengths, sub = trajectory_subset(*later_episodes(np.array(lengths), ep, 0.5), 0.5, 1, "cartpole-balance")
    assert len(ratio) == 1 and ratio == [int(sub["rewards"][0])]  # the subset is drawn from the later episodes
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="--replay-from"):
            TrajectoryData(tmp_path, "cartpole-balance", source="sac-replay", replay_from=bad)
