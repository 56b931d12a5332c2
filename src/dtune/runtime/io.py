"""Atomic file writes: a file is written under a hidden temporary name and renamed into place,
so a reader never sees a half-written file and an interrupted write leaves the old one intact.
A checkpoint of several files is one folder named by a `state.json` written last
(:func:`checkpoint_folder`), so an interruption leaves the previous checkpoint whole."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def atomic_save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """safetensors file of `tensors` (moved to CPU, made contiguous), written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


@contextmanager
def checkpoint_folder(wd: str | os.PathLike, name: str, state: dict, legacy: tuple[str, ...] = ()):
    """Write one checkpoint of several files: the caller writes them into the yielded folder;
    when the block ends without error the folder becomes `wd/<name>` (`-1`, `-2`... added if that
    exists: `state.json` may name it), then `wd/state.json` is written atomically with `state` and
    `"checkpoint": <folder name>`, last, and only then are the older `ckpt-*` folders and the
    `legacy` files (a flat layout of older versions) deleted. A reader takes the folder that
    `state.json` names (:func:`checkpoint_files`): an interruption at any point leaves either the
    previous checkpoint or the new one, whole."""
    wd = Path(wd)
    base, i = f"ckpt-{name}", 0
    final = base
    while (wd / final).exists():
        i += 1
        final = f"{base}-{i}"
    tmp = wd / f"{final}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    os.replace(tmp, wd / final)
    atomic_write_text(wd / "state.json", json.dumps({**state, "checkpoint": final}))
    for old in wd.iterdir():  # what state.json names no more
        if old.name != final and (old.name.startswith("ckpt-") or old.name in legacy):
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def checkpoint_files(wd: str | os.PathLike) -> tuple[dict, Path]:
    """`(state, folder)` of the checkpoint in `wd` (:func:`checkpoint_folder`); a flat layout of
    older versions (the files beside `state.json`, which names no folder) gives `wd` itself."""
    wd = Path(wd)
    state = json.loads((wd / "state.json").read_text())
    return state, (wd / state["checkpoint"] if "checkpoint" in state else wd)
