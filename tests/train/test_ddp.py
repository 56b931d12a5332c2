"""Distributed training under torchrun on CPU (2 gloo processes): the same global batch gives
the losses of one process, checkpoints are written once, and resume is exact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

INTERRUPT = """
import os, signal, sys
from dtune.data import dataset
real, calls = dataset.WindowSampler.sample, [0]
def sample(self):
    calls[0] += 1
    if calls[0] == 4:  # every rank, during update 4: the run stops after it, on all ranks at once
        os.kill(os.getpid(), signal.SIGINT)
    return real(self)
dataset.WindowSampler.sample = sample
from dtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(args, tiny_data, out, procs=1, script=None, dropout="0.0"):
    cmd = ["pretrain", "--tasks", "reach-v3,cartpole-balance", "--model", "tiny", "--steps", "6", "--batch-size", "8",
           "--precision", "fp32", "--device", "cpu", "--log-every", "1", "--ckpt-every", "3", "--no-progress",
           "--data-dir", str(tiny_data), "--out", str(out), "--arch.dropout", dropout, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        return subprocess.run([sys.executable, "-m", "dtune.cli", *cmd], env=env, capture_output=True, text=True,
                              timeout=300)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    target = [str(script)] if script else ["-m", "dtune.cli"]
    return subprocess.run(launcher + target + cmd, env=env, capture_output=True, text=True, timeout=300)


def losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run([], tiny_data, one).returncode == 0
    p = run([], tiny_data, two, procs=2)
    assert p.returncode == 0, p.stderr[-3000:]
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), atol=1e-5, rtol=1e-4, err_msg=k)
    state = load_file(str(two / "train_state.safetensors"))
    assert "torch_rng" in state and "torch_rng.rank1" in state  # every rank's RNG, written once
    assert json.loads((two / "config.json").read_text())["resolved"]["processes"] == 2
    assert not list(two.glob(".*tmp"))


COUNT_READS = """
import os, sys
from dtune.data import dataset
real = dataset.read_episodes
def read_episodes(root, task, source):  # what building a task's data cache reads from its Minari file
    with open(os.environ["READS_LOG"], "a") as f:
        f.write(f"{os.environ['RANK']} {task}\\n")
    return real(root, task, source)
dataset.read_episodes = read_episodes
from dtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["pretrain", "adapt"])
def test_rank_zero_alone_builds_the_data_cache(base, tiny_data, tmp_path, monkeypatch, command):
    """The flat-array cache of each dataset is built by rank 0 only; the other ranks wait for it and
    open it (each rank reading every Minari file would hold the episodes once per process). In
    `adapt` with EWC: the new task's data and the pre-training data of the Fisher."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(".cache"))  # no cache yet
    script, log = tmp_path / "count.py", tmp_path / "reads.log"
    script.write_text(COUNT_READS)
    monkeypatch.setenv("READS_LOG", str(log))
    expected = ["0 cartpole-balance", "0 reach-v3"]
    if command == "pretrain":
        p = run([], data, tmp_path / "run", procs=2, script=script)
    else:
        cmd = ["adapt", "--checkpoint", str(base), "--task", "door-open-v3", "--steps", "2", "--batch-size", "8",
               "--precision", "fp32", "--device", "cpu", "--no-progress", "--no-pretrain-eval", "--eval-episodes", "0",
               "--data-dir", str(data), "--out", str(tmp_path / "run"), "ewc"]
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script), *cmd], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=300)
        expected = ["0 door-open-v3", *expected]
    assert p.returncode == 0, p.stderr[-3000:]
    reads = log.read_text().split("\n")[:-1]
    assert sorted(reads) == sorted(expected), reads
    assert len(list((data / ".cache").iterdir())) == len(expected)


@pytest.mark.slow
def test_distributed_resume_is_exact(tiny_data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = run([], tiny_data, full, procs=2, dropout="0.1")  # dropout: the ranks' RNGs matter
    assert p.returncode == 0, p.stderr[-3000:]
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT)
    p = run([], tiny_data, cut, procs=2, script=script, dropout="0.1")
    assert p.returncode != 0 and "interrupted at step 4 of 6; checkpoint saved" in p.stderr, p.stderr[-3000:]
    assert json.loads((cut / "train_state.json").read_text())["step"] == 4
    p = run(["--resume"], tiny_data, cut, procs=2, dropout="0.1")
    assert p.returncode == 0, p.stderr[-3000:]
    assert losses(cut) == losses(full)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "l2p", "l2m"])
def test_adaptation_under_torchrun(base, tiny_data, tmp_path, method):
    """LoRA, and the pool methods whose keys only their key-pull term reaches (a non-differentiable top-k
    routes): the same losses, action accuracy, weights and pool counts as one process."""
    cmd = ["adapt", "--checkpoint", str(base), "--task", "door-open-v3", "--steps", "4", "--batch-size", "8",
           "--precision", "fp32", "--device", "cpu", "--log-every", "1", "--no-progress", "--no-pretrain-eval",
           "--eval-episodes", "1", "--horizon", "5", "--data-dir", str(tiny_data), method]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "dtune.cli", *cmd, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "dtune.cli", *cmd, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
    acc = [[json.loads(x)["action_acc"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
           for d in ("one", "two")]
    np.testing.assert_allclose(acc[1], acc[0], rtol=1e-6)  # weighted like the loss across the processes
    assert two.stdout.count(f"| {method}") == 1  # rank 0 reports, once
    a = load_file(str(tmp_path / "one" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter.safetensors"))
    assert method == "lora" or any("counts" in k for k in a)  # the pools' selection counts are compared too
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), atol=1e-5, rtol=1e-4, err_msg=k)
