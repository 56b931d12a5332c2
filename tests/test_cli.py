"""End to end through the command line, on tiny sizes, with a Meta-World and a DMC task."""

import json

import pytest

from dtune.cli import main


def test_end_to_end_smoke(tmp_path, capsys):
    data, run = str(tmp_path / "data"), str(tmp_path / "run")
    assert main(["data", "collect", "--tasks", "reach-v3", "--episodes", "4", "--horizon", "20", "--data-dir", data,
                 "--workers", "1"]) == 0
    assert main(["data", "collect", "--suite", "dmc", "--tasks", "point_mass-easy", "--policy", "random",
                 "--episodes", "2", "--horizon", "20", "--data-dir", data, "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "list", "--data-dir", data]) == 0
    listing = capsys.readouterr().out
    assert "dtune/metaworld/reach-v3-v0" in listing and "dtune/dmc/point_mass-easy-v0" in listing
    assert main(["data", "show", "dtune/metaworld/reach-v3-v0", "--data-dir", data]) == 0
    assert "success_rate" in capsys.readouterr().out
    assert main(["pretrain", "--out", run, "--tasks", "reach-v3,point_mass-easy", "--model", "tiny", "--steps", "6",
                 "--batch-size", "8", "--data-dir", data, "--no-progress"]) == 0
    assert main(["evaluate", "--checkpoint", run, "--episodes", "2", "--horizon", "15", "--json",
                 str(tmp_path / "eval.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| reach-v3" in out and "| point_mass-easy" in out and "**mean**" in out
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["tasks"]["reach-v3"]["episodes"] == 2


def test_help_texts_come_from_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = capsys.readouterr().out
    assert "--steps" in text and "Optimiser updates" in text and "--resume" in text and "--no-resume" in text


@pytest.mark.parametrize("argv, message", [
    (["data", "collect", "--tasks", "hamer-v3", "--data-dir", "X"], "Did you mean: hammer-v3"),
    (["pretrain", "--tasks", "reach-v3", "--model", "huge", "--data-dir", "X"], "unknown model preset"),
    (["evaluate", "--checkpoint", "/nonexistent/run"], "no checkpoint"),
    (["data", "show", "reach-v3", "--data-dir", "/nonexistent"], "dtune data collect"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


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
