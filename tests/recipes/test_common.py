import pytest

from dtune.recipes.adapt import RESUME_KEYS, AdaptConfig
from dtune.recipes.common import check_resume


def test_resume_check_reads_a_missing_setting_as_its_default(tmp_path):
    """A run written before a setting existed (here `eval_precision`) resumes with the default,
    and only with it."""
    cfg = AdaptConfig(checkpoint="c", task="reach-v3")
    saved = {k: getattr(cfg, k) for k in RESUME_KEYS if k != "eval_precision"}
    check_resume(saved, cfg, RESUME_KEYS, tmp_path)
    cfg.eval_precision = "bf16"
    with pytest.raises(ValueError, match="eval_precision: 'fp32' -> 'bf16'"):
        check_resume(saved, cfg, RESUME_KEYS, tmp_path)
