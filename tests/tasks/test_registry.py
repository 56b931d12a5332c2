import numpy as np
import pytest

from dtune.tasks import (MAX_ACT_DIM, REGISTRY, STATE_DIM, TASK_SETS, UnknownTaskError, get_task, make_env,
                         resolve_tasks)
from dtune.tasks import dmc


def test_metaworld_sets():
    assert len(TASK_SETS["mt50"]) == 50 and len(set(TASK_SETS["mt50"])) == 50
    assert len(TASK_SETS["mt40"]) == 40 and len(TASK_SETS["cw10"]) == 10
    assert not set(TASK_SETS["mt40"]) & set(TASK_SETS["cw10"])
    assert resolve_tasks("cw10") == ["hammer-v3", "push-wall-v3", "faucet-close-v3", "push-back-v3", "stick-pull-v3",
                                     "handle-press-side-v3", "push-v3", "shelf-place-v3", "window-close-v3",
                                     "peg-unplug-side-v3"]


def test_metaworld_tasks_match_the_installed_suite():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert set(TASK_SETS["mt50"]) == set(ALL_V3_ENVIRONMENTS)


def test_dmc_sets_and_specs():
    assert len(TASK_SETS["dmc10"]) == 10 and len(TASK_SETS["dmc6"]) == 6
    assert len(set(TASK_SETS["dmc16"])) == 16
    s = get_task("walker-walk")
    assert (s.domain, s.obs_dim, s.act_dim, s.horizon, s.reward_scale, s.score) == ("dmc", 24, 6, 1000, 100.0, "normalized")
    m = get_task("hammer-v3")
    assert (m.domain, m.obs_dim, m.act_dim, m.horizon, m.reward_scale, m.score) == ("metaworld", 39, 4, 200, 200.0, "success")


def test_state_slots_are_disjoint_across_domains_and_shared_within():
    assert get_task("reach-v3").state_slot == tuple(range(39))
    assert set(get_task("finger-spin").state_slot) < set(get_task("finger-turn_easy").state_slot)
    assert get_task("walker-walk").state_slot == get_task("walker-run").state_slot
    assert not set(get_task("cheetah-run").state_slot) & set(get_task("walker-walk").state_slot)
    assert not set(get_task("cheetah-run").state_slot) & set(range(39))
    assert max(max(s.state_slot) for s in REGISTRY.values()) == STATE_DIM - 1
    assert max(s.act_dim for s in REGISTRY.values()) == MAX_ACT_DIM


def test_dmc_key_table_matches_dm_control():
    from dm_control import suite

    for name in TASK_SETS["dmc16"]:
        domain, task = dmc.split_name(name)
        spec = suite.load(domain, task).observation_spec()
        sizes = {k: int(np.prod(v.shape)) for k, v in spec.items()}
        assert tuple(sizes) == dmc.task_keys(name), name
        assert sum(sizes.values()) == get_task(name).obs_dim, name


def test_unknown_task_suggests_close_matches():
    with pytest.raises(UnknownTaskError, match="hammer-v3"):
        get_task("hamer-v3")
    with pytest.raises(UnknownTaskError, match="Did you mean"):
        resolve_tasks("mt40,walker-wakl")


def test_horizon_override_scales_metaworld_target():
    s = get_task("reach-v3", horizon=100)
    assert s.horizon == 100 and s.target_return == pytest.approx(get_task("reach-v3").target_return / 2)
    with pytest.raises(ValueError):
        get_task("reach-v3", horizon=0)


@pytest.mark.parametrize("name", ["reach-v3", "cartpole-balance"])
def test_make_env_interface_and_seeding(name):
    spec = get_task(name, horizon=5)
    env = make_env(name, seed=0, horizon=5)
    o1 = env.reset(7)
    assert o1.shape == (spec.obs_dim,)
    steps = 0
    while True:
        o, r, term, trunc, succ = env.step(np.zeros(spec.act_dim))
        steps += 1
        assert o.shape == (spec.obs_dim,) and isinstance(r, float) and isinstance(succ, bool)
        if term or trunc:
            break
    assert steps == 5
    np.testing.assert_array_equal(env.reset(7), o1)  # same seed, same initial state
