"""`dtune continual` on a tiny two-task sequence: data isolation, metrics, resume, EWC, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dtune.cli import main
from dtune.recipes import tuning
from dtune.recipes.continual import ContinualConfig, continual
from dtune.report.metrics import cl_metrics
from tests.conftest import die_after_save, training_clock

SEQ = "door-open-v3,reach-v3"


def cfg(base, tiny_data, out, **kw):
    kw = {"sequence": SEQ, "method": "lora", "steps_per_task": 4, "batch_size": 8, "eval_episodes": 2, "horizon": 8,
          "data_dir": str(tiny_data), "progress": False, "device": "cpu", "log_every": 2, "ckpt_every": 2, **kw}
    return ContinualConfig(checkpoint=str(base), out=str(out), **kw)


def test_metrics_on_a_hand_made_matrix():
    m = np.array([[0.8, 0.1, 0.0],
                  [0.6, 0.9, 0.2],
                  [0.4, 0.7, 1.0]])
    r = cl_metrics(m, reference={0: 0.5, 2: 1.0}, pretrain_before=0.6, pretrain_after=0.45)
    assert r["average_score"] == pytest.approx(0.7)
    assert r["forgetting_per_task"] == pytest.approx([0.4, 0.2, 0.0])
    assert r["forgetting"] == pytest.approx(0.2)
    assert r["average_so_far"] == pytest.approx([0.8, 0.75, 0.7])
    assert r["forward_transfer"] == pytest.approx(((0.8 - 0.5) + (1.0 - 1.0)) / 2)
    assert r["retention"] == pytest.approx(0.75)
    partial = cl_metrics(m[:2])
    assert partial["tasks_done"] == 2 and partial["average_score"] is None
    assert partial["average_score_seen"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        cl_metrics(np.zeros((3, 2)))


def test_only_the_current_tasks_data_is_loaded_and_sampled(base, tiny_data, tmp_path, monkeypatch):
    loaded, sampled = [], []
    real_data, real_sample = tuning.TrajectoryData, tuning.WindowSampler.sample

    def data(root, tasks, *a, **kw):
        d = real_data(root, tasks, *a, **kw)
        loaded.append(list(d.tasks))
        return d

    def sample(self):
        batch = real_sample(self)
        sampled.append({self.data.tasks[i] for i in np.unique(batch["task_id"])})
        return batch

    monkeypatch.setattr(tuning, "TrajectoryData", data)
    monkeypatch.setattr(tuning.WindowSampler, "sample", sample)
    res = continual(cfg(base, tiny_data, tmp_path / "cl"))
    assert loaded == [["door-open-v3"], ["reach-v3"]]
    assert sampled == [{"door-open-v3"}] * 4 + [{"reach-v3"}] * 4
    assert np.array(res["matrix"]).shape == (2, 2)
    for name in ("matrix.csv", "metrics.json", "summary.md", "matrix.png", "curves.png", "progress.json",
                 "metrics.csv", "adapter/adapter.json"):
        assert (tmp_path / "cl" / name).exists(), name


def test_a_run_resumed_without_its_pretraining_before_file_gets_it(base, tiny_data, tmp_path, monkeypatch):
    """A run begun before runs kept the unadapted model's per-task pre-training evaluation gets it on
    resume (the report's per-domain figures), the one its recorded score came from."""
    kw = {"eval_pretrain": True, "pretrain_episodes": 1}
    die_after_save(monkeypatch, lambda step, extra: (extra.get("task"), step) == (1, 2))
    with pytest.raises(KeyboardInterrupt):
        continual(cfg(base, tiny_data, tmp_path / "cut", **kw))
    monkeypatch.undo()
    before = tmp_path / "cut" / "evals" / "pretrain_before.json"
    first = json.loads(before.read_text())
    before.unlink()
    res = continual(cfg(base, tiny_data, tmp_path / "cut", resume=True, **kw))
    assert json.loads(before.read_text()) == first and first["mean_score"] == res["pretrain_before"]


@pytest.mark.parametrize("method", ["ewc", "l2m", "l2m-gauss", "l2m-gauss-pre"])
def test_resume_after_an_interruption_equals_the_uninterrupted_run(base, tiny_data, tmp_path, monkeypatch, method):
    training_clock(monkeypatch)  # one second an update
    full = continual(cfg(base, tiny_data, tmp_path / "full", method=method))
    die_after_save(monkeypatch, lambda step, extra: (extra.get("task"), step) == (1, 2))
    with pytest.raises(KeyboardInterrupt):
        continual(cfg(base, tiny_data, tmp_path / "cut", method=method))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="already holds"):
        continual(cfg(base, tiny_data, tmp_path / "cut", method=method))
    training_clock(monkeypatch)
    resumed = continual(cfg(base, tiny_data, tmp_path / "cut", method=method, resume=True))
    monkeypatch.undo()
    assert resumed["matrix"] == full["matrix"]
    # each task's training seconds are its updates', the interrupted task's over both invocations
    times = [[t["train_s"] for t in json.loads((tmp_path / d / "progress.json").read_text())["task_times"]]
             for d in ("full", "cut")]
    assert times[0] == times[1] == [4.0, 4.0] and resumed["train_s"] == full["train_s"] == 8.0
    setup = [json.loads((tmp_path / d / "config.json").read_text())["resolved"]["method_setup"] for d in ("full", "cut")]
    assert setup[1] == setup[0]  # the set-up the first invocation recorded survives the resume
    for i, task in enumerate(SEQ.split(",")):
        a = json.loads((tmp_path / "full" / "evals" / f"after_{i:02d}_{task}.json").read_text())
        b = json.loads((tmp_path / "cut" / "evals" / f"after_{i:02d}_{task}.json").read_text())
        assert [r["return_mean"] for r in a["tasks"].values()] == [r["return_mean"] for r in b["tasks"].values()]
    wa = load_file(str(tmp_path / "full" / "adapter" / "adapter.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "adapter" / "adapter.safetensors"))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    if method.startswith("l2m-gauss"):  # a density per task, fitted from its data after it (not lost to the interruption)
        assert wa["tuner.density_mean"].shape[0] == 2
        thresholds = wa["tuner.density_threshold"].numpy()  # -inf: no rejection (l2m-gauss-pre)
        assert np.isfinite(thresholds).all() if method == "l2m-gauss" else (thresholds == -np.inf).all()
    if method == "l2m-gauss-pre":  # and one per pre-training task, fitted before the first task
        assert wa["tuner.pre_density_mean"].shape[0] == len(json.loads((base / "config.json").read_text())["tasks"])
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["task_index"], r["step"]) for r in rows] == [(0, 2), (0, 4), (1, 2), (1, 4)]


def test_ewc_fisher_is_computed_at_task_switches_and_its_penalty_is_zero_at_the_anchor(base, tiny_data, tmp_path,
                                                                                         monkeypatch):
    from dtune.tuners.penalty import Anchor

    calls = []
    real = Anchor.consolidate

    def spy(self, model, batches=None, loss_fn=None):
        real(self, model, batches, loss_fn)
        calls.append((len(batches), float(self.penalty(model)), sum(float(f.sum()) for f in self.fisher.values())))

    monkeypatch.setattr(Anchor, "consolidate", spy)
    continual(cfg(base, tiny_data, tmp_path / "ewc", sequence="door-open-v3,reach-v3,cartpole-balance", method="ewc",
                  steps_per_task=2))
    # before the first task (pre-training data) and at the two switches; not after the last task
    assert len(calls) == 3
    assert all(n == 10 and pen == 0.0 for n, pen, _ in calls)
    assert calls[0][2] > 0 and calls[1][2] > calls[0][2] and calls[2][2] > calls[1][2]  # Fishers add up


def test_ewc_separate_mode_starts_at_the_second_task_and_keeps_the_last_fisher(base, tiny_data, tmp_path,
                                                                               monkeypatch):
    from dtune.tuners import make_config
    from dtune.tuners.penalty import Anchor

    calls = []
    real = Anchor.consolidate

    def spy(self, model, batches=None, loss_fn=None, with_fisher=True):
        real(self, model, batches, loss_fn, with_fisher)
        calls.append((batches is not None and with_fisher, {n: f.clone() for n, f in self.fisher.items()}))

    monkeypatch.setattr(Anchor, "consolidate", spy)
    method_config = make_config("ewc")
    method_config.ewc_mode = "separate"
    continual(cfg(base, tiny_data, tmp_path / "ewc", sequence="door-open-v3,reach-v3,cartpole-balance", method="ewc",
                  steps_per_task=2), method_config)
    # before the first task: the anchor without a Fisher (no penalty on task 1); then one Fisher per switch
    assert [c[0] for c in calls] == [False, True, True]
    assert calls[0][1] == {}
    first, second = calls[1][1], calls[2][1]
    assert first.keys() == second.keys() and any(not torch.equal(first[n], second[n]) for n in first)
    rows = [json.loads(x) for x in (tmp_path / "ewc" / "metrics.jsonl").read_text().splitlines()]
    penalties = {r["task_index"]: r["penalty"] for r in rows}
    assert penalties[0] == 0.0 and penalties[1] > 0.0  # task 1 free, task 2 pulled to task 1's weights
    conf = json.loads((tmp_path / "ewc" / "config.json").read_text())
    assert conf["method_config"]["ewc_mode"] == "separate"


def test_cli_continual_resume_and_report(base, tiny_data, tmp_path, capsys):
    args = ["continual", "--checkpoint", str(base), "--sequence", SEQ, "--method", "l2m", "--pool-size", "4",
            "--steps-per-task", "2", "--batch-size", "4", "--eval-episodes", "1", "--horizon", "5",
            "--data-dir", str(tiny_data), "--no-progress", "--device", "cpu", "--eval-pretrain", "--pretrain-episodes", "1"]
    for seed in (0, 1):
        assert main(args + ["--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    conf = json.loads((tmp_path / "s0" / "config.json").read_text())
    assert conf["method_config"]["pool_size"] == 4
    m = json.loads((tmp_path / "s0" / "metrics.json").read_text())
    assert m["pretrain_before"] is not None and m["pretrain_after"] is not None
    assert [r["after"] for r in m["pretrain_rows"]] == [1]  # only after the last task
    before = json.loads((tmp_path / "s0" / "evals" / "pretrain_before.json").read_text())  # per task (reports)
    assert before["mean_score"] == m["pretrain_before"]
    # resuming a finished run takes its saved settings and changes nothing
    before = (tmp_path / "s0" / "adapter" / "adapter.safetensors").read_bytes()
    assert main(["continual", "--out", str(tmp_path / "s0"), "--resume", "--no-progress"]) == 0
    assert (tmp_path / "s0" / "adapter" / "adapter.safetensors").read_bytes() == before
    assert main(["continual", "--out", str(tmp_path / "s0"), "--resume", "--steps-per-task", "3"]) == 2
    assert "differ" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| l2m" in out and "| 2 " in out  # two seeds aggregated
    for name in ("report.md", "report.json", "continual.png", "continual_runs.csv"):
        assert (tmp_path / "rep" / name).exists()
    # the routing diagnostic: every evaluated step of every task counted once (1 episode of 5 steps)
    last = sorted((tmp_path / "s0" / "evals").glob("after_01_*.json"))[0]
    routing = json.loads(last.read_text())["routing"]
    assert set(routing) == set(SEQ.split(",")) and all(sum(c.values()) == 5 for c in routing.values())
    doc = json.loads((tmp_path / "s0" / "routing.json").read_text())
    assert set(SEQ.split(",")) <= set(doc["tasks"]) and np.allclose(np.sum(doc["shares"], 1), 1)
    assert (tmp_path / "s0" / "routing.png").exists() and "top entry" in (tmp_path / "s0" / "routing.md").read_text()
    assert "## Routing of the pool methods" in out and "consistency" in out
    assert main(["report", str(tmp_path)]) == 2
    # forward transfer against single-task results of the same method
    ref = tmp_path / "ref" / "door-open"
    ref.mkdir(parents=True)
    (ref / "result.json").write_text(json.dumps({"method": "l2m", "task": "door-open-v3", "new_task_score": -0.5}))
    assert main(["report", str(tmp_path / "s0"), "--reference", str(tmp_path / "ref"), "--out", str(tmp_path / "rep2")]) == 0
    row = json.loads((tmp_path / "rep2" / "report.json").read_text())["continual"][0]
    own = json.loads((tmp_path / "s0" / "metrics.json").read_text())["own_score"][0]
    assert row["forward_transfer"][0] == pytest.approx(own + 0.5)


def test_replay_from_cuts_the_sequences_replay_buffers_and_keeps_its_other_tasks_whole(base, tiny_data, tmp_path,
                                                                                      monkeypatch):
    """A sequence mixing a replay buffer with other data trains on the buffer's later episodes and on the
    other tasks' whole data; a sequence without any replay buffer is refused before anything trains."""
    import shutil

    from tests.conftest import store_as_replay_buffer

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    store_as_replay_buffer(root)
    loaded = []
    real_data = tuning.TrajectoryData

    def data(root, tasks, *a, **kw):
        d = real_data(root, tasks, *a, **kw)
        loaded.append((list(d.tasks), d.task_info[d.tasks[0]]["episodes"], kw["replay_from"]))
        return d

    monkeypatch.setattr(tuning, "TrajectoryData", data)
    continual(cfg(base, root, tmp_path / "cl", sequence="door-open-v3,cartpole-balance", source="expert-noise,sac-replay",
                  replay_from=0.5, steps_per_task=2))
    assert loaded == [(["door-open-v3"], 6, 0.0), (["cartpole-balance"], 2, 0.5)]  # 3 - int(1.5) episodes
    with pytest.raises(ValueError, match="none of the run's datasets is one"):
        continual(cfg(base, root, tmp_path / "none", replay_from=0.5))
    assert not (tmp_path / "none" / "progress.json").exists()


@pytest.fixture(scope="module")
def unseen_data(tmp_path_factory):
    """pendulum-swingup and finger-spin, DMC tasks `base` never saw (no pre-training statistics)."""
    from tests.conftest import collect_tiny

    root = tmp_path_factory.mktemp("unseen")
    collect_tiny(root, tasks="pendulum-swingup,finger-spin", episodes=2, horizon=20, source="random")
    return root


def test_each_new_task_fills_its_unseen_columns_and_a_resume_keeps_them(base, unseen_data, tmp_path, monkeypatch):
    """With `--new-columns task` each task of the sequence z-scores the columns nothing before it
    filled with its own statistics, kept from then on (in the adapter, and in the state a resumed
    run restores)."""
    from dtune.data.dataset import TrajectoryData
    from dtune.models.io import load_model, run_layout
    from dtune.tasks import get_task
    from dtune.tuners import load_adapted

    kw = dict(sequence="pendulum-swingup,finger-spin", new_columns="task", eval_pretrain=False, eval_episodes=1,
              data_dir=str(unseen_data))
    continual(cfg(base, unseen_data, tmp_path / "full", **kw))
    die_after_save(monkeypatch, lambda step, extra: (extra.get("task"), step) == (1, 2))
    with pytest.raises(KeyboardInterrupt):
        continual(cfg(base, unseen_data, tmp_path / "cut", **kw))
    monkeypatch.undo()
    continual(cfg(base, unseen_data, tmp_path / "cut", resume=True, **kw))
    model, run_config = load_model(base)
    layout = run_layout(run_config)
    seen, scales = np.zeros(model.cfg.state_dim, bool), {}
    for run in ("full", "cut"):
        adapted, _, doc = load_adapted(base, tmp_path / run / "adapter")
        scales[run] = {t: doc["task_info"][t]["state_scale"] for t in ("pendulum-swingup", "finger-spin")}
        for task in ("pendulum-swingup", "finger-spin"):
            cols = layout.columns(get_task(task))
            seen[cols] = True
            mean, std = TrajectoryData(unseen_data, task, layout=layout).own_stats()
            np.testing.assert_array_equal(adapted.state_mean[cols].numpy(), mean[cols])
            np.testing.assert_array_equal(adapted.state_std[cols].numpy(), std[cols])
        assert torch.equal(adapted.state_mean[~seen], model.state_mean[~seen])
        assert torch.equal(adapted.state_std[~seen], model.state_std[~seen])
    # each task's scale report, made when it was trained, survives the resume (the progress file keeps it)
    assert scales["cut"] == scales["full"]
    assert all(v["worst_column"] is not None for v in scales["full"].values())  # statistics filled: a report
