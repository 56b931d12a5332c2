"""Optional third-party packages that need care when imported."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys


def quiet_legacy_gym() -> None:
    """Import the legacy `gym` package, if installed, without its import-time notice.

    stable-baselines3 imports `gym` whenever it is installed, and d3rlpy needs it; gym 0.26 then
    prints a notice urging a move to Gymnasium to stderr on every import. dtune already uses
    Gymnasium, so the notice says nothing to a dtune user; importing gym once here, with stderr
    captured, keeps it out of their terminal. Errors are not hidden: a gym that fails to import
    raises as usual."""
    if "gym" in sys.modules or importlib.util.find_spec("gym") is None:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        import gym  # noqa: F401
