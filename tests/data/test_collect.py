import os

import numpy as np
import pytest

from dtune.data import storage
from dtune.data.collect import CollectConfig, collect, episode_noise
from dtune.data.storage import DatasetError, read_episodes, read_metadata
from tests.conftest import collect_tiny


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
    a, b = read_episodes(tmp_path, "reach-v3"), read_episodes(tiny_data, "reach-v3")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    meta = read_metadata(tmp_path, "reach-v3")
    assert meta["dataset_id"] == "dtune/metaworld/reach-v3-v0"
    assert meta["dtune"]["episodes"] == 6 and meta["dtune"]["horizon"] == 30
    import minari

    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        ds = minari.load_dataset("dtune/metaworld/reach-v3-v0")
        assert ds.total_episodes == 6 and ds.total_steps == 180
        ep = next(iter(ds.iterate_episodes()))
        assert ep.observations.shape == (31, 39) and ep.actions.shape == (30, 4)
        assert ep.infos["success"].shape == (30,)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def test_dataset_spans_quality(tiny_data):
    ep = read_episodes(tiny_data, "reach-v3")
    st = storage.episode_stats(ep)
    assert st["return_max"] > 2 * st["return_min"]  # random episode vs expert episodes


def test_parallel_equals_serial(tmp_path):
    collect(CollectConfig(tasks="reach-v3,door-open-v3", episodes=3, horizon=10, data_dir=str(tmp_path / "p"),
                          workers=2), show_progress=False)
    collect(CollectConfig(tasks="reach-v3,door-open-v3", episodes=3, horizon=10, data_dir=str(tmp_path / "s"),
                          workers=1), show_progress=False)
    for t in ("reach-v3", "door-open-v3"):
        a, b = read_episodes(tmp_path / "p", t), read_episodes(tmp_path / "s", t)
        np.testing.assert_array_equal(a["observations"], b["observations"])


def test_resume_skips_finished_tasks_and_refuses_other_settings(tmp_path):
    assert collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5) == ["reach-v3"]
    assert collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5) == []
    with pytest.raises(DatasetError, match="--overwrite"):
        collect_tiny(tmp_path, tasks="reach-v3", episodes=3, horizon=5)
    assert collect_tiny(tmp_path, tasks="reach-v3", episodes=3, horizon=5, overwrite=True) == ["reach-v3"]
    assert read_metadata(tmp_path, "reach-v3")["total_episodes"] == 3


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
    with pytest.raises(ValueError, match="--policy random"):
        collect(CollectConfig(suite="dmc", tasks="walker-walk", data_dir=str(tmp_path)), show_progress=False)
    with pytest.raises(ValueError, match="suite"):
        collect(CollectConfig(suite="dmc", tasks="reach-v3", data_dir=str(tmp_path)), show_progress=False)
    with pytest.raises(ValueError, match="positive"):
        collect(CollectConfig(tasks="reach-v3", episodes=0, data_dir=str(tmp_path)), show_progress=False)


def test_missing_and_corrupt_datasets_have_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="dtune data collect --tasks reach-v3"):
        read_episodes(tmp_path, "reach-v3")
    collect_tiny(tmp_path, tasks="reach-v3", episodes=2, horizon=5)
    f = storage.dataset_dir(tmp_path, "reach-v3") / "data" / "main_data.hdf5"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DatasetError, match="corrupt"):
        read_episodes(tmp_path, "reach-v3")


def test_relative_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert collect(CollectConfig(tasks="reach-v3", episodes=1, horizon=5, data_dir="rel/data", workers=1),
                   show_progress=False) == ["reach-v3"]
    assert storage.list_datasets(tmp_path / "rel" / "data") == ["reach-v3"]
