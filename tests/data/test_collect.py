import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dtune.data import storage
from dtune.data.collect import CollectConfig, collect, episode_noise
from dtune.data.storage import DatasetError, read_episodes, read_metadata
from tests.conftest import collect_tiny
from tests.conftest import child_pids as _children
from tests.conftest import process_gone

EXP = "expert-noise"


def test_graded_noise_schedule_spans_random_to_expert():
    n = 100
    sig = [episode_noise(i, n, 0.1, 1.0) for i in range(n)]
    assert sig[:10] == [None] * 10  # uniform random actions
    graded = np.array(sig[10:])
    assert np.all(np.diff(graded) <= 0) and graded[0] > 0.9 and graded[-1] < 0.01
    assert 0.25 < np.mean(graded < 0.1) < 0.4  # about a third near-expert
    floored = np.array([episode_noise(i, n, 0.1, 1.0, 0.1) for i in range(10, n)])
    assert floored.min() >= 0.1 and floored[-1] < 0.11 and floored[0] > 0.9
    assert 0.25 < np.mean(floored < 0.2) < 0.4


def test_collect_is_deterministic_and_readable_by_minari(tmp_path, tiny_data):
    collect_tiny(tmp_path, tasks="reach-v3")
    a, b = read_episodes(tmp_path, "reach-v3", EXP), read_episodes(tiny_data, "reach-v3", EXP)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    meta = read_metadata(tmp_path, "reach-v3", EXP)
    assert meta["dataset_id"] == "dtune/metaworld/reach-v3/expert-noise-v0"
    assert meta["dtune"]["episodes"] == 6 and meta["dtune"]["horizon"] == 30
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        ds = minari.load_dataset("dtune/metaworld/reach-v3/expert-noise-v0")
        assert ds.total_episodes == 6 and ds.total_steps == 180
        ep = next(iter(ds.iterate_episodes()))
        assert ep.observations.shape == (31, 39) and ep.actions.shape == (30, 4)
        assert ep.infos["success"].shape == (30,)
        # Meta-World episodes end by the time limit: truncated, never terminated
        assert not ep.terminations.any() and ep.truncations[-1] and not ep.truncations[:-1].any()
        env = ds.recover_environment()  # the environment comes back from the stored spec
        assert env.spec.max_episode_steps == 30
        obs, _ = env.reset(seed=1)
        assert obs.shape == (39,) and env.step(env.action_space.sample())[0].shape == (39,)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def test_dataset_spans_quality(tiny_data):
    ep = read_episodes(tiny_data, "reach-v3", EXP)
    st = storage.episode_stats(ep)
    assert st["return_max"] > 2 * st["return_min"]  # random episode vs expert episodes


def test_parallel_equals_serial(tmp_path):
    collect(CollectConfig(tasks="reach-v3,door-open-v3", episodes=3, horizon=10, data_dir=str(tmp_path / "p"),
                          workers=2, progress=False))
    collect(CollectConfig(tasks="reach-v3,door-open-v3", episodes=3, horizon=10, data_dir=str(tmp_path / "s"),
                          workers=1, progress=False))
    for t in ("reach-v3", "door-open-v3"):
        a, b = read_episodes(tmp_path / "p", t, EXP), read_episodes(tmp_path / "s", t, EXP)
        np.testing.assert_array_equal(a["observations"], b["observations"])


def test_resume_skips_finished_tasks_and_refuses_other_settings(tmp_path):
    assert collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5) == ["reach-v3"]
    assert collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5) == []
    with pytest.raises(DatasetError, match="--overwrite"):
        collect_tiny(tmp_path, tasks="reach-v3", episodes=3, horizon=5)
    assert collect_tiny(tmp_path, tasks="reach-v3", episodes=3, horizon=5, overwrite=True) == ["reach-v3"]
    assert read_metadata(tmp_path, "reach-v3", EXP)["total_episodes"] == 3


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from minari.dataset._storages.hdf5_storage import HDF5Storage

    def boom(self, episodes):
        raise KeyboardInterrupt

    monkeypatch.setattr(HDF5Storage, "update_episodes", boom)
    with pytest.raises(KeyboardInterrupt):
        collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5)
    assert storage.list_datasets(tmp_path) == []
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_bad_collect_requests(tmp_path):
    with pytest.raises(ValueError, match="suite 'dmc' collects random"):
        collect(CollectConfig(source="expert-noise", tasks="walker-walk", data_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="no source 'medium'"):
        collect(CollectConfig(source="medium", tasks="reach-v3", data_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="positive"):
        collect(CollectConfig(tasks="reach-v3", episodes=0, data_dir=str(tmp_path), progress=False))


def test_several_sources_per_task(tmp_path):
    collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5)
    collect_tiny(tmp_path, tasks="reach-v3", episodes=3, horizon=5, source="random")
    assert storage.list_datasets(tmp_path) == [("reach-v3", "expert-noise"), ("reach-v3", "random")]
    assert storage.sources(tmp_path, "reach-v3") == ["expert-noise", "random"]
    assert read_metadata(tmp_path, "reach-v3", "random")["total_episodes"] == 3
    with pytest.raises(DatasetError, match="choose with --source"):
        storage.resolve_sources(tmp_path, ["reach-v3"])
    assert storage.resolve_sources(tmp_path, ["reach-v3"], "random") == {"reach-v3": "random"}
    # a list: per task the first source it has (Meta-World's scripted data with DMC's SAC data)
    collect_tiny(tmp_path, tasks="cartpole-balance", episodes=1, horizon=5)
    assert storage.resolve_sources(tmp_path, ["reach-v3", "cartpole-balance"], "expert-noise, random") == {
        "reach-v3": "expert-noise", "cartpole-balance": "random"}
    with pytest.raises(DatasetError, match="dtune data sac --tasks cartpole-balance"):
        storage.resolve_sources(tmp_path, ["cartpole-balance"], "sac-replay")
    with pytest.raises(ValueError, match="dtune data sac"):
        collect(CollectConfig(source="sac-replay", tasks="cartpole-balance", data_dir=str(tmp_path), progress=False))


def test_datasets_of_dtune_0_1_still_load(tmp_path, tiny_data):
    """The 0.1 layout (dtune/<suite>/<task>-v0, policy instead of source) is found and read."""
    import json
    import shutil

    new = storage.dataset_dir(tiny_data, "reach-v3", EXP)
    old = tmp_path / "dtune" / "metaworld" / "reach-v3-v0"
    shutil.copytree(new, old)
    meta_file = old / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    block = json.loads(meta["dtune"])
    block.pop("source")
    block["policy"] = "expert"
    meta["dtune"], meta["dataset_id"] = json.dumps(block), "dtune/metaworld/reach-v3-v0"
    meta_file.write_text(json.dumps(meta))
    assert storage.list_datasets(tmp_path) == [("reach-v3", EXP)]
    assert storage.dataset_dir(tmp_path, "reach-v3", EXP) == old
    a, b = read_episodes(tmp_path, "reach-v3", EXP), read_episodes(tiny_data, "reach-v3", EXP)
    np.testing.assert_array_equal(a["observations"], b["observations"])
    # collecting the same settings again finds it complete
    assert collect_tiny(tmp_path, tasks="reach-v3") == []


def test_missing_and_corrupt_datasets_have_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="dtune data collect --tasks reach-v3"):
        read_episodes(tmp_path, "reach-v3", EXP)
    collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5)
    f = storage.dataset_dir(tmp_path, "reach-v3", EXP) / "data" / "main_data.hdf5"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DatasetError, match="corrupt"):
        read_episodes(tmp_path, "reach-v3", EXP)


def test_relative_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert collect(CollectConfig(tasks="reach-v3", episodes=1, horizon=5, data_dir="rel/data", workers=1,
                                 progress=False)) == ["reach-v3"]
    assert storage.list_datasets(tmp_path / "rel" / "data") == [("reach-v3", EXP)]


@pytest.mark.slow
def test_kill_9_of_collection_leaves_no_workers_and_only_complete_datasets(tmp_path):
    tasks = "reach-v3,door-open-v3,drawer-close-v3,button-press-v3,plate-slide-v3,window-open-v3"
    p = subprocess.Popen([sys.executable, "-m", "dtune.cli", "data", "collect", "--tasks", tasks, "--episodes", "20",
                          "--horizon", "50", "--workers", "2", "--data-dir", str(tmp_path), "--no-progress"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not storage.list_datasets(tmp_path) and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        workers = _children(p.pid)
        assert storage.list_datasets(tmp_path) and p.poll() is None and workers
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.time() + 20  # generous: a fully loaded CPU delays the workers noticing
        while any(not process_gone(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if not process_gone(w)], "workers outlived the killed collector"
    finally:
        for w in _children(p.pid):
            os.kill(w, signal.SIGKILL)
    done = storage.list_datasets(tmp_path)
    assert 1 <= len(done) < 6
    for task, source in done:  # whatever looks complete reads back fully
        ep = read_episodes(tmp_path, task, source)
        assert len(ep["lengths"]) == 20 and read_metadata(tmp_path, task, source)["total_episodes"] == 20
    # and the collection continues where it stopped
    assert collect(CollectConfig(tasks=tasks, episodes=20, horizon=50, data_dir=str(tmp_path), workers=2,
                                 progress=False)) == [t for t in tasks.split(",") if (t, EXP) not in done]
