"""The evaluator scores any agent; the Decision Transformer agent is one of them."""

import numpy as np
import pytest

from dtune.eval.agents import DTAgent
from dtune.eval.rollout import evaluate_agent, run_episodes
from dtune.eval.scores import normalized_score, target_return, task_score
from dtune.models import build_model, preset
from dtune.tasks import get_task, layout_for


class ConstantAgent:
    """A baseline-style agent: the same action everywhere (what a BC/CQL policy plugs into)."""

    def __init__(self, value: float):
        self.value, self.seen = value, []

    def start(self, specs, targets):
        self.n = len(specs)
        self.act_dims = [s.act_dim for s in specs]

    def act(self, obs, t):
        self.seen.append(len(obs))
        return np.full((self.n, max(self.act_dims)), self.value, np.float32)

    def observe(self, rewards):
        assert rewards.shape == (self.n,)


def test_any_agent_is_scored_by_the_same_code():
    agent = ConstantAgent(0.0)
    res = evaluate_agent(agent, "reach-v3,cartpole-balance", episodes=2, horizon=6,
                         task_info={"cartpole-balance": {"ref_min_score": 0.0, "ref_max_score": 6.0}}, progress=False)
    assert res["tasks"]["reach-v3"]["score_kind"] == "success" and res["tasks"]["reach-v3"]["episodes"] == 2
    cp = res["tasks"]["cartpole-balance"]
    assert cp["score"] == pytest.approx(cp["return_mean"] / 6.0)
    assert res["env_steps"] == 2 * 2 * 6 and agent.seen == [4] * 6  # lock-step: all envs at once
    # identical seeds, identical episodes
    again = evaluate_agent(ConstantAgent(0.0), "reach-v3,cartpole-balance", episodes=2, horizon=6, progress=False)
    assert again["tasks"]["reach-v3"]["return_mean"] == res["tasks"]["reach-v3"]["return_mean"]


def test_dt_agent_needs_the_model_layout():
    model = build_model(preset("tiny", state_dim=39, act_dim=4)).eval()
    with pytest.raises(ValueError, match="does not match"):
        DTAgent(model, layout_for("mt40,dmc10"))
    res = evaluate_agent(DTAgent(model, layout_for("mt40")), "reach-v3", episodes=2, horizon=5, progress=False)
    assert res["model_forwards"] > 0
    with pytest.raises(ValueError, match="does not fit"):
        evaluate_agent(DTAgent(model, layout_for("mt40")), "cartpole-balance", episodes=1, horizon=5, progress=False)


def test_dt_agent_clips_states_as_its_model_says():
    """The agent z-scores observations with the model's statistics and clips them at the model's
    `state_clip`, as the training windows were."""
    model = build_model(preset("tiny", state_dim=39, act_dim=4, state_clip=2.0)).eval()
    model.state_std.fill_(0.01)
    agent = DTAgent(model, layout_for("mt40"))
    agent.start([get_task("reach-v3")] * 2, [1.0, 1.0])
    agent.act([np.full(39, 0.5, np.float32), np.full(39, -0.001, np.float32)], 0)
    np.testing.assert_allclose(agent.states, np.stack([np.full(39, 2.0), np.full(39, -0.1)]), rtol=1e-5)


def test_dt_agent_evaluates_in_bf16_on_request():
    """`precision="bf16"` runs the policy under autocast: actions near fp32's, not equal to them."""
    import torch

    torch.manual_seed(0)
    model = build_model(preset("tiny", kind="dt", state_dim=39, act_dim=4)).eval()
    layout, spec = layout_for("mt40"), get_task("reach-v3")
    obs = [np.random.default_rng(i).normal(size=39).astype(np.float32) for i in range(3)]
    actions = {}
    for precision in ("fp32", "bf16"):
        agent = DTAgent(model, layout, precision=precision)
        agent.start([spec] * 3, [1000.0] * 3)
        actions[precision] = [agent.act(obs, 0)]
        agent.observe(np.ones(3, np.float32))
        actions[precision].append(agent.act(obs, 1))
    for a32, a16 in zip(actions["fp32"], actions["bf16"]):
        np.testing.assert_allclose(a16, a32, atol=0.05)
        assert not np.array_equal(a16, a32)
    with pytest.raises(ValueError, match="precision"):
        DTAgent(model, layout, precision="fp16")


def test_targets_and_normalisation():
    spec = get_task("walker-walk")
    assert target_return(spec, None) == spec.target_return
    assert target_return(spec, {"return_max": 500.0}, 1.5) == 750.0
    assert normalized_score(60.0, {"ref_min_score": 10.0, "ref_max_score": 110.0}) == pytest.approx(0.5)
    assert normalized_score(60.0, {"ref_min_score": 10.0, "ref_max_score": 10.0}) is None
    assert normalized_score(60.0, {}) is None
    # a suite's own reference returns (D4RL-style) win over the data's
    from dataclasses import replace

    ref = replace(spec, ref_min_score=0.0, ref_max_score=200.0)
    assert task_score(ref, np.array([50.0, 150.0]), np.zeros(2, bool), {"ref_min_score": 10.0, "ref_max_score": 20.0}) \
        == pytest.approx(0.5)


def test_run_episodes_rejects_mixed_horizons():
    with pytest.raises(ValueError, match="horizon"):
        run_episodes(ConstantAgent(0.0), [get_task("reach-v3", 5), get_task("reach-v3", 6)], [0, 1], [1.0, 1.0])


def test_normalised_score_on_hand_made_numbers_and_undefined_reasons():
    """The paper's DMC score, (R - random) / (data mean - random); where it is undefined the
    evaluation says why, keeps the returns, and the mean says how many tasks it covers."""
    from dtune.eval.scores import undefined_reason
    from dtune.report import eval_table

    spec = get_task("walker-walk")
    info = {"ref_min_score": 40.0, "ref_max_score": 440.0, "source": "sac-replay"}
    assert task_score(spec, np.array([240.0, 440.0, 40.0]), np.zeros(3, bool), info) == pytest.approx(0.5)
    assert undefined_reason(spec, info) is None
    assert undefined_reason(get_task("reach-v3"), {}) is None  # success-scored
    random_data = {"ref_min_score": 40.0, "ref_max_score": 40.0, "source": "random"}
    assert "random-policy data" in undefined_reason(spec, random_data)
    assert "dtune data sac" in undefined_reason(spec, random_data)
    # nearly equal references (a behaviour policy that never beat random) give no score either
    flat = {"ref_min_score": 100.0, "ref_max_score": 100.5, "source": "sac-replay"}
    assert task_score(spec, np.array([300.0]), np.zeros(1, bool), flat) is None
    assert "no better than random" in undefined_reason(spec, flat)
    worse = {"ref_min_score": 300.0, "ref_max_score": 30.0, "source": "sac-replay"}  # data below random
    assert task_score(spec, np.array([300.0]), np.zeros(1, bool), worse) is None
    assert "no reference returns" in undefined_reason(spec, {})
    result = evaluate_agent(ConstantAgent(0.0), "reach-v3,cartpole-balance", episodes=1, horizon=5, progress=False,
                            task_info={"cartpole-balance": {"ref_min_score": 1.0, "ref_max_score": 1.0, "source": "random"}})
    r = result["tasks"]["cartpole-balance"]
    assert r["score"] is None and "random-policy data" in r["score_note"] and r["return_mean"] > 0
    assert result["scored_tasks"] == 1 and result["mean_score"] == result["tasks"]["reach-v3"]["score"]
    table = eval_table(result)
    assert "n/a*" in table and "**mean** (1 of 2 tasks)" in table and "* score undefined" in table
    # a defined score on the data of an agent that did not learn is flagged, and a mean without it given
    weak = {"ref_min_score": 0.0, "ref_max_score": 2.0, "source": "sac-replay", "behaviour_learned": False}
    result = evaluate_agent(ConstantAgent(0.0), "reach-v3,cartpole-balance,walker-stand", episodes=1, horizon=5,
                            progress=False, task_info={"cartpole-balance": weak,
                                                       "walker-stand": {**weak, "behaviour_learned": True}})
    assert "did not learn" in result["tasks"]["cartpole-balance"]["score_caveat"]
    assert "score_caveat" not in result["tasks"]["walker-stand"] and result["learned_tasks"] == 2
    assert result["mean_score_learned"] == pytest.approx(
        (result["tasks"]["reach-v3"]["score"] + result["tasks"]["walker-stand"]["score"]) / 2)
    table = eval_table(result)
    assert "†" in table and "tasks whose data learned** (2 of 3)" in table


def test_protocol_targets_report_standard_and_best_apart():
    """D4RL tasks are evaluated at each protocol target; the standard target's score and the best
    over targets are both reported, labelled (the confusion of LaMo's code users)."""
    from dtune.eval.rollout import evaluate_protocol
    from dtune.report import protocol_table

    class TargetEcho(ConstantAgent):
        """Acts the same whatever the target, but remembers the targets it was started with."""

        seen = []

        def start(self, specs, targets):
            TargetEcho.seen.append(sorted(set(targets)))
            super().start(specs, targets)

    res = evaluate_protocol(TargetEcho(0.0), "hopper,reach-v3", episodes=1, horizon=5, progress=False)
    h = res["tasks"]["hopper"]
    assert [r["target"] for r in h["by_target"]] == [3600.0, 2600.0, 2200.0, 1800.0]
    assert h["standard"]["target"] == 3600.0 and h["best"]["score"] == max(r["score"] for r in h["by_target"])
    assert len(res["tasks"]["reach-v3"]["by_target"]) == 1  # no protocol: its usual target, once
    assert any(3600.0 in s for s in TargetEcho.seen) and any(1800.0 in s for s in TargetEcho.seen)
    table = protocol_table(res)
    assert "score at standard target" in table and "best score over targets" in table and "3600" in table
    # a task whose targets scale with the episode length gets them scaled to the evaluation's horizon
    r2 = evaluate_protocol(ConstantAgent(0.0), "reacher2d", episodes=1, horizon=50, progress=False)
    assert [r["target"] for r in r2["tasks"]["reacher2d"]["by_target"]] == [38.0, 20.0]  # 76 and 40 over 100 steps


def test_dt_agent_forks_share_the_model_and_merge_counts():
    model = build_model(preset("tiny", state_dim=39, act_dim=4)).eval()
    agent = DTAgent(model, layout_for("mt40"), use_cache=False, precision="bf16")
    forks = [agent.fork(), agent.fork()]
    assert all(f.model is model and f.use_cache is False and f.precision == "bf16" for f in forks)
    agent.routing = {"reach-v3": {0: 2}}
    forks[0].routing, forks[0].forwards = {"reach-v3": {0: 1, 3: 4}}, 5
    forks[1].routing, forks[1].forwards = {"push-v3": {-1: 7}}, 6
    agent.merge(forks)
    assert agent.routing == {"reach-v3": {0: 3, 3: 4}, "push-v3": {-1: 7}} and agent.forwards == 11


def test_a_normalised_score_over_another_horizon_than_its_datas_is_flagged(tiny_data):
    """References and targets come from the data's episodes: scoring shorter (or longer) episodes
    against them biases the score, so the result says so and a warning names the tasks."""
    from dtune.recipes.common import dataset_statistics
    from tests.conftest import DMC_TASK, HORIZON

    info = dataset_statistics(tiny_data, DMC_TASK, "random")
    assert info["horizon"] == HORIZON
    weak = {"ref_min_score": 0.0, "ref_max_score": 2.0, "source": "sac-replay"}
    with pytest.warns(UserWarning, match=f"{DMC_TASK}: the evaluation horizon differs"):
        res = evaluate_agent(ConstantAgent(0.0), f"reach-v3,{DMC_TASK}", episodes=1, horizon=HORIZON - 1,
                             progress=False, task_info={DMC_TASK: {**weak, "horizon": HORIZON}, "reach-v3": {"horizon": 7}})
    assert f"run {HORIZON}" in res["tasks"][DMC_TASK]["horizon_note"]
    assert "horizon_note" not in res["tasks"]["reach-v3"]  # a success rate has no references to mismatch
    from dtune.report import eval_table

    table = eval_table(res)
    assert "‡" in table and f"‡ biased score, {DMC_TASK}: evaluated over {HORIZON - 1} steps" in table
    same = evaluate_agent(ConstantAgent(0.0), DMC_TASK, episodes=1, horizon=HORIZON, progress=False,
                          task_info={DMC_TASK: {**weak, "horizon": HORIZON}})
    assert "horizon_note" not in same["tasks"][DMC_TASK] and "‡" not in eval_table(same)
