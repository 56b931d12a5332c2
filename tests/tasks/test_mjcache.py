"""MuJoCo models compiled once per batch of environments (dtune.tasks.mjcache)."""

import mujoco
import numpy as np
import pytest

from dtune.tasks import make_env
from dtune.tasks.mjcache import compile_once


def _episode(env, seed: int, steps: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [env.reset(seed)]
    for _ in range(steps):
        obs, reward, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        rows.append(np.append(obs, reward))
    return np.concatenate([np.ravel(r) for r in rows])


@pytest.fixture
def count_compiles(monkeypatch):
    """Counts MuJoCo XML compilations (compile_once wraps whatever compiler is in place)."""
    calls = []
    compile_xml = mujoco.MjModel.from_xml_path

    def counted(filename, assets=None):
        calls.append(filename)
        return compile_xml(filename) if assets is None else compile_xml(filename, assets)

    monkeypatch.setattr(mujoco.MjModel, "from_xml_path", staticmethod(counted))
    return calls


def test_one_compilation_per_model_and_the_same_environments(count_compiles):
    plain = [make_env(n, seed=0) for n in ("hammer-v3", "reach-v3")]
    assert len(count_compiles) == 2
    with compile_once():
        envs = [make_env(n, seed=0) for n in ("hammer-v3", "hammer-v3", "reach-v3", "hammer-v3")]
    assert len(count_compiles) == 4  # hammer and reach compiled once each inside the block
    models = [e.env.model for e in envs]
    assert len({id(m) for m in models}) == 4  # every environment owns its model
    for env, ref in zip(envs, [plain[0], plain[0], plain[1], plain[0]]):
        for seed in (3, 4):  # bit-identical episodes, the second after the first has moved bodies
            np.testing.assert_array_equal(_episode(env, seed), _episode(ref, seed))
    models[0].body_pos[1] += 0.5  # one environment's change stays its own
    assert not np.array_equal(models[0].body_pos, models[1].body_pos)


def test_the_compiler_is_restored_after_the_block_also_on_error(count_compiles):
    before = mujoco.MjModel.__dict__["from_xml_path"]
    with pytest.raises(RuntimeError), compile_once():
        with compile_once():  # nested: the outer block's cache serves
            make_env("reach-v3", seed=0)
        make_env("reach-v3", seed=0)
        raise RuntimeError("boom")
    assert mujoco.MjModel.__dict__["from_xml_path"] is before
    make_env("reach-v3", seed=0)  # outside: compiled again
    assert len(count_compiles) == 2
