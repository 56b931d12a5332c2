"""Checkpoint folders: named by a state.json written last, so an interruption leaves one whole."""

from __future__ import annotations

import json

import pytest

from dtune.runtime.io import checkpoint_files, checkpoint_folder


def test_a_checkpoint_folder_is_published_by_its_state_file_and_replaces_the_older_ones(tmp_path):
    with checkpoint_folder(tmp_path, "10", {"step": 10}, legacy=("weights.bin",)) as d:
        (d / "weights.bin").write_text("ten")
    (tmp_path / "weights.bin").write_text("a flat layout's file")  # what an older version left
    with checkpoint_folder(tmp_path, "20", {"step": 20}, legacy=("weights.bin",)) as d:
        (d / "weights.bin").write_text("twenty")
    state, folder = checkpoint_files(tmp_path)
    assert state == {"step": 20, "checkpoint": "ckpt-20"} and (folder / "weights.bin").read_text() == "twenty"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-20", "state.json"]


def test_an_interrupted_checkpoint_leaves_the_previous_one_whole(tmp_path):
    with checkpoint_folder(tmp_path, "10", {"step": 10}) as d:
        (d / "a").write_text("10")
    with pytest.raises(KeyboardInterrupt):
        with checkpoint_folder(tmp_path, "20", {"step": 20}) as d:
            (d / "a").write_text("20")
            raise KeyboardInterrupt
    state, folder = checkpoint_files(tmp_path)
    assert state["step"] == 10 and (folder / "a").read_text() == "10"
    # the same step again (a re-run after an interruption) never writes into the folder state.json names
    with checkpoint_folder(tmp_path, "10", {"step": 10}) as d:
        assert d.name == "ckpt-10-1.tmp"
        (d / "a").write_text("10 again")
    state, folder = checkpoint_files(tmp_path)
    assert state["checkpoint"] == "ckpt-10-1" and (folder / "a").read_text() == "10 again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-10-1", "state.json"]


def test_a_flat_layout_of_older_versions_is_read_in_place(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"step": 5}))
    assert checkpoint_files(tmp_path) == ({"step": 5}, tmp_path)


def test_resumed_precision_records_a_change_with_a_note(capsys):
    from dtune.runtime.device import resumed_precision

    assert resumed_precision("bf16", "bf16", "auto") == "bf16" and capsys.readouterr().out == ""
    assert resumed_precision(None, "fp32", "auto") == "fp32"  # an older run: nothing known
    assert resumed_precision("bf16", "fp32", "auto") == "bf16 then fp32"
    assert "pass --precision bf16 to keep bf16" in capsys.readouterr().out
    assert resumed_precision("bf16 then fp32", "fp32", "auto") == "bf16 then fp32"  # a third start, same machine
    assert resumed_precision("bf16 then fp32", "bf16", "bf16") == "bf16 then fp32 then bf16"
