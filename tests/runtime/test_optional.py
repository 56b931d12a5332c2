import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("gym") is None, reason="legacy gym not installed (the `baselines` extra)")
def test_legacy_gym_notice_is_kept_out_of_stderr():
    code = "import gym"
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    quiet = subprocess.run([sys.executable, "-c", "from dtune.runtime.optional import quiet_legacy_gym;"
                            "quiet_legacy_gym(); import gym; import sys; assert 'gym' in sys.modules"],
                           capture_output=True, text=True, check=True)
    assert "Gymnasium" in loud.stderr  # the notice this helper exists for (gym 0.26)
    assert quiet.stderr == ""


@pytest.mark.parametrize("argv", [["lamo", "--out", "x"], ["lm", "pretrain", "--out", "x"],
                                  ["continual", "--checkpoint", "x", "--out", "y"], ["baselines", "--out", "x"]])
def test_single_process_commands_refuse_torchrun(argv, monkeypatch, capsys, tmp_path):
    from dtune.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 2
    assert "launch it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
