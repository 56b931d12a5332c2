"""A small process pool whose workers never outlive their parent.

`run_parallel(fn, items, workers)` runs `fn(item, progress)` in spawned worker processes, one
pipe per worker (no `multiprocessing.Manager` process). Workers die with the parent, even when
the parent is killed with SIGKILL, in two independent ways:

* Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)`, so the kernel kills the worker when the parent
  dies. It fires when the parent *thread* that started the worker exits, which is fine here as
  that thread waits in `run_parallel` until the workers are done. If the parent died before
  the call, the worker sees that its parent pid changed and exits.
* everywhere: a daemon thread in the worker waits on the parent's sentinel (a pipe whose write end
  only the parent holds: EOF when it dies) and also polls `os.getppid()` every second; either
  signal makes it call `os._exit`, even while the worker's main thread is busy in `fn`.

Workers ignore SIGINT: on Ctrl-C the parent gets `KeyboardInterrupt` and terminates them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable

__all__ = ["run_parallel", "WorkerError", "RemoteTraceback", "die_with_parent", "portable_exception"]

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class WorkerError(RuntimeError):
    """A worker failed with an exception that could not be sent back, or died unexpectedly."""


class RemoteTraceback(Exception):
    """Carries a worker's traceback text as the `__cause__` of the re-raised exception."""

    def __str__(self):
        return self.args[0]


class _LocalProgress:
    """`progress` of the in-process path: `put(n)` calls `on_progress(n)` and `info(d)` calls
    `on_info(d)` directly."""

    def __init__(self, on_progress: Callable[[int], None], on_info: Callable[[dict], None]):
        self._on_progress, self._on_info = on_progress, on_info

    def put(self, n: int = 1) -> None:
        self._on_progress(n)

    def info(self, d: dict) -> None:
        self._on_info(d)


class _PipeProgress:
    """`progress` of a worker: `put(n)` sends `n` to the parent (thread-safe)."""

    def __init__(self, conn):
        self._conn, self._lock = conn, threading.Lock()

    def put(self, n: int = 1) -> None:
        self._send(("progress", n))

    def info(self, d: dict) -> None:
        self._send(("info", d))

    def _send(self, msg) -> None:
        with self._lock:
            self._conn.send(msg)


def _set_pdeathsig() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere or on failure)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _watch_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Exit the process as soon as the parent is gone (sentinel EOF or new parent pid)."""
    parent = mp.parent_process()
    sentinels = [parent.sentinel] if parent is not None and parent.sentinel is not None else []
    while True:
        if (sentinels and wait(sentinels, timeout=poll_s)) or os.getppid() != parent_pid:
            os._exit(1)
        if not sentinels:
            time.sleep(poll_s)


def die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: PDEATHSIG, the race check, then the portable watcher thread."""
    _set_pdeathsig()
    if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was set
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()


def portable_exception(e: BaseException) -> BaseException | None:
    """`e` if it survives pickling (it can be sent to the parent as it is), else None."""
    try:
        return pickle.loads(pickle.dumps(e))
    except Exception:
        return None


def _worker_main(fn: Callable, conn, parent_pid: int) -> None:
    """Worker loop: receive `(index, item)` until `None`; answer `ok` or `err` messages."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    progress = _PipeProgress(conn)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # parent gone
            return
        if task is None:
            return
        idx, item = task
        try:
            progress._send(("ok", idx, fn(item, progress)))  # pickling errors raise before writing
        except Exception as e:
            progress._send(("err", idx, portable_exception(e), traceback.format_exc()))
            return


def _feed(conn, todo) -> bool:
    """Send the next `(index, item)` to a worker, or `None` (stop) when none is left."""
    task = next(todo, None)
    conn.send(task)
    return task is not None


def run_parallel(fn: Callable[[Any, Any], Any], items: Iterable, workers: int,
                 on_progress: Callable[[int], None] | None = None, context: str = "spawn",
                 on_info: Callable[[dict], None] | None = None) -> list:
    """Run `fn(item, progress)` for every item in up to `workers` processes; results in item order.

    `fn` must be importable (picklable by reference), its items and results picklable.
    `progress.put(n)` in `fn` calls `on_progress(n)` in the parent, `progress.info(d)` (a
    picklable dict, e.g. the latest episode return) calls `on_info(d)`. `workers == 1` runs
    everything in this process with the same interface. `context` is `spawn` or `fork`
    (not `forkserver`: the workers' parent must be this process). A worker exception is re-raised in the
    parent (same type and message when it can be pickled, else `WorkerError`) with the worker
    traceback as its `__cause__`, after terminating the other workers; so is any exception,
    `KeyboardInterrupt` included, raised in the parent while waiting.
    """
    items = list(items)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if context not in ("spawn", "fork"):
        raise ValueError(f"context must be 'spawn' or 'fork', got {context!r}")
    tick = on_progress or (lambda n: None)
    tell = on_info or (lambda d: None)
    if workers == 1:
        progress = _LocalProgress(tick, tell)
        return [fn(item, progress) for item in items]

    ctx = mp.get_context(context)
    results: list = [None] * len(items)
    todo = iter(enumerate(items))
    procs: dict = {}  # parent end of the pipe -> worker process
    ok = False
    try:
        for _ in range(min(workers, len(items))):
            conn, child_conn = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(fn, child_conn, os.getpid()), name="dtune-worker")
            p.start()
            child_conn.close()
            procs[conn] = p
        busy = {conn for conn in procs if _feed(conn, todo)}
        while busy:
            for conn in wait(list(busy)):
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (or crashed while starting)
                    p = procs[conn]
                    p.join(1)
                    raise WorkerError(f"worker {p.pid} died unexpectedly (exit code {p.exitcode})") from None
                if msg[0] == "progress":
                    tick(msg[1])
                elif msg[0] == "info":
                    tell(msg[1])
                elif msg[0] == "ok":
                    results[msg[1]] = msg[2]
                    if not _feed(conn, todo):
                        busy.discard(conn)
                else:
                    _, idx, exc, tb = msg
                    where = f"worker {procs[conn].pid} failed on item {idx} ({items[idx]!r:.100}):\n{tb}"
                    raise (exc if exc is not None else WorkerError(where)) from RemoteTraceback(where)
        ok = True
    finally:
        for p in procs.values():
            if not ok and p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(5 if ok else 2)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in procs:
            conn.close()
    return results
