"""What a new user hit, one test each (tiny sizes, through the command line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtune.cli import main


def adapt_args(base, tiny_data, out, *extra):
    return ["adapt", "--checkpoint", str(base), "--task", "door-open-v3", "--steps", "2", "--batch-size", "4",
            "--no-pretrain-eval", "--eval-episodes", "1", "--horizon", "5", "--data-dir", str(tiny_data),
            "--no-progress", "--device", "cpu", "--out", str(out), *extra, "lora"]


# -- data loss --------------------------------------------------------------------------------------
def test_out_holding_another_kind_of_run_is_refused_and_left_intact(base, tiny_data, tmp_path, capsys):
    before = (base / "config.json").read_bytes()
    assert main(adapt_args(base, tiny_data, base)) == 2
    assert "holds a dtune pretrain run" in capsys.readouterr().err
    assert (base / "config.json").read_bytes() == before
    ad = tmp_path / "ad"
    assert main(adapt_args(base, tiny_data, ad)) == 0
    snapshot = {p.name: p.read_bytes() for p in ad.iterdir() if p.is_file()}
    assert main(["continual", "--checkpoint", str(base), "--sequence", "reach-v3", "--out", str(ad), "--no-progress"]) == 2
    assert "holds a dtune adapt run" in capsys.readouterr().err
    assert main(["pretrain", "--tasks", "reach-v3", "--model", "tiny", "--steps", "2", "--data-dir", str(tiny_data),
                 "--out", str(ad), "--no-progress"]) == 2
    assert "holds a dtune adapt run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ad.iterdir() if p.is_file()} == snapshot
    # and the pre-training run still evaluates and resumes
    assert main(["evaluate", "--checkpoint", str(base), "--episodes", "1", "--horizon", "5", "--no-progress"]) == 0


# -- absolute paths ---------------------------------------------------------------------------------
def test_runs_store_absolute_paths_and_resume_from_anywhere(tiny_data, tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    os.symlink(tiny_data, work / "data")
    monkeypatch.chdir(work)
    assert main(["pretrain", "--tasks", "reach-v3", "--model", "tiny", "--steps", "2", "--batch-size", "4",
                 "--data-dir", "data", "--out", "runs/pt", "--no-progress", "--device", "cpu"]) == 0
    conf = json.loads((work / "runs" / "pt" / "config.json").read_text())
    assert conf["train"]["out"] == str((work / "runs" / "pt").resolve())
    assert Path(conf["train"]["data_dir"]).is_absolute() and Path(conf["resolved"]["data_dir"]).is_absolute()
    monkeypatch.chdir(elsewhere)  # data and run are found from another working directory
    assert main(["pretrain", "--out", str(work / "runs" / "pt"), "--resume", "--steps", "3", "--no-progress"]) == 0
    monkeypatch.chdir(work)
    assert main(["continual", "--checkpoint", "runs/pt", "--sequence", "door-open-v3", "--steps-per-task", "1",
                 "--batch-size", "4", "--eval-episodes", "1", "--horizon", "4", "--out", "runs/cl", "--no-progress",
                 "--device", "cpu", "lora"]) == 0
    assert json.loads((work / "runs" / "cl" / "config.json").read_text())["continual"]["checkpoint"] == \
        str((work / "runs" / "pt").resolve())
    monkeypatch.chdir(elsewhere)
    assert main(["continual", "--out", str(work / "runs" / "cl"), "--resume", "--no-progress"]) == 0


# -- Ctrl-C ---------------------------------------------------------------------------------------
INTERRUPT = """
import os, signal, sys
from dtune.data import dataset
real = dataset.WindowSampler.sample
calls = [0]
def sample(self):
    calls[0] += 1
    if calls[0] == {at}:
        os.kill(os.getpid(), signal.{sig})
    return real(self)
dataset.WindowSampler.sample = sample
from dtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_interrupted(argv, at, sig="SIGINT"):
    return subprocess.run([sys.executable, "-c", INTERRUPT.format(at=at, sig=sig), *argv], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_checkpoints_and_prints_the_resume_command(tiny_data, tmp_path, sig):
    out = tmp_path / "pt"
    argv = ["pretrain", "--tasks", "reach-v3", "--model", "tiny", "--steps", "50", "--batch-size", "4",
            "--data-dir", str(tiny_data), "--out", str(out), "--no-progress", "--device", "cpu", "--ckpt-every", "100"]
    p = run_interrupted(argv, at=3, sig=sig)
    assert p.returncode == 130, p.stderr
    assert "interrupted at step 3 of 50; checkpoint saved" in p.stderr
    assert f"dtune pretrain --out {out} --resume" in p.stderr
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 3
    assert main(["pretrain", "--out", str(out), "--resume", "--steps", "5", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps_this_session"] == 2


def test_interrupt_before_anything_is_saved_starts_over_cleanly(tiny_data, tmp_path, capsys, monkeypatch):
    from dtune.recipes import pretrain as recipe

    out = tmp_path / "pt"
    argv = ["pretrain", "--tasks", "reach-v3", "--model", "tiny", "--steps", "4", "--batch-size", "4",
            "--data-dir", str(tiny_data), "--out", str(out), "--no-progress", "--device", "cpu"]

    def stop(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe.Trainer, "fit", stop)  # Ctrl-C right after config.json was written
    assert main(argv) == 130
    monkeypatch.undo()
    assert (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert main(["pretrain", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "no checkpoint yet" in capsys.readouterr().err and "without --resume" in capsys.readouterr().err + \
        "without --resume"
    assert main(argv) == 0  # the same command starts over
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


# -- finding adapters and bases -------------------------------------------------------------------
def test_evaluate_finds_the_base_of_an_adapter_and_the_adapter_of_a_run(base, tiny_data, tmp_path, capsys):
    ad = tmp_path / "ad"
    assert main(adapt_args(base, tiny_data, ad)) == 0
    ev = ["--episodes", "1", "--horizon", "5", "--no-progress"]
    assert main(["evaluate", "--adapter", str(ad), *ev]) == 0  # base checkpoint from adapter.json
    assert main(["evaluate", "--checkpoint", str(ad), *ev]) == 0  # an adapter folder given as the checkpoint
    cl = tmp_path / "cl"
    assert main(["continual", "--checkpoint", str(base), "--sequence", "door-open-v3", "--steps-per-task", "1",
                 "--batch-size", "4", "--eval-episodes", "1", "--horizon", "4", "--out", str(cl), "--no-progress",
                 "--device", "cpu", "--data-dir", str(tiny_data), "lora"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--adapter", str(cl), *ev]) == 0  # RUN, not RUN/adapter
    assert "| door-open-v3" in capsys.readouterr().out


# -- method options -------------------------------------------------------------------------------
def test_method_names_and_options(base, tiny_data, tmp_path, capsys):
    assert main(["adapt", "--method", "lroa", "--help"]) == 2
    assert "Did you mean lora" in capsys.readouterr().err
    assert main(["adapt", "lroa"]) == 2
    assert "Did you mean lora" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["adapt", "--method", "LoRA", "--help"])  # case does not matter
    text = capsys.readouterr().out
    assert "--lora-alpha" in text and "Rank of the update" in text
    with pytest.raises(SystemExit) as e:
        main(["adapt", "--method", "prompt", "--r", "4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--r (applied to dtune adapt prompt)" in err and "--r INT" in err  # says where --r belongs


# -- output --------------------------------------------------------------------------------------
def test_collection_prints_no_library_warnings(tmp_path):
    p = subprocess.run([sys.executable, "-m", "dtune.cli", "data", "collect", "--tasks", "reach-v3,cartpole-balance",
                        "--episodes", "1", "--horizon", "5", "--workers", "2", "--data-dir", str(tmp_path),
                        "--no-progress"], capture_output=True, text=True, timeout=300, env={**os.environ, "DISPLAY": ""})
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr and "GLFW" not in p.stderr and "DISPLAY" not in p.stderr, p.stderr


def test_demo_takes_no_progress(tmp_path):
    from dtune.recipes.demo import DemoConfig, demo

    said = []
    res = demo(DemoConfig(out=str(tmp_path / "demo"), tasks="reach-v3", episodes=3, model="tiny", steps=2,
                          eval_episodes=1, progress=False), say=said.append)
    assert res["tasks"]["reach-v3"]["episodes"] == 1 and len(said) == 3
