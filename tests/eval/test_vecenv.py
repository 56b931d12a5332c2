"""Environments in worker processes: results identical to the in-process evaluator, mixed
observation sizes, early ends, suites registered at run time, errors, and no orphan workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dtune.eval.agents import DTAgent
from dtune.eval.rollout import evaluate_agent, pooled_envs, run_episodes
from dtune.eval.vecenv import VecEnv, close_shared, shared_vecenv
from dtune.models import build_model, preset
from dtune.tasks import Suite, TaskSpec, get_task, layout_for, register_suite, unregister_suite
from tests.conftest import process_gone as _gone

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["reach-v3", "door-open-v3", "cartpole-balance", "walker-walk"]  # obs 39, 39, 5, 24; act 4, 4, 1, 6
H = 10


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    close_shared()


class WaveAgent:
    """Actions that change with time and environment, float32 like a model's."""

    def start(self, specs, targets):
        self.n, self.width = len(specs), max(s.act_dim for s in specs)

    def act(self, obs, t):
        grid = np.arange(self.n * self.width, dtype=np.float32).reshape(self.n, self.width)
        return np.sin(grid * 0.37 + t * 0.91).astype(np.float32)

    def observe(self, rewards):
        pass


class ConstantAgent(WaveAgent):
    def act(self, obs, t):
        return np.full((self.n, self.width), 0.3, np.float32)


class ObsAgent(WaveAgent):
    """Actions from each environment's own observation and time (not its place in the batch),
    and forks: the overlapped evaluator runs one per env worker."""

    def act(self, obs, t):
        j = np.arange(self.width, dtype=np.float32)
        return np.stack([np.sin(np.float32(np.sum(o)) * 0.37 + t * 0.91 + j) for o in obs]).astype(np.float32)

    def fork(self):
        return ObsAgent()


def _episodes(agent_fn, specs, workers, overlap=True):
    seeds = [101 + i for i in range(len(specs))]
    return run_episodes(agent_fn(), specs, seeds, [s.target_return for s in specs], env_workers=workers,
                        overlap=overlap)


def _same(a, b):
    assert a["env_steps"] == b["env_steps"]
    np.testing.assert_array_equal(a["success"], b["success"])
    assert a["returns"].tobytes() == b["returns"].tobytes()  # bit for bit


@pytest.mark.parametrize("agent", [ConstantAgent, WaveAgent, ObsAgent])
def test_same_results_as_in_process(agent):
    specs = [get_task(t, H) for t in TASKS]
    _same(_episodes(agent, specs, 0), _episodes(agent, specs, 2))


def test_overlapped_stepping_same_results_and_merged_counts(monkeypatch):
    """A forkable agent gets one fork per worker, whose steps interleave with the other worker's."""
    from dtune.eval import rollout

    specs = [get_task(t, H) for t in TASKS]
    calls = []
    real = rollout._run_overlapped
    monkeypatch.setattr(rollout, "_run_overlapped", lambda *a: calls.append(1) or real(*a))
    _same(_episodes(ObsAgent, specs, 0), _episodes(ObsAgent, specs, 2))
    assert calls
    _same(_episodes(ObsAgent, specs, 2, overlap=False), _episodes(ObsAgent, specs, 2))
    assert len(calls) == 2


class FailingAgent(ObsAgent):
    """Raises on its third call: with overlap the other worker's step is then in flight."""

    calls = 0

    def act(self, obs, t):
        FailingAgent.calls += 1
        if FailingAgent.calls == 3:
            raise KeyboardInterrupt
        return super().act(obs, t)

    def fork(self):
        return FailingAgent()


def test_an_error_mid_overlap_leaves_the_workers_usable():
    specs = [get_task(t, H) for t in TASKS]
    with pytest.raises(KeyboardInterrupt):
        _episodes(FailingAgent, specs, 2)
    _same(_episodes(ObsAgent, specs, 0), _episodes(ObsAgent, specs, 2))  # the same shared workers


def test_dt_agent_same_results():
    layout = layout_for(",".join(TASKS))
    import torch

    torch.manual_seed(0)
    model = build_model(preset("tiny", state_dim=layout.state_dim, act_dim=layout.act_dim)).eval()
    specs = [get_task(t, H) for t in TASKS]
    _same(_episodes(lambda: DTAgent(model, layout), specs, 0), _episodes(lambda: DTAgent(model, layout), specs, 2))
    kw = dict(episodes=2, horizon=H, progress=False)
    a = evaluate_agent(DTAgent(model, layout), "reach-v3,cartpole-balance", **kw)
    b = evaluate_agent(DTAgent(model, layout), "reach-v3,cartpole-balance", env_workers=2, **kw)  # lock-step
    c = evaluate_agent(DTAgent(model, layout), "reach-v3,cartpole-balance", env_workers=2, overlap=True, **kw)
    assert a["tasks"] == b["tasks"] == c["tasks"] and a["env_steps"] == b["env_steps"] == c["env_steps"]
    assert a["model_forwards"] == b["model_forwards"] and c["model_forwards"] == 2 * a["model_forwards"]  # 2 forks


def test_mixed_observation_sizes_and_alive_mask():
    specs = [get_task(t, H) for t in TASKS]
    venv = shared_vecenv(specs, 2)  # the pool the tests above used: envs reused, re-seeded by reset
    envs = pooled_envs(specs)
    obs = venv.reset([7, 8, 9, 10])
    ref = [e.reset(s) for e, s in zip(envs, [7, 8, 9, 10])]
    assert [o.shape for o in obs] == [(39,), (39,), (5,), (24,)] and venv.obs_dims == [39, 39, 5, 24]
    assert venv.envs_of(0).tolist() == [0, 2] and venv.envs_of(1).tolist() == [1, 3]  # interleaved: balanced tasks
    for o, r in zip(obs, ref):
        assert o.dtype == r.dtype and o.tobytes() == r.tobytes()
    alive = np.array([True, False, True, False])
    act = np.full((4, 6), -0.5, np.float32)
    obs2, rew, term, trunc, succ = venv.step(act, alive)
    for i in (0, 2):
        o, r, *_ = envs[i].step(act[i, : specs[i].act_dim])
        assert obs2[i].tobytes() == o.tobytes() and rew[i] == r
    for i in (1, 3):  # not stepped: last observation, zero reward
        assert obs2[i].tobytes() == obs[i].tobytes() and rew[i] == 0.0
    assert rew.dtype == np.float64 and not term.any() and not trunc.any() and not succ.any()
    with pytest.raises(ValueError, match="actions must have shape"):
        venv.step(np.zeros((4, 3), np.float32))


class _CountEnv:
    """Deterministic toy env: ends after `3 + seed % 3` steps; obs size 3; succeeds at step 2."""

    def reset(self, seed):
        self.t, self.seed, self.total = 0, seed, 0.0
        return np.array([0.0, seed, 0.0], np.float32)

    def step(self, a):
        self.t += 1
        self.total += float(np.sum(a))
        done = self.t >= 3 + self.seed % 3
        return np.array([self.t, self.seed, self.total], np.float32), self.total * 0.5, done, False, self.t == 2


class ToySuite(Suite):
    name = "toyvec"
    slots = (("toyvec/obs", 3),)

    def tasks(self):
        return [TaskSpec(name="toy-count", suite=self.name, obs_dim=3, act_dim=2, horizon=8, reward_scale=1.0,
                         target_return=10.0, score="success", slots=("toyvec/obs",))]

    def make_env(self, task, seed):
        return _CountEnv()


def test_suite_registered_at_run_time_and_early_ends():
    register_suite(ToySuite())
    try:
        specs = [get_task("toy-count")] * 4 + [get_task("reach-v3", 8)]
        a, b = _episodes(WaveAgent, specs, 0), _episodes(WaveAgent, specs, 2)
        _same(a, b)
        _same(_episodes(ObsAgent, specs, 0), _episodes(ObsAgent, specs, 2))  # overlapped, early ends
        assert b["env_steps"] == sum(3 + (101 + i) % 3 for i in range(4)) + 8  # finished envs are not stepped
        venv = shared_vecenv(specs, 2)
        assert venv.reset([5] * 5)[0].dtype == np.float32  # the env's own dtype comes back
    finally:
        unregister_suite("toyvec")


class _TenfoldEnv(_CountEnv):
    def step(self, a):
        o, r, *rest = super().step(a)
        return (o, 10 * r, *rest)


class TenfoldSuite(ToySuite):
    """The same suite name with other environments: a suite replaced at run time."""

    def make_env(self, task, seed):
        return _TenfoldEnv()


def test_a_replaced_suite_gets_new_environments_in_process_and_in_workers():
    register_suite(ToySuite())
    try:
        specs = [get_task("toy-count")] * 3
        before = {w: _episodes(WaveAgent, specs, w)["returns"] for w in (0, 2)}
        register_suite(TenfoldSuite(), replace=True)
        specs = [get_task("toy-count")] * 3
        for w in (0, 2):  # the pooled environments of the old suite are not handed out any more
            np.testing.assert_allclose(_episodes(WaveAgent, specs, w)["returns"], 10 * before[w], rtol=1e-6)
    finally:
        unregister_suite("toyvec")


def _wait_gone(pids, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(_gone(p) for p in pids)


def test_workers_exit_on_close_and_errors_surface():
    with VecEnv(["cartpole-balance"] * 3, workers=2, horizon=H) as venv:
        pids, shm = venv.pids, venv._shm[0].name
        assert len(venv.reset([1, 2, 3])) == 3 and venv.alive()
    assert venv.closed and _wait_gone(pids)
    if sys.platform.startswith("linux"):
        assert not Path("/dev/shm", shm).exists()
    venv = VecEnv([get_task("cartpole-balance", H)], workers=1)
    pid = venv.pids[0]
    with pytest.raises(ValueError, match="DMC episodes last at most") as info:
        venv.assign([get_task("cartpole-balance", 1001)])  # the env fails to build in the worker
    assert "Traceback" in str(info.value.__cause__)
    assert venv.closed and _wait_gone([pid])
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset([0])


SCRIPT = """
import sys, time, pathlib
from dtune.eval.vecenv import VecEnv
v = VecEnv(["reach-v3", "cartpole-balance"], workers=2, horizon=5)
v.reset([0, 1])
pathlib.Path(sys.argv[1], "pids.tmp").write_text(" ".join(map(str, v.pids)))
pathlib.Path(sys.argv[1], "pids.tmp").rename(pathlib.Path(sys.argv[1], "pids"))
time.sleep(120)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_workers_die_with_sigkilled_parent(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path)], cwd=ROOT, env=env)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "pids").exists():
            assert parent.poll() is None, "the parent exited early"
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(pids), f"orphaned workers: {[p for p in pids if not _gone(p)]}"
    finally:
        parent.kill()
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
