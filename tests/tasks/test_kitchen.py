"""Franka Kitchen (Gymnasium-Robotics FrankaKitchen-v1): the spec registers without
gymnasium-robotics, which is imported only when an environment is made."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dtune.eval.scores import task_score
from dtune.tasks import get_suite, get_task, layout_for, make_env

SUBTASKS = ("microwave", "kettle", "light switch", "slide cabinet")


def test_spec_and_score():
    t = get_task("kitchen-complete")
    assert (t.suite, t.obs_dim, t.act_dim, t.horizon, t.reward_scale) == ("kitchen", 59, 9, 280, 1.0)
    assert t.target_return == 4.0 and sorted(t.target_returns) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert t.target_returns[0] == t.target_return
    assert (t.score, t.ref_min_score, t.ref_max_score) == ("normalized", 0.0, 4.0)
    assert dict(get_suite("kitchen").slots) == {"kitchen/state": 59}
    assert layout_for("kitchen-complete,reacher2d").state_dim == 59 + 12
    assert task_score(t, np.array([4.0, 2.0, 0.0]), np.zeros(3, bool), None) == pytest.approx(0.5)


def test_registers_without_gymnasium_robotics(monkeypatch):
    code = "import sys, dtune.tasks as t; t.get_task('kitchen-complete'); print('gymnasium_robotics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # importing dtune does not import gymnasium-robotics
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # as if it were not installed
    with pytest.raises(ImportError, match="gymnasium-robotics"):
        make_env("kitchen-complete")


@pytest.fixture(scope="module")
def kitchen():
    pytest.importorskip("gymnasium_robotics", reason="gymnasium-robotics is not installed (pip install 'dtune[kitchen]')")
    return make_env("kitchen-complete", horizon=12)


def test_env_observations_seeding_and_time_limit(kitchen):
    o1, o2 = kitchen.reset(3), kitchen.reset(3)
    assert o1.shape == (59,) and np.array_equal(o1, o2)
    assert not np.array_equal(o1, kitchen.reset(4))  # the robot's initial noise is seeded
    rng = np.random.default_rng(0)
    kitchen.reset(0)
    for i in range(12):
        obs, r, term, trunc, success = kitchen.step(rng.uniform(-1, 1, 9))
        assert obs.shape == (59,) and r == 0.0 and not term and not success
    assert trunc  # cut after the horizon: a truncation
    before = obs.copy()
    kitchen.reset(0)
    assert np.array_equal(obs, before)  # observations are copies, not the env's buffers


def test_reward_counts_each_completed_subtask_once(kitchen):
    import mujoco
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    kitchen.reset(0)
    u = kitchen.env.unwrapped
    assert sorted(u.tasks_to_complete) == sorted(SUBTASKS)
    total = 0.0
    for i, task in enumerate(SUBTASKS):  # put each object at its goal: one subtask completed per step
        u.data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
        mujoco.mj_forward(u.model, u.data)
        obs, r, term, trunc, success = kitchen.step(np.zeros(9))
        total += r
        assert r == 1.0 and term == success == (i == len(SUBTASKS) - 1)
    assert total == 4.0
