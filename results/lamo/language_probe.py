"""Held-out perplexity of the LM inside finished `dtune lamo` runs, before and after RL training (issue 11).

Runs made before 2026-12-06 without the language loss (`--language-weight 0`) report no perplexity; `dtune
lamo` now measures it, through the pre-trained LM's own token embedding and head, and this script measures
it the same way on such a run's saved weights (runs/, not the weightless copies in results/lamo/runs). It
works on any LaMo run, so LaMo's own runs are a check: their perplexity must equal the one they reported.

    .venv/bin/python results/lamo/language_probe.py runs/lamo/*-0.01/lamo*/s*
"""
import json
import sys
from pathlib import Path

import torch

from dtune.data.text import perplexity
from dtune.recipes.lamo import LamoConfig, _language_probe
from dtune.tuners import apply_adapter, load_adapted


def probe(run: Path) -> tuple[float, float]:
    """Perplexity of the base model, then of the same model with the run's adapter applied (the LM and
    the held-out text are read once)."""
    cfg = LamoConfig(**{k: v for k, v in json.loads((run / "config.json").read_text())["lamo"].items()
                        if k in LamoConfig.__dataclass_fields__})
    model, _, _ = load_adapted(run / "base", None)
    language, held = _language_probe(cfg, model, "cpu")
    if language is None:
        sys.exit(f"{run}: no held-out text (run `make corpus`)")
    before = perplexity(language, held, cfg.text_block, cfg.heldout_blocks, model)
    apply_adapter(model, run, run / "base")  # the probe reads this model's blocks: now the trained ones
    return before, perplexity(language, held, cfg.text_block, cfg.heldout_blocks, model)


def main(runs: list[str]) -> None:
    torch.set_num_threads(1)
    print("| run | language weight | tuning | perplexity before | after | reported before / after |")
    print("|---|---|---|---|---|---|")
    for run in map(Path, runs):
        if not (run / "result.json").exists() or not (run / "adapter.safetensors").exists():
            print(f"{run}: not a finished run with its weights; skipped", file=sys.stderr)
            continue
        r = json.loads((run / "result.json").read_text())
        if r.get("lm") is None or not r.get("pretrained", True):
            print(f"{run}: no pre-trained LM (a DT or a random-init LM has no language to keep); skipped", file=sys.stderr)
            continue
        before, after = probe(run)
        reported = ("-" if r.get("perplexity_before") is None
                    else f"{r['perplexity_before']:.1f} / {r['perplexity_after']:.1f}")
        print(f"| {run} | {r['language_weight']:g} | {r['tuning']} | {before:.1f} | {after:.1f} | {reported} |",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
