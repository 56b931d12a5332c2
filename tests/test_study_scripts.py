"""The shell helpers every study script sources (results/study.sh): what they keep and skip decides
which runs a committed report is made from."""

import json
import os
import subprocess
import sys
from pathlib import Path

STUDY = Path(__file__).resolve().parents[1] / "results" / "study.sh"


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # `python`
    return subprocess.run(["bash", "-c", f'source "{STUDY}"; {script}'], cwd=cwd, capture_output=True, text=True,
                          env=env)


def test_keep_copies_a_finished_run_without_weights_and_refuses_a_failed_one(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"steps": 10}))
    (run / "model.safetensors").write_bytes(b"w")
    (run / "checkpoint" / "state.pt").write_bytes(b"s")
    assert sh("keep run kept", tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["result.json"]
    # a run that failed (no result.json / metrics.json): not kept, named with its log, non-zero status
    (tmp_path / "failed").mkdir()
    r = sh("keep failed kept2", tmp_path)
    assert r.returncode == 1 and "failed.log" in r.stderr
    assert not (tmp_path / "kept2").exists() and not (tmp_path / "kept2.tmp").exists()
    # a continual run finishes with metrics.json
    (tmp_path / "cont").mkdir()
    (tmp_path / "cont" / "metrics.json").write_text("{}")
    assert sh("keep cont kept3", tmp_path).returncode == 0 and (tmp_path / "kept3" / "metrics.json").exists()


def test_kept_done_skips_kept_runs_and_warns_about_another_budget(tmp_path):
    kept = tmp_path / "k"
    kept.mkdir()
    assert sh("kept_done k 10", tmp_path).returncode == 1  # nothing kept: run it
    (kept / "result.json").write_text(json.dumps({"steps": 10}))
    same = sh("kept_done k 10", tmp_path)
    assert same.returncode == 0 and same.stderr == ""
    other = sh("kept_done k 20", tmp_path)
    assert other.returncode == 0 and "another number of updates" in other.stderr
