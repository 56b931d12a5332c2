"""Fold an adapter into its base checkpoint: a standalone checkpoint that every command takes
where a pre-trained one goes (`dtune evaluate --checkpoint`, `dtune adapt --checkpoint` with any
method, L2M included), e.g. a LaMo model trained with LoRA, or a model fine-tuned on a task that
later adaptations should start from.

    dtune export --adapter runs/lamo-walker2d --out runs/lamo-walker2d-model

Methods that change the weights (full fine-tuning and its variants, LoRA, (IA)3; and every
`modules_to_save`) fold in exactly (the exported model computes what the adapted one did; tested);
methods that add inputs or modules (prompts, prefixes, adapter layers, pools) cannot, and the
command says so. The checkpoint's `config.json` is the base's, with the adapter's tasks added to
`tasks` and `task_info` and an `exported` section naming the adapter, method and base.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtune import __version__, tuners
from dtune.models.io import WEIGHTS, save_weights, weights_digest
from dtune.recipes.common import abspath
from dtune.runtime.io import atomic_write_json
from dtune.runtime.runs import claim_out


@dataclass
class ExportConfig:
    """Fold an adapter (of `dtune adapt`, `dtune continual` or `dtune lamo`) into its base checkpoint."""

    adapter: str
    """The adapter's folder (holds adapter.json and adapter.safetensors)."""
    out: str
    """Folder of the new checkpoint (must not hold one)."""
    checkpoint: str | None = None
    """The base checkpoint (unset: the one the adapter records)."""


def export(cfg: ExportConfig) -> dict:
    """Write the merged checkpoint; returns its config."""
    doc = tuners.read_adapter_config(cfg.adapter)
    base = cfg.checkpoint or doc.get("base_checkpoint")
    if base is None:
        raise ValueError(f"the adapter in {cfg.adapter} records no base checkpoint; pass --checkpoint")
    out = claim_out(cfg.out, "pretrain")
    if (out / WEIGHTS).exists():
        raise ValueError(f"{out} already holds a checkpoint; choose another --out")
    model, config, doc = tuners.load_adapted(base, cfg.adapter)
    tuners.merge(model)  # raises for methods that cannot be folded, before anything is written
    tasks = list(dict.fromkeys(list(config.get("tasks", [])) + list(doc.get("tasks", []))))
    new = {**config, "dtune_version": __version__, "tasks": tasks, "model": model.cfg.to_dict(),  # the adapter's clip
           "exported": {"adapter": abspath(cfg.adapter), "method": doc["method"], "adapter_tasks": doc.get("tasks", []),
                        "base_checkpoint": abspath(base), "base_digest": weights_digest(base)}}
    new.setdefault("kind", "pretrain")
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out, 0)
    atomic_write_json(out / "config.json", new)  # last: a folder without it holds no checkpoint
    return new


__all__ = ["ExportConfig", "export"]
