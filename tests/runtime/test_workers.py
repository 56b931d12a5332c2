"""run_parallel: ordered results, progress, errors, the in-process path, and no orphans on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dtune.runtime.workers import run_parallel
from tests.runtime._funcs import fail_on_two, square
from tests.conftest import process_gone as _gone

ROOT = Path(__file__).resolve().parents[2]


def test_results_in_order_and_progress():
    ticks = []
    assert run_parallel(square, range(6), workers=2, on_progress=ticks.append) == [x * x for x in range(6)]
    assert sorted(ticks) == [1] * 6 + [2] * 6


def test_in_process_path():
    ticks = []
    assert run_parallel(square, [3, 4], workers=1, on_progress=ticks.append) == [9, 16]
    assert ticks == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="bad item 2"):
        run_parallel(fail_on_two, [1, 2], workers=1)


def test_worker_exception_surfaces():
    with pytest.raises(ValueError, match="bad item 2") as info:
        run_parallel(fail_on_two, [0, 1, 2, 3], workers=2)
    cause = str(info.value.__cause__)
    assert "fail_on_two" in cause and "Traceback" in cause and "item 2" in cause


SCRIPT = """
import sys
import dtune.runtime.workers as w
from tests.runtime._funcs import sleep_and_report
if sys.argv[2] == "fallback":  # test the watcher thread alone: no PDEATHSIG, fork so the patch holds
    w._set_pdeathsig = lambda: None
w.run_parallel(sleep_and_report, [sys.argv[1]] * 2, workers=2,
               context="fork" if sys.argv[2] == "fallback" else "spawn")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("mode", ["pdeathsig", "fallback"])
def test_workers_die_with_sigkilled_parent(tmp_path, mode):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path), mode]
    parent = subprocess.Popen(cmd, cwd=ROOT, env=env)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(pids) < 2:
            assert parent.poll() is None, "run_parallel exited early"
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
            pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20  # generous: a fully loaded CPU delays the workers noticing
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in pids), f"orphaned workers: {[p for p in pids if not _gone(p)]}"
    finally:
        parent.kill()
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
