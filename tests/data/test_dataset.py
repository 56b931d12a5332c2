import numpy as np
import pytest

from dtune.data.dataset import TrajectoryData, WindowSampler, returns_to_go
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


def test_rtg_scaled_by_domain(data):
    dom = data.domains[0]
    first = dom.ep_start == np.arange(len(dom))
    raw = data.task_info["reach-v3"]["return_max"]
    assert np.isclose(dom.rtg[first][:6].max() * 200.0, raw, rtol=1e-5)
    dmc = data.domains[1]
    np.testing.assert_allclose(dmc.rewards * 100.0, dmc.rewards * get_task("cartpole-balance").reward_scale)


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
    caches = sorted((tiny_data / ".cache").glob("reach-v3-*.npz"))
    assert len(caches) == 1
    caches[0].write_bytes(b"not a zip")
    data = TrajectoryData(tiny_data, "reach-v3")
    assert data.task_info["reach-v3"]["episodes"] == 6


def test_states_are_z_scored_with_the_training_statistics(data):
    mw = data.domains[0]
    np.testing.assert_allclose(mw.obs.mean(0)[np.array(data.state_std[mw.columns]) != 1], 0, atol=1e-3)
    varying = data.state_std[mw.columns] != 1
    np.testing.assert_allclose(mw.obs[:, varying].std(0), 1, atol=1e-3)
    reused = TrajectoryData(data.root, "reach-v3", state_stats=(data.state_mean, data.state_std), layout=data.layout)
    np.testing.assert_allclose(reused.domains[0].obs, mw.obs[: len(reused.domains[0])], atol=1e-5)


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
