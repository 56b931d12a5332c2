"""Shared fixtures: tiny real datasets (two Meta-World tasks, one DMC task), made once per session."""

from __future__ import annotations

import warnings

import pytest

from dtune.data.collect import CollectConfig, collect

MW_TASKS = "reach-v3,door-open-v3"
DMC_TASK = "cartpole-balance"
HORIZON = 30

warnings.filterwarnings("ignore", module="metaworld")


def collect_tiny(root, tasks=MW_TASKS, episodes=6, horizon=HORIZON, **kw):
    return collect(CollectConfig(tasks=tasks, episodes=episodes, horizon=horizon, data_dir=str(root), workers=1,
                                 progress=False, **kw))


def store_as_replay_buffer(root, task=DMC_TASK, source="random", as_source="sac-replay"):
    """Store `task`'s `source` dataset under `root` again as a replay buffer (`as_source`), its episodes
    in the same order: data for `--replay-from` tests."""
    import numpy as np

    from dtune.data.storage import Episode, read_episodes, write_dataset

    ep = read_episodes(root, task, source)
    starts = np.cumsum(ep["lengths"]) - ep["lengths"]
    eps = [Episode(ep["observations"][np.r_[s: s + n, s + n - 1]],  # the final observation repeated
                   ep["actions"][s: s + n], ep["rewards"][s: s + n], np.zeros(n + 1, bool), seed=i)
           for i, (s, n) in enumerate(zip(starts, ep["lengths"]))]
    write_dataset(root, task, as_source, eps, {})


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Data root with 6 short episodes of reach and door-open (expert) and 3 of cartpole-balance (random)."""
    root = tmp_path_factory.mktemp("data")
    collect_tiny(root)
    collect_tiny(root, tasks=DMC_TASK, episodes=3)
    return root


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory):
    """A tiny MDDT pre-trained on reach-v3 and cartpole-balance (5 steps; Meta-World + DMC layout):
    the base checkpoint of adaptation tests. One per test module: adaptation writes its evaluation
    cache into the checkpoint."""
    from dtune.recipes.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("base")
    pretrain(PretrainConfig(out=str(out), tasks=f"reach-v3,{DMC_TASK}", model="tiny", steps=5, batch_size=8,
                            data_dir=str(tiny_data), progress=False, device="cpu"))
    return out


def die_after_save(monkeypatch, when):
    """Make the engine raise KeyboardInterrupt right after it wrote a training state for which
    ``when(step, extra)`` holds: a run killed just after a checkpoint. ``monkeypatch.undo()`` ends it."""
    from dtune.train import engine

    real = engine.save_state

    def save(run_dir, step, optimizer=None, sampler=None, objectives=(), extra=None, *args, **kw):
        real(run_dir, step, optimizer, sampler, objectives, extra, *args, **kw)
        if when(step, extra or {}):
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_state", save)


def training_clock(monkeypatch) -> list[float]:
    """Give the engine a fake clock that each update advances by one second and nothing else advances, so a
    run's training seconds (`Trainer.train_s`, the results' `train_s`) equal its updates. Returns the clock
    (a one-element list); ``monkeypatch.undo()`` ends it."""
    import types

    from dtune.train import engine

    clock = [0.0]
    real = engine.Trainer._update

    def update(self):
        clock[0] += 1.0
        return real(self)

    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(engine.Trainer, "_update", update)
    return clock


def process_gone(pid: int) -> bool:
    """Whether a process has exited (no such process, or a zombie waiting for its parent)."""
    import os
    from pathlib import Path

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out
