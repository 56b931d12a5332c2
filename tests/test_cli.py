"""End to end through the command line, on tiny sizes, with a Meta-World and a DMC task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dtune.cli import main


def test_end_to_end_smoke(tmp_path, capsys):
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    assert main(["data", "collect", "--tasks", "reach-v3", "--episodes", "4", "--horizon", "20", "--data-dir", data,
                 "--workers", "1"]) == 0
    assert main(["data", "collect", "--tasks", "point_mass-easy", "--episodes", "2", "--horizon", "20",
                 "--data-dir", data, "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "list", "--data-dir", data]) == 0
    listing = capsys.readouterr().out
    assert "dtune/metaworld/reach-v3/expert-noise-v0" in listing and "dtune/dmc/point_mass-easy/random-v0" in listing
    assert main(["data", "show", "dtune/metaworld/reach-v3/expert-noise-v0", "--data-dir", data]) == 0
    assert "success_rate" in capsys.readouterr().out
    assert main(["pretrain", "--out", run, "--tasks", "reach-v3,point_mass-easy", "--model", "tiny", "--steps", "6",
                 "--batch-size", "8", "--data-dir", data, "--no-progress"]) == 0
    assert main(["evaluate", "--checkpoint", run, "--episodes", "2", "--horizon", "15", "--json",
                 str(tmp_path / "eval.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| reach-v3" in out and "| point_mass-easy" in out and "**mean**" in out
    assert f"model, config and logs in {Path(run).resolve()}" in out and "next: dtune evaluate" in out
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["tasks"]["reach-v3"]["episodes"] == 2


def test_help_texts_come_from_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = capsys.readouterr().out
    assert "--steps" in text and "Optimiser updates" in text and "--resume" in text and "--no-resume" in text
    assert "``" not in text  # no raw reST markup
    flag = text[text.index("--resume, --no-resume"):]
    assert "(default: False)" in " ".join(flag.split("│")).split("--tensorboard")[0]  # on/off flags show their default
    flat = " ".join(text.replace("│", " ").split())
    options = flat.split(" --")[1:]
    assert len(options) > 20 and all(o.count("default") <= 1 for o in options), "a default printed twice"


@pytest.mark.parametrize("argv, message", [
    (["data", "collect", "--tasks", "hamer-v3", "--data-dir", "X"], "did you mean: hammer-v3"),
    (["evaluate", "--checkpoint", "/nonexistent/run"], "no checkpoint"),
    (["evaluate", "--checkpoint", "/nonexistent/run", "--device", "gpu"], "unknown device 'gpu'"),
    (["pretrain", "--tasks", "reach-v3", "--steps", "-5", "--out", "/tmp/dtune-never-written"], "--steps must be positive"),
    (["data", "show", "reach-v3", "--data-dir", "/nonexistent"], "dtune data collect"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not Path("/tmp/dtune-never-written").exists()


def test_choices_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--model", "huge"])
    assert e.value.code == 2 and "tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a method option's choices too
        main(["continual", "--method", "ewc", "--ewc-mode", "sum", "--checkpoint", "/nonexistent/run"])
    assert e.value.code == 2 and "separate" in capsys.readouterr().err


def test_top_level_help_and_version(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(c in text for c in ("continual", "report", "adapt", "evaluate", "demo"))
    assert main(["--version"]) == 0
    from dtune import __version__

    assert capsys.readouterr().out.strip() == f"dtune {__version__}"
    assert main(["pretrian"]) == 2
    assert "Did you mean pretrain" in capsys.readouterr().err


def test_tasks_listing(capsys):
    assert main(["tasks", "--set", "cw10"]) == 0
    out = capsys.readouterr().out
    assert out.index("hammer-v3") < out.index("peg-unplug-side-v3")


def test_resume_takes_the_run_settings(tiny_data, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["pretrain", "--out", run, "--tasks", "reach-v3", "--model", "tiny", "--steps", "4", "--batch-size", "8",
                 "--lr", "0.002", "--data-dir", str(tiny_data), "--no-progress"]) == 0
    # only --out, --resume and the new budget: tasks, model, batch size, lr and data dir come from the run
    assert main(["pretrain", "--out", run, "--resume", "--steps", "6", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["steps_this_session"] == 2
    capsys.readouterr()
    # a contradicting explicit option is refused
    assert main(["pretrain", "--out", run, "--resume", "--steps", "8", "--lr", "0.01", "--no-progress"]) == 2
    assert "lr" in capsys.readouterr().err
    # a finished run says so, and how to extend it
    assert main(["pretrain", "--out", run, "--resume", "--no-progress"]) == 0
    assert "is finished (6 steps); extend it with" in capsys.readouterr().out
    # from Python, the same semantics
    from dtune.recipes.pretrain import resume

    assert resume(run, steps=7, progress=False)["steps_this_session"] == 1


@pytest.mark.parametrize("argv", [["lamo", "--help"], ["tasks"]])  # a long help (written while printing), a short output
def test_a_closed_pipe_ends_quietly(argv):  # (written at the end): `dtune ... | head` shows no traceback
    r, w = os.pipe()
    os.close(r)  # the reader has left before dtune writes a byte
    p = subprocess.run([sys.executable, "-c", "import sys; from dtune.cli import main; sys.exit(main())", *argv],
                       stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr
