import numpy as np
import pytest

from dtune.tasks import (REGISTRY, SUITES, TASK_SETS, InputLayout, Suite, TaskSpec, UnknownTaskError, get_task,
                         layout_for, legacy_layout, make_env, register_suite, resolve_tasks)
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
    layout = layout_for("mt50,dmc16")
    cols = lambda t: set(layout.columns(get_task(t)).tolist())  # noqa: E731
    assert cols("reach-v3") == set(range(39))
    assert cols("finger-spin") < cols("finger-turn_easy")
    assert cols("walker-walk") == cols("walker-run")
    assert not cols("cheetah-run") & cols("walker-walk")
    assert not cols("cheetah-run") & set(range(39))
    assert max(max(cols(t)) for t in REGISTRY if REGISTRY[t].suite in ("metaworld", "dmc")) == layout.state_dim - 1
    assert (layout.state_dim, layout.act_dim) == (154, 6)


def test_layout_of_a_meta_world_and_dmc_run_is_the_l2m_layout_of_dtune_0_1():
    """Runs made before layouts were stored (the committed MT40 checkpoint) load with this one."""
    legacy, now = legacy_layout(), layout_for("mt40,dmc10")
    assert legacy == now
    for t in ("reach-v3", "walker-walk", "finger-spin", "cheetah-run"):  # 0.1's fixed slot indices
        expected = list(range(39)) if t == "reach-v3" else [39 + i for i in dmc.slot_indices(t)]
        assert legacy.columns(get_task(t)).tolist() == expected
    assert InputLayout.from_dict(now.to_dict()) == now


def test_layout_scopes():
    assert (layout_for("mt40").state_dim, layout_for("mt40").act_dim) == (39, 4)
    dmc_suite = layout_for("walker-walk")
    assert (dmc_suite.state_dim, dmc_suite.act_dim) == (115, 6)  # every DMC slot: DMC6 tasks fit later
    own = layout_for("walker-walk", scope="tasks")
    assert (own.state_dim, own.act_dim) == (24, 6)
    with pytest.raises(ValueError, match="does not fit"):
        own.columns(get_task("cheetah-run"))
    with pytest.raises(ValueError, match="scope"):
        layout_for("mt40", scope="all")


class _Bad(Suite):
    name = "bad"
    slots = (("bad/x", 3),)

    def tasks(self):
        return [TaskSpec("bad-task", "bad", 4, 1, 10, 1.0, 10.0, "success", ("bad/x",))]


def test_register_suite_validates_and_unregisters():
    with pytest.raises(ValueError, match="slots hold 3 dims, obs_dim is 4"):
        register_suite(_Bad())
    assert "bad" not in SUITES and "bad-task" not in REGISTRY
    with pytest.raises(ValueError, match="already"):
        register_suite(SUITES["metaworld"])


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
    with pytest.raises(UnknownTaskError, match="did you mean"):
        resolve_tasks("mt40,walker-wakl")
    with pytest.raises(UnknownTaskError) as e:  # every unknown name at once
        resolve_tasks("hamer-v3,reach-v3,pushh-v3")
    assert "'hamer-v3'" in str(e.value) and "'pushh-v3'" in str(e.value)


def test_horizon_override_scales_metaworld_target():
    s = get_task("reach-v3", horizon=100)
    assert s.horizon == 100 and s.target_return == pytest.approx(get_task("reach-v3").target_return / 2)
    with pytest.raises(ValueError):
        get_task("reach-v3", horizon=0)


@pytest.mark.parametrize("name", ["reach-v3", "cartpole-balance", "hopper", "ant"])
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
