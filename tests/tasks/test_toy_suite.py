"""Suites are plug-ins: a suite defined here, in the test file, is collected, trained on and
evaluated without touching any dtune module. Its tasks have 8 actions (more than any built-in
suite) and a terminal state, and its score is a normalised return with its own references."""

from __future__ import annotations

import numpy as np
import pytest

from dtune.tasks import Suite, TaskSpec, register_suite, unregister_suite

N_ACT = 8


class PointEnv:
    """Move a point in 8-D towards the origin; the episode terminates when it gets there."""

    def __init__(self, horizon: int):
        self.horizon = horizon

    def reset(self, seed: int) -> np.ndarray:
        self.rng = np.random.default_rng(seed)
        self.x, self.t = self.rng.uniform(-1, 1, N_ACT), 0
        return self.x.copy()

    def step(self, action):
        self.x = self.x + 0.2 * np.asarray(action)
        self.t += 1
        dist = float(np.linalg.norm(self.x))
        done = dist < 0.3
        return self.x.copy(), -dist, done, self.t >= self.horizon and not done, done


class ToySuite(Suite):
    name = "toy"
    slots = (("toy/position", N_ACT),)
    sets = {"toy2": ("toy-reach", "toy-reach-far")}
    sources = ("expert-noise", "random")

    def tasks(self):
        return [TaskSpec(name=n, suite="toy", obs_dim=N_ACT, act_dim=N_ACT, horizon=20, reward_scale=10.0,
                         target_return=0.0, score="normalized", slots=("toy/position",),
                         ref_min_score=-30.0, ref_max_score=-3.0) for n in self.sets["toy2"]]

    def make_env(self, task, seed):
        return PointEnv(task.horizon)

    def expert(self, task):
        return lambda obs: np.clip(-obs / 0.2, -1, 1)


@pytest.fixture()
def toy():
    register_suite(ToySuite())
    yield
    unregister_suite("toy")


def test_a_suite_defined_outside_dtune_collects_trains_and_evaluates(toy, tmp_path):
    from dtune.data.collect import CollectConfig, collect
    from dtune.data.storage import list_datasets, read_episodes
    from dtune.recipes.evaluate import EvalConfig, evaluate
    from dtune.recipes.pretrain import PretrainConfig, pretrain

    data = tmp_path / "data"
    assert collect(CollectConfig(tasks="toy2", episodes=6, data_dir=str(data), workers=2, progress=False)) == \
        ["toy-reach", "toy-reach-far"]
    assert list_datasets(data) == [("toy-reach", "expert-noise"), ("toy-reach-far", "expert-noise")]
    ep = read_episodes(data, "toy-reach", "expert-noise")
    assert ep["actions"].shape[1] == N_ACT and ep["terminals"].any()  # the expert reaches the origin: real terminations
    assert (ep["lengths"] < 20).any()

    run = tmp_path / "run"
    pretrain(PretrainConfig(out=str(run), tasks="toy2", model="tiny", steps=4, batch_size=8, data_dir=str(data),
                            progress=False, device="cpu"))
    import json

    config = json.loads((run / "config.json").read_text())
    assert config["layout"] == {"slots": [["toy/position", N_ACT]], "act_dim": N_ACT}
    assert config["model"]["act_dim"] == N_ACT and config["model"]["state_dim"] == N_ACT
    res = evaluate(EvalConfig(checkpoint=str(run), episodes=2, progress=False))
    r = res["tasks"]["toy-reach"]
    assert r["domain"] == "toy" and r["score_kind"] == "normalized"
    assert r["score"] == pytest.approx((r["return_mean"] + 30.0) / 27.0)  # the suite's own reference returns
