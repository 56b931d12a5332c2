"""Reacher2d (LaMo's sparse-reward arm), written from the task's facts with MuJoCo directly."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from dtune.eval.scores import task_score
from dtune.tasks import get_suite, get_task, make_env
from dtune.tasks.reacher2d import LINK1, TIP, Reacher2dEnv, inverse_kinematics, joint_angles


def run(env, policy, seed, rng=None):
    obs, total, steps = env.reset(seed), 0.0, 0
    while True:
        obs, r, term, trunc, success = env.step(policy(obs, rng))
        assert not term and success == (r > 0) and r in (0.0, 1.0)
        total, steps = total + r, steps + 1
        if trunc:
            return total, steps


def ik_pd(obs, rng=None):
    """The test's own controller: inverse kinematics of the goal, then a PD law on the angles."""
    q = np.arctan2(obs[0:2], obs[2:4])
    if q[1] < -2.0:
        q[1] += 2 * np.pi
    g = obs[8:10]
    c2 = np.clip((g @ g - 0.6**2 - 0.45**2) / (2 * 0.6 * 0.45), -1, 1)
    t2 = np.arccos(c2)
    t1 = np.arctan2(g[1], g[0]) - np.arctan2(0.45 * np.sin(t2), 0.6 + 0.45 * np.cos(t2))
    err = np.array([(t1 - q[0] + np.pi) % (2 * np.pi) - np.pi, t2 - q[1]])
    return np.clip(5.0 * err - 0.5 * obs[4:6] / 0.15, -1, 1)


def test_spec_model_and_registration():
    t = get_task("reacher2d")
    assert (t.suite, t.obs_dim, t.act_dim, t.horizon, t.reward_scale) == ("reacher2d", 12, 2, 100, 10.0)
    assert (t.target_return, t.target_returns, t.score, t.ref_min_score, t.ref_max_score) == \
        (76.0, (76.0, 40.0), "normalized", 0.0, 100.0)
    assert t.slots == ("reacher2d/state",) and dict(get_suite("reacher2d").slots) == {"reacher2d/state": 12}
    assert task_score(t, np.array([76.0, 0.0]), np.zeros(2, bool), None) == pytest.approx(0.38)
    m = Reacher2dEnv().model
    assert m.opt.timestep == 0.01 and m.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    assert np.allclose(m.opt.gravity, 0) and np.allclose(m.dof_damping, 1) and np.allclose(m.dof_armature, 0.05)
    assert m.nu == 2 and np.allclose(m.actuator_gear[:, 0], 1) and np.allclose(m.actuator_ctrlrange, [[-1, 1]] * 2)
    assert m.jnt_limited.tolist() == [0, 1] and np.allclose(m.jnt_range[1], [-2, 3.5])


def test_reset_is_seeded_and_observation_is_the_state():
    env = make_env("reacher2d")
    o1, o2, o3 = env.reset(7), env.reset(7), env.reset(8)
    assert o1.shape == (12,) and np.array_equal(o1, o2) and not np.allclose(o1, o3)
    for seed in range(20):
        obs = env.reset(seed)
        q = env.data.qpos[:2]
        assert np.all(np.abs(q) <= 2) and np.all(env.data.qvel == 0) and np.all(obs[4:6] == 0)
        assert 0.5 <= np.linalg.norm(obs[8:10]) <= 1.0
        np.testing.assert_allclose(obs[:4], np.r_[np.sin(q), np.cos(q)])
        for _ in range(3):
            obs, *_ = env.step(np.array([1.0, -0.7]))
            np.testing.assert_allclose(obs[6:8], env.data.site_xpos[env.tip, :2])  # fingertip = the site
            np.testing.assert_allclose(obs[4:6], 0.15 * env.data.qvel[:2])
            np.testing.assert_allclose(obs[10:12], obs[6:8] - obs[8:10])
            np.testing.assert_allclose(joint_angles(obs), env.data.qpos[:2], atol=1e-9)
            # forward kinematics of the two links: the site lies 0.45 along the second link
            q1, q2 = env.data.qpos[:2]
            tip = LINK1 * np.array([np.cos(q1), np.sin(q1)]) + TIP * np.array([np.cos(q1 + q2), np.sin(q1 + q2)])
            np.testing.assert_allclose(obs[6:8], tip, atol=1e-9)
    q1, q2 = inverse_kinematics(np.array([0.3, -0.6]))
    assert -2 <= q2 <= 3.5
    np.testing.assert_allclose(LINK1 * np.array([np.cos(q1), np.sin(q1)]) + TIP * np.array([np.cos(q1 + q2), np.sin(q1 + q2)]),
                               [0.3, -0.6], atol=1e-9)


def test_episode_length_and_horizon():
    env = make_env("reacher2d", horizon=30)
    assert run(env, lambda o, r: np.zeros(2), 0)[1] == 30
    assert get_task("reacher2d", horizon=50).target_return == 38.0  # per-step rewards: the target scales
    assert run(make_env("reacher2d"), lambda o, r: np.zeros(2), 0)[1] == 100


def test_scripted_controller_reaches_random_actions_rarely_do():
    env = make_env("reacher2d")
    ik = [run(env, ik_pd, s)[0] for s in range(10)]
    assert sum(r > 0 for r in ik) >= 9 and np.mean(ik) > 60
    rng = np.random.default_rng(0)
    rand = [run(env, lambda o, r: r.uniform(-1, 1, 2), s, rng)[0] for s in range(20)]
    assert sum(r > 0 for r in rand) <= 5 and np.mean(rand) < 10
    expert = get_suite("reacher2d").expert(get_task("reacher2d"))
    assert np.mean([run(env, lambda o, r: expert(o), s)[0] for s in range(10)]) > 70


def test_expert_noise_data(tmp_path):
    from dtune.data.storage import read_episodes, read_metadata
    from tests.conftest import collect_tiny

    collect_tiny(tmp_path, tasks="reacher2d", episodes=4, horizon=100, source="expert-noise")
    ep = read_episodes(tmp_path, "reacher2d", "expert-noise")
    assert ep["lengths"].tolist() == [100] * 4 and not ep["terminals"].any()
    assert ep["observations"].shape == (400, 12) and np.abs(ep["actions"]).max() <= 1
    assert read_metadata(tmp_path, "reacher2d", "expert-noise")["dtune"]["stats"]["return_max"] > 50
