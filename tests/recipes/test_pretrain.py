import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dtune.models import io
from dtune.models.io import CheckpointError
from dtune.recipes.pretrain import PretrainConfig, pretrain, resume
from dtune.train import engine
from dtune.train.optim import cosine_lr
from tests.conftest import die_after_save, training_clock

TASKS = "reach-v3,door-open-v3,cartpole-balance"


def cfg(tiny_data, out, **kw):
    base = dict(out=str(out), tasks=TASKS, model="tiny", steps=12, batch_size=8, log_every=2, ckpt_every=6,
                data_dir=str(tiny_data), precision="fp32", device="cpu", progress=False, warmup_steps=3)
    base.update(kw)
    return PretrainConfig(**base)


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 100, 1e-3, 10, 1e-5) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(1e-5, rel=0.1)


def test_resume_equals_uninterrupted(tiny_data, tmp_path, monkeypatch):
    training_clock(monkeypatch)  # one second an update
    full = pretrain(cfg(tiny_data, tmp_path / "full"))
    assert full["steps"] == 12
    # the same run killed right after its step-6 checkpoint (and after logging step 7) ...
    die_after_save(monkeypatch, lambda step, extra: step == 6)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg(tiny_data, tmp_path / "cut"))
    monkeypatch.undo()
    # ... and resumed
    training_clock(monkeypatch)
    resumed = pretrain(cfg(tiny_data, tmp_path / "cut", resume=True))
    monkeypatch.undo()
    assert resumed["steps_this_session"] == 6
    assert full["train_s"] == resumed["train_s"] == 12.0  # the run's training seconds, both invocations'
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a = load_file(str(tmp_path / "full" / io.WEIGHTS))
    b = load_file(str(tmp_path / "cut" / io.WEIGHTS))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_run_directory_contents(tiny_data, tmp_path):
    pretrain(cfg(tiny_data, tmp_path / "r", steps=4, tensorboard=True))
    run = tmp_path / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == "mddt" and config["tasks"] == TASKS.split(",")
    assert config["train"]["steps"] == 4 and config["resolved"]["precision"] == "fp32"
    assert set(config["task_info"]) == set(TASKS.split(","))
    assert (run / "metrics.csv").read_text().startswith("step,loss")
    assert config["kind"] == "pretrain" and config["layout"]["act_dim"] == 6
    assert config["train"]["out"] == str(run.resolve()) and config["train"]["data_dir"] == str(tiny_data.resolve())
    assert any((run / "tb").iterdir())
    assert not list(run.glob(".*tmp"))


def test_refuses_to_overwrite_or_resume_with_other_settings(tiny_data, tmp_path):
    pretrain(cfg(tiny_data, tmp_path / "r", steps=2))
    with pytest.raises(ValueError, match="--resume"):
        pretrain(cfg(tiny_data, tmp_path / "r", steps=2))
    with pytest.raises(ValueError, match="lr"):
        pretrain(cfg(tiny_data, tmp_path / "r", steps=4, lr=1e-2, resume=True))
    with pytest.raises(ValueError, match="no dtune pretrain run"):
        pretrain(cfg(tiny_data, tmp_path / "none", resume=True))


def test_resume_trains_on_the_recorded_datasets_and_refuses_replaced_ones(tiny_data, tmp_path):
    """A resumed run reads the datasets it started on (a second source of a task is no ambiguity),
    refuses another --source, and refuses data replaced since (other episodes: another run)."""
    import shutil

    from tests.conftest import collect_tiny

    root, run = tmp_path / "data", tmp_path / "r"
    shutil.copytree(tiny_data, root)
    pretrain(cfg(root, run, steps=2))
    collect_tiny(root, tasks="reach-v3", episodes=3, source="random")  # a second dataset of reach-v3
    with pytest.raises(ValueError, match="source"):
        pretrain(cfg(root, run, steps=4, source="random", resume=True))
    assert pretrain(cfg(root, run, steps=4, resume=True))["steps"] == 4
    assert json.loads((run / "config.json").read_text())["task_info"]["reach-v3"]["source"] == "expert-noise"
    collect_tiny(root, tasks="door-open-v3", episodes=4, overwrite=True)  # replaced: 4 episodes instead of 6
    with pytest.raises(ValueError, match="door-open-v3 .*not what the run"):
        pretrain(cfg(root, run, steps=6, resume=True))


def test_checkpoint_that_does_not_match_config(tiny_data, tmp_path):
    run = tmp_path / "r"
    pretrain(cfg(tiny_data, run, steps=2))
    config = json.loads((run / "config.json").read_text())
    config["model"]["gpt"]["n_embd"] = 64
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match the model config"):
        io.load_model(run)
    config["model"]["gpt"]["n_embd"] = 32
    (run / "config.json").write_text(json.dumps(config))
    w = load_file(str(run / io.WEIGHTS))
    w.pop("head.weight")
    save_file(w, str(run / io.WEIGHTS), metadata={"step": "2"})
    with pytest.raises(CheckpointError, match="missing"):
        io.load_model(run)


def test_half_written_checkpoint_is_detected(tiny_data, tmp_path):
    run = tmp_path / "r"
    pretrain(cfg(tiny_data, run, steps=2))
    state = json.loads((run / engine.STATE_J).read_text())
    state["step"] = 7
    (run / engine.STATE_J).write_text(json.dumps(state))
    with pytest.raises(engine.StateError, match="inconsistent"):
        pretrain(cfg(tiny_data, run, steps=8, resume=True))


def test_bf16_autocast_trains(tiny_data, tmp_path):
    s = pretrain(cfg(tiny_data, tmp_path / "r", steps=4, precision="bf16"))
    assert s["precision"] == "bf16" and all(l == l for l in losses(tmp_path / "r"))


def test_state_statistics_travel_with_the_checkpoint(tiny_data, tmp_path):
    from dtune.data.dataset import TrajectoryData

    pretrain(cfg(tiny_data, tmp_path / "r", steps=2))
    model, _ = io.load_model(tmp_path / "r")
    data = TrajectoryData(tiny_data, TASKS)
    np.testing.assert_allclose(model.state_mean.numpy(), data.state_mean)
    np.testing.assert_allclose(model.state_std.numpy(), data.state_std)
    assert (model.state_std.numpy()[list(range(39))] != 1).any()


def test_state_clip_is_kept_in_the_model_config_and_older_runs_resume_unclipped(tiny_data, tmp_path):
    """New runs clip z-scored states at 10 sd (the model's config says so, every later use reads
    it); 0 turns it off; a run made before the option existed resumes unclipped, and refuses a clip."""
    pretrain(cfg(tiny_data, tmp_path / "r", steps=2))
    assert io.load_model(tmp_path / "r")[0].cfg.state_clip == 10.0
    pretrain(cfg(tiny_data, tmp_path / "off", steps=2, state_clip=0))
    assert io.load_model(tmp_path / "off")[0].cfg.state_clip is None
    with pytest.raises(ValueError, match="state.clip must be positive"):
        pretrain(cfg(tiny_data, tmp_path / "neg", steps=2, state_clip=-1.0))
    old = json.loads((tmp_path / "off" / "config.json").read_text())
    del old["train"]["state_clip"], old["model"]["state_clip"]  # as written before 2026-12-06
    (tmp_path / "off" / "config.json").write_text(json.dumps(old))
    assert io.load_model(tmp_path / "off")[0].cfg.state_clip is None
    with pytest.raises(ValueError, match="state_clip: None -> 10.0"):
        pretrain(cfg(tiny_data, tmp_path / "off", steps=4, resume=True))
    assert pretrain(cfg(tiny_data, tmp_path / "off", steps=3, resume=True, state_clip=0))["steps"] == 3  # 0 = off = None
    assert resume(str(tmp_path / "off"), steps=4, progress=False)["steps"] == 4
    saved = json.loads((tmp_path / "off" / "config.json").read_text())
    saved["train"]["state_clip"] = 0  # as an explicit --state-clip 0 was saved before 2026-12-06 (11:00)
    (tmp_path / "off" / "config.json").write_text(json.dumps(saved))
    assert resume(str(tmp_path / "off"), steps=5, progress=False)["steps"] == 5
    with pytest.raises(ValueError, match="state-clip must be positive"):
        pretrain(cfg(tiny_data, tmp_path / "nan", steps=2, state_clip=float("nan")))
    assert json.loads((tmp_path / "off" / "config.json").read_text())["model"]["state_clip"] is None


def test_nested_arch_config_is_saved_and_resumed(tiny_data, tmp_path):
    from dtune.recipes.pretrain import ArchConfig, resume

    pretrain(cfg(tiny_data, tmp_path / "r", steps=2, arch=ArchConfig(n_layer=1, n_embd=16)))
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["gpt"]["n_layer"] == 1 and saved["train"]["arch"]["n_embd"] == 16
    s = resume(str(tmp_path / "r"), steps=3)
    assert s["steps"] == 3


@pytest.mark.slow
def test_compiled_loss_trains_like_eager(tiny_data, tmp_path):
    pretrain(cfg(tiny_data, tmp_path / "eager", steps=3))
    pretrain(cfg(tiny_data, tmp_path / "compiled", steps=3, compile=True))
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-4)


def test_data_ratio_is_recorded_and_trains_on_the_seeded_subset(tiny_data, tmp_path):
    """LaMo's low-data regime: a seeded subset of whole trajectories, recorded in config.json;
    the task's evaluation target still comes from its whole dataset."""
    pretrain(cfg(tiny_data, tmp_path / "r", steps=2, data_ratio=0.5, seed=4))
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["train"]["data_ratio"] == 0.5
    from dtune.data.dataset import TrajectoryData

    same = TrajectoryData(tiny_data, TASKS, data_ratio=0.5, ratio_seed=4)
    whole = TrajectoryData(tiny_data, TASKS)
    for t in TASKS.split(","):
        assert config["task_info"][t]["episodes"] == same.task_info[t]["episodes"] < whole.task_info[t]["episodes"]
        assert config["task_info"][t]["return_max"] == pytest.approx(whole.task_info[t]["return_max"], rel=1e-6)


def test_replay_from_trains_on_a_replay_buffers_later_episodes(tiny_data, tmp_path):
    """`--replay-from`: recorded, applied to replay buffers only, refused on a resume that changes it,
    and applied again where the checkpoint's own data is read back (EWC's Fisher, L2M's keys) and
    where an adaptation reads its new task's data."""
    import shutil

    from dtune.models.io import load_model
    from dtune.recipes.adapt import AdaptConfig
    from dtune.recipes.tuning import pretrain_batches, task_data
    from tests.conftest import store_as_replay_buffer

    root, run = tmp_path / "data", tmp_path / "r"
    shutil.copytree(tiny_data, root)
    store_as_replay_buffer(root)  # cartpole-balance's 3 random episodes, as a replay buffer
    source = "expert-noise,sac-replay"
    pretrain(cfg(root, run, steps=2, source=source, replay_from=0.5))
    config = json.loads((run / "config.json").read_text())
    info = config["task_info"]
    assert config["train"]["replay_from"] == 0.5
    assert info["cartpole-balance"]["source"] == "sac-replay" and info["cartpole-balance"]["episodes"] == 2  # 3 - int(1.5)
    assert info["cartpole-balance"]["replay_from"] == 0.5 and "replay_from" not in info["reach-v3"]
    assert info["reach-v3"]["episodes"] == 6  # not a replay buffer: whole
    with pytest.raises(ValueError, match="replay_from"):
        pretrain(cfg(root, run, steps=4, source=source, resume=True))
    model, run_config = load_model(run)
    data, _ = pretrain_batches(model, run_config, root, 1, 8, 0)
    assert data.task_info["cartpole-balance"]["episodes"] == 2
    new = task_data(model, run_config, root, "cartpole-balance",
                    AdaptConfig(checkpoint=str(run), task="cartpole-balance", out=str(tmp_path / "a"),
                                source="sac-replay", replay_from=0.5))
    assert new.task_info["cartpole-balance"]["episodes"] == 2
