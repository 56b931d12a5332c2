"""The D4RL-style MuJoCo suite: tasks, D4RL references and score, real terminations in the data."""

import numpy as np
import pytest

from dtune.data.storage import read_episodes, read_metadata
from dtune.eval.scores import task_score
from dtune.tasks import get_task, layout_for, resolve_tasks


def test_tasks_sets_and_d4rl_references():
    assert resolve_tasks("mujoco3") == ["hopper", "halfcheetah", "walker2d"]
    assert resolve_tasks("mujoco4")[-1] == "ant"
    h = get_task("hopper")
    assert (h.obs_dim, h.act_dim, h.horizon, h.reward_scale) == (11, 3, 1000, 1000.0)
    assert (h.ref_min_score, h.ref_max_score) == (-20.3, 3234.3)
    assert h.target_return == 3600.0 and h.target_returns == (3600.0, 2600.0, 2200.0, 1800.0)
    assert get_task("hopper", horizon=500).target_returns == h.target_returns  # returns do not scale here
    # D4RL's normalised score, 100 * (R - random) / (expert - random), as a fraction
    s = task_score(h, np.array([3234.3, -20.3, 1607.0]), np.zeros(3, bool), None)  # 1607: the midpoint
    assert s == pytest.approx((1.0 + 0.0 + 0.5) / 3, abs=1e-3)
    # the data's references do not override the suite's
    assert task_score(h, np.array([3234.3]), np.zeros(1, bool), {"ref_min_score": 0, "ref_max_score": 10}) == 1.0


def test_each_robot_has_its_own_slot():
    lay = layout_for("mujoco3")
    assert lay.state_dim == 11 + 17 + 17 + 105 and lay.act_dim == 8
    cols = [set(lay.columns(get_task(t))) for t in ("hopper", "halfcheetah", "walker2d")]
    assert not (cols[0] & cols[1]) and not (cols[1] & cols[2])


def test_random_data_stores_real_terminations(tmp_path):
    from tests.conftest import collect_tiny

    collect_tiny(tmp_path, tasks="hopper", episodes=3, horizon=200, source="random")
    ep = read_episodes(tmp_path, "hopper", "random")
    assert ep["lengths"].max() < 200  # random actions make the hopper fall before the time limit
    ends = np.cumsum(ep["lengths"]) - 1
    assert ep["terminals"][ends].all() and ep["terminals"].sum() == 3
    assert read_metadata(tmp_path, "hopper", "random")["total_episodes"] == 3
