"""The training engine: pluggable objectives, one schedule, exact resume, interrupts."""

from __future__ import annotations

import os
import signal
import warnings

import numpy as np
import pytest
import torch

from dtune.models import build_model, preset
from dtune.train.engine import (ActionLoss, Interrupted, NonFiniteLoss, Objective, OptimSettings, Trainer, TunerLoss,
                                load_state, read_state_meta)
from dtune.train.log import MetricsLog


class RandomBatches:
    """A sampler of synthetic MDDT batches with a saveable RNG."""

    def __init__(self, seed=0, b=4, k=3, s=10, a=2):
        self.rng = np.random.default_rng(seed)
        self.shape = (b, k, s, a)

    def sample(self):
        b, k, s, a = self.shape
        r = self.rng
        return {"states": r.standard_normal((b, k, s)).astype(np.float32),
                "actions": r.uniform(-1, 1, (b, k, a)).astype(np.float32),
                "action_mask": np.ones((b, a), bool), "rtg": r.standard_normal((b, k)).astype(np.float32),
                "rewards": r.standard_normal((b, k)).astype(np.float32),
                "timesteps": np.tile(np.arange(k), (b, 1)), "valid": np.ones((b, k), bool)}

    def state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state


class L1Weights(Objective):
    """An extra loss term (as LaMo's language loss will be): here a tiny weight penalty."""

    name = "l1"

    def __init__(self):
        self.calls = torch.zeros(())

    def __call__(self, model, batch):
        self.calls += 1
        pen = 1e-4 * sum(p.abs().sum() for p in model.head.parameters())
        return pen, {"l1": pen.detach()}

    def tensors(self):
        return {"calls": self.calls}

    def load_tensors(self, t):
        self.calls = t["calls"].clone()


def make(seed=0, extra=True):
    torch.manual_seed(seed)
    model = build_model(preset("tiny", state_dim=10, act_dim=2))
    objectives = [ActionLoss(), TunerLoss()] + ([L1Weights()] if extra else [])
    return model, Trainer(model, RandomBatches(seed), objectives, OptimSettings(lr=1e-3, warmup_steps=2), 10,
                          torch.device("cpu"), "fp32", log_every=1, progress=False)


def test_objectives_add_up_and_report_their_metrics(tmp_path):
    model, trainer = make()
    trainer.log = MetricsLog(tmp_path)
    trainer.fit(3)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,action_acc,l1,grad_norm,lr,steps_per_s") and len(rows) == 4
    assert float(trainer.objectives[2].calls) == 3 and trainer.step == 3


def test_resume_equals_uninterrupted(tmp_path):
    _, full = make()
    full.fit(10)
    model, cut = make()
    cut.fit(4)
    cut.save(tmp_path, {"note": "x"})
    model2, again = make(seed=5)  # other seeds: everything must come from the saved state
    model2.load_state_dict(model.state_dict())
    meta, _ = again.load(tmp_path)
    assert meta["note"] == "x" and again.step == 4 and float(again.objectives[2].calls) == 4
    again.fit(10)
    for (n, a), b in zip(full.model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)


def test_elapsed_counts_training_only_across_fit_calls_and_resumes(tmp_path, monkeypatch):
    """`elapsed_s` and the checkpoints' `train_s` count the seconds in `fit`: a pause between two calls
    (a recipe's evaluation) is left out, and a resumed run goes on from the time its state recorded."""
    import csv
    import json
    import types

    from dtune.train import engine

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clock = [0.0]
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    _, trainer = make()
    real = trainer.sampler.sample
    trainer.sampler.sample = lambda: (clock.__setitem__(0, clock[0] + 1.0), real())[1]  # an update: 1 s
    trainer.log = MetricsLog(tmp_path / "a")
    trainer.fit(2)
    clock[0] += 100.0  # an evaluation between the calls
    trainer.fit(4)
    trainer.save(tmp_path / "a")
    trainer.log.close()
    assert [float(r["elapsed_s"]) for r in csv.DictReader(open(tmp_path / "a" / "metrics.csv"))] == [1, 2, 3, 4]
    assert trainer.train_s == 4.0 and json.loads((tmp_path / "a" / "train_state.json").read_text())["train_s"] == 4.0
    _, again = make()
    again.sampler.sample = lambda: (clock.__setitem__(0, clock[0] + 1.0), real())[1]
    again.load(tmp_path / "a")
    assert again.train_s == 4.0
    again.log = MetricsLog(tmp_path / "b")
    clock[0] += 1000.0  # the time between the invocations
    again.fit(6)
    again.log.close()
    assert [float(r["elapsed_s"]) for r in csv.DictReader(open(tmp_path / "b" / "metrics.csv"))] == [5, 6]


def test_sigint_checkpoints_between_updates_and_raises_interrupted(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN where the suite runs in the background
    _, trainer = make()
    real = trainer.sampler.sample
    n = [0]

    def sample():
        n[0] += 1
        if n[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of update 3
        return real()

    trainer.sampler.sample = sample
    saved = []
    with pytest.raises(Interrupted) as e:
        trainer.fit(10, checkpoint=lambda step: (saved.append(step), trainer.save(tmp_path)), ckpt_every=100)
    assert e.value.step == 3 and e.value.saved and saved == [3]  # update 3 finished, then saved
    assert read_state_meta(tmp_path)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_resume_with_another_number_of_processes_warns(tmp_path):
    from dtune.train.engine import rng_states, save_state

    rng = rng_states()
    rng.update({f"{k}.rank1": v for k, v in rng_states().items()})  # a state saved by 2 processes
    save_state(tmp_path, 3, rng=rng)
    with pytest.warns(UserWarning, match="saved by 2 process.*resumes in 1"):
        load_state(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_state(tmp_path, world=2)  # the same number: exact, no warning


def test_inconsistent_state_is_refused(tmp_path):
    import json

    _, trainer = make()
    trainer.fit(2)
    trainer.save(tmp_path)
    meta = json.loads((tmp_path / "train_state.json").read_text())
    meta["step"] = 5
    (tmp_path / "train_state.json").write_text(json.dumps(meta))
    from dtune.train.engine import StateError

    with pytest.raises(StateError, match="inconsistent"):
        load_state(tmp_path)


def test_metrics_log_keeps_rows_up_to_the_resume_point_and_takes_new_columns(tmp_path):
    log = MetricsLog(tmp_path)
    for s in (1, 2, 3):
        log.write({"step": s, "loss": 1.0 / s})
    log = MetricsLog(tmp_path, keep=lambda r: r["step"] <= 2)
    log.write({"step": 3, "loss": 0.1, "penalty": 0.5})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,loss,penalty" and len(lines) == 4 and lines[-1] == "3,0.1,0.5"


def test_logged_rows_average_the_updates_read_once_per_row(tmp_path):
    """Metrics stay on the device between rows; a row holds the mean of its updates' metrics,
    the same as reading every update (`train_step`) and averaging."""
    _, stepwise = make()
    per_update = [stepwise.train_step() for _ in range(4)]
    _, fitted = make()
    fitted.log, fitted.log_every = MetricsLog(tmp_path), 4
    fitted.fit(4)
    import csv
    row = list(csv.DictReader(open(tmp_path / "metrics.csv")))[-1]
    for key in ("loss", "action_acc", "l1", "grad_norm"):
        assert float(row[key]) == pytest.approx(np.mean([m[key] for m in per_update]), rel=1e-6), key
    assert float(row["lr"]) == per_update[-1]["lr"]


@pytest.mark.parametrize("pad", [False, True])
def test_padding_flag_read_on_the_host_gives_the_same_loss(pad):
    """`to_torch` reads `all_valid` from the numpy batch, so the model does not ask the device;
    the loss is the same as when the model reads it from `valid` itself."""
    from dtune.train.engine import to_torch

    model, _ = make()
    raw = RandomBatches(3).sample()
    if pad:
        raw["valid"][0, :2] = False
    batch = to_torch(raw, torch.device("cpu"))
    assert batch["all_valid"] is (not pad)
    model.eval()
    with_flag, _ = model.loss(batch)
    without = {k: v for k, v in batch.items() if k != "all_valid"}
    torch.testing.assert_close(with_flag, model.loss(without)[0], atol=0, rtol=0)


def test_fused_adamw_by_default_and_equal_to_torchs_loop():
    """Fused AdamW on CPUs and GPUs unless asked otherwise; its steps (with weight-decay groups and
    learning-rate scales) equal torch's per-tensor loop."""
    import copy

    from dtune.train.optim import make_optimizer, set_lr

    model, _ = make()
    twin = copy.deepcopy(model)
    fused, loop = make_optimizer(model, 1e-3, 0.01), make_optimizer(twin, 1e-3, 0.01, fused=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    assert [g["weight_decay"] for g in fused.param_groups] == [g["weight_decay"] for g in loop.param_groups]
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        batch = {k: torch.from_numpy(v) for k, v in RandomBatches(step).sample().items()}
        for m, opt in ((model, fused), (twin, loop)):
            set_lr(opt, 1e-3 * (step + 1))
            opt.zero_grad()
            m.loss(batch)[0].backward()
            opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


class NaNFrom(Objective):
    """A loss term that turns NaN from update `start` on (as a diverging run or a miscompiled loss)."""

    name = "nan"

    def __init__(self, start: int):
        self.start, self.calls = start, 0

    def __call__(self, model, batch):
        self.calls += 1
        return (model.head.weight.sum() * float("nan") if self.calls >= self.start else None), {}


@pytest.mark.parametrize("log_every,ckpt_every,raised_at,saved", [(1, 2, 5, [2, 4]), (5, 2, 5, [2, 4]),
                                                                  (10, 3, 6, [3]), (10, 10, 10, [])])
def test_a_non_finite_loss_stops_training_before_anything_is_saved(log_every, ckpt_every, raised_at, saved):
    torch.manual_seed(0)
    model = build_model(preset("tiny", state_dim=10, act_dim=2))
    trainer = Trainer(model, RandomBatches(0), [ActionLoss(), NaNFrom(5)], OptimSettings(lr=1e-3, warmup_steps=2), 10,
                      torch.device("cpu"), "fp32", log_every=log_every, progress=False)
    calls = []
    with pytest.raises(NonFiniteLoss, match="NaN or infinite between updates") as e:
        trainer.fit(10, checkpoint=calls.append, ckpt_every=ckpt_every)
    assert calls == saved and e.value.step == raised_at
    assert e.value.saved == (saved[-1] if saved else None)
    assert ("no checkpoint was written" in str(e.value)) == (not saved) and "--resume" in str(e.value)


@pytest.mark.parametrize("first_stop,saved", [(3, 2), (1, None)])
def test_a_non_finite_loss_after_a_pause_names_the_last_checkpoint_not_the_pause(first_stop, saved):
    # fit called again (a learning curve's pauses): the message names the checkpoint at 2, or none
    torch.manual_seed(0)
    model = build_model(preset("tiny", state_dim=10, act_dim=2))
    trainer = Trainer(model, RandomBatches(0), [ActionLoss(), NaNFrom(5)], OptimSettings(lr=1e-3, warmup_steps=2), 10,
                      torch.device("cpu"), "fp32", log_every=1, progress=False)
    trainer.saved_step = 0  # a new run (what recipes.common.fit sets)
    trainer.fit(first_stop, checkpoint=lambda step: None, ckpt_every=2)
    with pytest.raises(NonFiniteLoss) as e:
        trainer.fit(10, checkpoint=lambda step: None, ckpt_every=100)
    assert e.value.saved == saved
