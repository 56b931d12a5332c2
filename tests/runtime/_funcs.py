"""Functions run by worker processes in tests/runtime (importable as ``tests.runtime._funcs``)."""

import os
import time


def square(x, progress):
    progress.put(1)
    progress.put(2)
    return x * x


def fail_on_two(x, progress):
    if x == 2:
        raise ValueError(f"bad item {x}")
    time.sleep(0.05 * x)
    return x


def sleep_and_report(folder, progress):
    """Record this worker's pid as a file in ``folder``, then sleep far longer than any test."""
    with open(os.path.join(folder, f"{os.getpid()}.pid"), "w"):
        pass
    time.sleep(120)
