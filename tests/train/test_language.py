"""LaMo's language loss as an engine objective: it trains the backbone on text next to the action
loss, reports its own metric and resumes exactly (the text sampler's position is saved)."""

import numpy as np
import torch

from dtune.data.text import BlockSampler
from dtune.models.lamo import lamo_model
from dtune.train.engine import ActionLoss, OptimSettings, Trainer
from dtune.train.language import LanguageLoss
from tests.models.test_lm import saved, tiny_gpt2


class DTBatches:
    """Synthetic classic-DT batches (continuous actions) with a saveable RNG."""

    def __init__(self, seed=0, b=4, k=3, s=11, a=3):
        self.rng, self.shape = np.random.default_rng(seed), (b, k, s, a)

    def sample(self):
        b, k, s, a = self.shape
        r = self.rng
        return {"states": r.standard_normal((b, k, s)).astype(np.float32),
                "actions": r.uniform(-1, 1, (b, k, a)).astype(np.float32), "action_mask": np.ones((b, a), bool),
                "rtg": r.standard_normal((b, k)).astype(np.float32), "rewards": np.zeros((b, k), np.float32),
                "timesteps": np.tile(np.arange(k), (b, 1)), "valid": np.ones((b, k), bool)}

    def state(self):
        return self.rng.bit_generator.state

    def set_state(self, s):
        self.rng.bit_generator.state = s


def make(lm_dir, weight=0.1):
    torch.manual_seed(0)
    model = lamo_model(lm_dir, 11, 3, context_len=3, max_timestep=20)
    text = BlockSampler(np.random.default_rng(0).integers(0, 50, 400), block=9, batch_size=2, seed=0)
    trainer = Trainer(model, DTBatches(), [ActionLoss(), LanguageLoss(text, weight)], OptimSettings(lr=1e-3, warmup_steps=1),
                      8, torch.device("cpu"), "fp32", log_every=1, progress=False)
    return model, trainer


def test_language_loss_trains_with_the_action_loss_and_resumes(tmp_path):
    lm_dir = saved(tiny_gpt2(), tmp_path / "gpt2")
    model, full = make(lm_dir)
    metrics = full.train_step()
    assert metrics["lm_loss"] > 0 and "loss" in metrics
    full.fit(8)
    m2, cut = make(lm_dir)
    cut.fit(3)
    (tmp_path / "run").mkdir()
    cut.save(tmp_path / "run")
    m3, again = make(lm_dir)
    m3.load_state_dict(m2.state_dict())
    again.load(tmp_path / "run")
    assert again.objectives[1].sampler.state() == cut.objectives[1].sampler.state()
    again.fit(8)
    for (n, a), b in zip(model.state_dict().items(), m3.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=n)
    # without the term (lambda 0) the language embedding gets no gradient
    m4, off = make(lm_dir, weight=0.0)
    before = m4.lm_wte.weight.clone()
    off.fit(2)
    assert "lm_loss" not in off.train_step() and torch.equal(m4.lm_wte.weight, before)
