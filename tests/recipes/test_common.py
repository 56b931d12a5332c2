import pytest

from dtune.recipes.adapt import RESUME_KEYS, AdaptConfig
from dtune.recipes.common import check_resume, trained_precision


def test_resume_check_reads_a_missing_setting_as_its_default(tmp_path):
    """A run written before a setting existed (here `eval_precision`) resumes with the default,
    and only with it."""
    cfg = AdaptConfig(checkpoint="c", task="reach-v3")
    saved = {k: getattr(cfg, k) for k in RESUME_KEYS if k != "eval_precision"}
    check_resume(saved, cfg, RESUME_KEYS, tmp_path)
    cfg.eval_precision = "bf16"
    with pytest.raises(ValueError, match="eval_precision: 'fp32' -> 'bf16'"):
        check_resume(saved, cfg, RESUME_KEYS, tmp_path)


def test_trained_precision_appends_a_change_on_resume(tmp_path, capsys):
    import json

    assert trained_precision(tmp_path, False, "fp32", "auto") == "fp32"  # a fresh run: this machine's
    assert trained_precision(tmp_path, True, "fp32", "auto") == "fp32"  # no config yet: nothing recorded
    (tmp_path / "config.json").write_text(json.dumps({"resolved": {"precision": "bf16"}}))
    assert trained_precision(tmp_path, False, "fp32", "auto") == "fp32"  # (start_fresh replaces the old run)
    assert trained_precision(tmp_path, True, "bf16", "auto") == "bf16" and capsys.readouterr().out == ""
    assert trained_precision(tmp_path, True, "fp32", "auto") == "bf16 then fp32"
    assert "trained in bf16 so far and goes on in fp32" in capsys.readouterr().out


def test_untouched_rng_restores_every_random_stream():
    import random

    import numpy as np
    import torch

    from dtune.recipes.common import untouched_rng

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with untouched_rng(torch.device("cpu")):
        torch.rand(5), np.random.rand(5), random.random()
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]
