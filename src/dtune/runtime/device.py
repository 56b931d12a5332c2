"""Device and precision choice."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(device: str) -> torch.device:
    """`auto` (CUDA if torch sees one, else CPU), `cpu`, `cuda` or `cuda:N`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


def resumed_precision(before: str | None, now: str, requested: str) -> str:
    """The precision record of a resumed run: `now` when it trained in `now` so far (or `before` is unknown),
    else `before` + " then " + `now`, with a note that says so: `auto` resolves per machine, so a run begun
    where the CPU has native bf16 goes on in fp32 on one without (and the other way round)."""
    last = (before or now).split(" then ")[-1]
    if last == now:
        return before or now
    print(f"note: this run trained in {last} so far and goes on in {now} (--precision {requested} on this machine); "
          f"pass --precision {last} to keep {last} (on a CPU without native bf16, bf16 is emulated and slow)")
    return f"{before} then {now}"


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
