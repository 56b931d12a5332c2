"""Environments stepped in worker processes, results exchanged through shared memory.

:class:`VecEnv` spreads `n` environments over worker processes (spawn context); each
worker owns a contiguous slice of the shared arrays. Per step the parent writes the actions
and the alive mask into shared memory and sends each worker a tiny command over its pipe; the
worker steps the live envs of its slice, writes observations, rewards and flags into shared
memory and answers with an empty message. Nothing is pickled per environment on the step
path::

    with VecEnv(["reach-v3", "walker-walk"], workers=2) as venv:
        obs = venv.reset([0, 1])                            # list of n observations
        obs, rew, term, trunc, succ = venv.step(actions)    # actions: (n, >= act_dim)

Env `i` goes to worker `i % workers` (worker `w` steps envs `w, w + W, w + 2W, ...`, which
sit in its contiguous block of slots): the evaluator lists the episodes task by task, and
Meta-World tasks differ up to 9x in step time (0.14 ms for door-lock, 1.26 ms for
pick-place-wall), so contiguous runs of envs would leave one worker waiting for the other
(MT40: 5.5 against 7.1 ms per lock-step over the two halves).

Shared memory (one block, each array 64-byte aligned; rows are slots; `O` = largest
obs_dim, `A` = largest act_dim of the specs):

=========  ===========  =============================================================
`act`      (n, A) f8    actions, written by the parent (float32 values are exact in f8)
`alive`    (n,) bool    which envs to step, written by the parent
`seeds`    (n,) i8      reset seeds, written by the parent
`obs`      (n, O) f8    observations padded to `O`; an env fills `obs[slot, :obs_dim]`
`rew`      (n,) f8      rewards (the env's Python float, exactly)
`flags`    (n, 3) bool  terminated, truncated, success
=========  ===========  =============================================================

Results equal the in-process evaluator's bit for bit: each env receives
`actions[i, :act_dim]` converted back to the dtype the agent returned (so an env's own
float32/float64 conversion sees the same values), observations come back in the env's own
dtype, rewards as float64. Envs that are not alive are not stepped; their observation stays
the last one, their reward and flags read 0.

Workers exit on :meth:`VecEnv.close` (also at interpreter exit and when the object is
collected) and when the parent dies, even by SIGKILL (:mod:`dtune.runtime.workers`:
PR_SET_PDEATHSIG plus a watcher thread). PR_SET_PDEATHSIG follows the parent *thread* that
started the worker, so build a VecEnv in a thread that outlives it (the main thread).

Every worker keeps the environments it built, keyed by `(task, horizon)` like
:func:`dtune.eval.rollout.pooled_envs`, so :meth:`VecEnv.assign` re-targets a pool to other
specs cheaply; :func:`shared_vecenv` keeps one pool per worker count for the process
(the evaluator's `env_workers` path). Memory (RSS, measured with Python 3.11, MuJoCo 3.3):
a worker holds about 130 MB with its imports, plus about 22 MB per Meta-World env (the
compiled MjModel: meshes and textures, one copy per env) and 13 MB per DMC env; the MT40
evaluation (400 envs over 2 workers) holds about 4.5 GB per worker, as much as the in-process
pool holds for the same envs. :func:`close_shared` frees the pools.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import signal
import traceback
import weakref
from multiprocessing import shared_memory

import numpy as np

from dtune.runtime.workers import RemoteTraceback, WorkerError, die_with_parent, portable_exception
from dtune.tasks import SUITES, TaskSpec, get_suite, get_task, register_suite, reuse_envs

__all__ = ["VecEnv", "shared_vecenv", "close_shared"]

_ALIGN = 64


def _layout(n: int, obs_w: int, act_w: int) -> tuple[dict, int]:
    """Offsets, shapes and dtypes of the shared arrays; total size in bytes."""
    arrays = [("act", (n, act_w), "f8"), ("alive", (n,), "?"), ("seeds", (n,), "i8"),
              ("obs", (n, obs_w), "f8"), ("rew", (n,), "f8"), ("flags", (n, 3), "?")]
    out, pos = {}, 0
    for name, shape, dt in arrays:
        out[name] = (pos, shape, dt)
        pos += -(-int(np.prod(shape)) * np.dtype(dt).itemsize // _ALIGN) * _ALIGN
    return out, max(pos, _ALIGN)


def _views(buf, layout: dict) -> dict[str, np.ndarray]:
    return {k: np.ndarray(shape, dt, buf, off) for k, (off, shape, dt) in layout.items()}


def _as_spec(s, horizon: int | None) -> TaskSpec:
    return s.with_horizon(horizon) if isinstance(s, TaskSpec) else get_task(s, horizon)


# ---------------------------------------------------------------- worker side


class _Worker:
    """State of one worker process: its env cache, its slice and the shared arrays."""

    def __init__(self):
        self.cache: dict[tuple, list] = {}
        self.shm = None
        self.v: dict[str, np.ndarray] = {}
        self.lo = 0
        self.envs: list = []
        self.act_dims: list[int] = []
        self.obs_dims: list[int] = []
        self.index: list[int] = []  # the parent's env index of each slot of the slice

    def assign(self, shm_name, layout, lo, keys, suites):
        for suite in suites:  # a suite registered (or replaced) at run time in the parent
            if suite.name not in SUITES or pickle.dumps(SUITES[suite.name]) != pickle.dumps(suite):
                register_suite(suite, replace=True)
        if self.shm is None or self.shm.name != shm_name:
            self.v = {}
            if self.shm is not None:
                self.shm.close()
            self.shm = shared_memory.SharedMemory(name=shm_name)
        self.v = _views(self.shm.buf, layout)
        self.envs = reuse_envs(self.cache, [(name, horizon) for name, horizon, _, _ in keys])  # as rollout.pooled_envs
        self.act_dims = [act_dim for _, _, act_dim, _ in keys]
        self.index = [index for _, _, _, index in keys]
        self.lo = lo
        self.obs_dims = [0] * len(self.envs)
        return sum(len(p) for p in self.cache.values())

    def _put(self, i: int, obs) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.ndim != 1 or obs.size > self.v["obs"].shape[1]:
            raise ValueError(f"env {self.index[i]} returned an observation of shape {obs.shape}; "
                             f"expected a flat one of at most {self.v['obs'].shape[1]} values")
        self.v["obs"][self.lo + i, : obs.size] = obs
        return obs

    def reset(self):
        out = []
        for i, env in enumerate(self.envs):
            obs = self._put(i, env.reset(int(self.v["seeds"][self.lo + i])))
            self.obs_dims[i] = obs.size
            out.append((obs.size, obs.dtype.str))
        return out

    def step(self, act_dtype: str):
        v, lo = self.v, self.lo
        act, alive, rew, flags = v["act"], v["alive"], v["rew"], v["flags"]
        for i, env in enumerate(self.envs):
            j = lo + i
            if not alive[j]:
                continue
            o, r, term, trunc, succ = env.step(act[j, : self.act_dims[i]].astype(act_dtype))
            if self._put(i, o).size != self.obs_dims[i]:
                raise ValueError(f"env {self.index[i]} changed its observation size from {self.obs_dims[i]} "
                                 f"to {np.size(o)}")
            rew[j] = r
            flags[j] = (term, trunc, succ)

    def close(self):
        self.v = {}
        if self.shm is not None:
            self.shm.close()


def _worker_main(conn, parent_pid: int) -> None:
    """Worker loop: `(command, *args)` messages until `None` or EOF; answers `("ok", result)`
    or `("err", exception, traceback)`. The step command answers `None` (no payload)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    w = _Worker()
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # parent gone
                return
            if msg is None:
                return
            try:
                if msg[0] == "step":
                    w.step(msg[1])
                    conn.send(None)
                else:
                    conn.send(("ok", getattr(w, msg[0])(*msg[1:])))
            except Exception as e:
                conn.send(("err", portable_exception(e), traceback.format_exc()))
    finally:
        w.close()


# ---------------------------------------------------------------- parent side


def _shutdown(owner: int, procs, conns, shm) -> None:
    """Stop workers (polite `None`, then terminate, then kill) and free the shared memory.
    Only in the process that started them (not in a forked child that inherited the object)."""
    if os.getpid() != owner:
        return
    for c in conns:
        try:
            c.send(None)
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.terminate()
            p.join(2)
        if p.is_alive():
            p.kill()
            p.join()
    for c in conns:
        c.close()
    if shm[0] is not None:
        try:
            shm[0].close()
        except BufferError:  # views still alive (collected object): the mapping goes with them
            pass
        try:
            shm[0].unlink()
        except FileNotFoundError:
            pass
        shm[0] = None


class VecEnv:
    """`n` environments stepped by `workers` processes, each owning a contiguous slice.

    `specs`: :class:`TaskSpec` objects or task names (names take `horizon`, default the
    task's). Envs are built at construction; :meth:`assign` re-targets the same workers.
    """

    def __init__(self, specs, workers: int = 2, horizon: int | None = None, context: str = "spawn"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = int(workers)
        self._shm: list = [None]  # a cell, shared with the finalizer
        self._procs: list = []
        self._conns: list = []
        self._cap = (0, 0, 0)
        self._closed = False
        self._pending: list[int] = []
        ctx = mp.get_context(context)
        self._finalizer = weakref.finalize(self, _shutdown, os.getpid(), self._procs, self._conns, self._shm)
        try:
            for _ in range(self.workers):
                conn, child = ctx.Pipe()
                p = ctx.Process(target=_worker_main, args=(child, os.getpid()), name="dtune-env-worker",
                                daemon=not mp.current_process().daemon)
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(conn)
            self.assign(specs, horizon)
        except BaseException:
            self.close()
            raise

    # -- lifecycle

    def close(self) -> None:
        """Stop the workers and free the shared memory (idempotent)."""
        self._closed = True
        self._v = {}
        self._finalizer()

    def __enter__(self) -> "VecEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def alive(self) -> bool:
        """Whether the pool is open and every worker process still runs."""
        return not self._closed and all(p.is_alive() for p in self._procs)

    # -- messaging

    def _send(self, ws, msg) -> None:
        try:
            for w in ws:
                self._conns[w].send(msg)
        except BaseException as e:  # a worker is gone, or interrupted: the pipes are out of step
            self.close()
            if isinstance(e, OSError):
                raise WorkerError(f"env worker gone ({e})") from e
            raise

    def _recv(self, ws) -> list:
        out, err = [], None
        try:
            for w in ws:  # read every answer, so the pipes stay in step even when one failed
                try:
                    msg = self._conns[w].recv()
                except (EOFError, OSError):
                    p = self._procs[w]
                    p.join(1)
                    err = err or WorkerError(f"env worker {p.pid} died unexpectedly (exit code {p.exitcode})")
                    continue
                if msg is not None and msg[0] == "err":
                    _, exc, tb = msg
                    where = f"env worker {self._procs[w].pid} failed:\n{tb}"
                    if err is None:
                        err = (exc if exc is not None else WorkerError(where)), where
                    continue
                out.append(None if msg is None else msg[1])
        except BaseException:  # interrupted (Ctrl-C) while waiting: answers would be left unread
            self.close()
            raise
        if err is not None:
            self.close()  # the workers' state is unknown now
            if isinstance(err, tuple):
                raise err[0] from RemoteTraceback(err[1])
            raise err
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VecEnv is closed")
        if self._pending:
            raise RuntimeError("a step is in flight: call step_wait() first")

    def _call(self, ws, msg) -> list:
        self._check_open()
        self._send(ws, msg)
        return self._recv(ws)

    # -- API

    def assign(self, specs, horizon: int | None = None) -> None:
        """Point the workers at `specs` (envs they built before are reused, others built)."""
        self._check_open()
        specs = [_as_spec(s, horizon) for s in specs]
        if not specs:
            raise ValueError("VecEnv needs at least one environment")
        n = len(specs)
        obs_w, act_w = max(s.obs_dim for s in specs), max(s.act_dim for s in specs)
        old = None
        if n > self._cap[0] or obs_w > self._cap[1] or act_w > self._cap[2]:  # a larger block
            cap = (max(n, self._cap[0]), max(obs_w, self._cap[1]), max(act_w, self._cap[2]))
            layout, size = _layout(*cap)
            old, self._shm[0] = self._shm[0], shared_memory.SharedMemory(create=True, size=size)
            self._cap, self._layout = cap, layout
            self._v = _views(self._shm[0].buf, layout)
        self.specs, self.n = specs, n
        self.act_dims = [s.act_dim for s in specs]
        self.obs_dims = [s.obs_dim for s in specs]
        self._obs_dtypes, self._uniform_f8 = [np.dtype("f8")] * n, True
        self._order = np.concatenate([np.arange(w, n, self.workers) for w in range(self.workers)])  # slot -> env
        self._slot = np.empty(n, np.intp)  # env -> slot
        self._slot[self._order] = np.arange(n)
        self.bounds = [0] + np.cumsum([len(range(w, n, self.workers)) for w in range(self.workers)]).tolist()
        self.suites = {s.suite: get_suite(s.suite) for s in specs}  # the suite objects the envs come from
        suites = list(self.suites.values())
        try:
            for w in range(self.workers):
                lo, hi = self.bounds[w], self.bounds[w + 1]
                keys = [(specs[i].name, specs[i].horizon, specs[i].act_dim, int(i)) for i in self._order[lo:hi]]
                self._send([w], ("assign", self._shm[0].name, self._layout, lo, keys, suites))
            self.cached_envs = self._recv(range(self.workers))
        finally:
            if old is not None:  # the workers have moved to the new block (or are gone)
                old.close()
                old.unlink()
        self._v["alive"][:] = False

    def reset(self, seeds) -> list[np.ndarray]:
        """Reset env `i` with `seeds[i]`; the first observations (each in its env's dtype)."""
        self._check_open()
        seeds = np.asarray(seeds, dtype=np.int64)
        if seeds.shape != (self.n,):
            raise ValueError(f"need {self.n} seeds, got {seeds.shape}")
        self._v["seeds"][self._slot] = seeds
        info = [x for part in self._call(range(self.workers), ("reset",)) for x in part]  # by slot
        info = [info[k] for k in self._slot]
        self.obs_dims = [d for d, _ in info]
        self._obs_dtypes = [np.dtype(t) for _, t in info]
        self._uniform_f8 = all(t == np.float64 for t in self._obs_dtypes)
        return self._obs()

    def _obs(self) -> list[np.ndarray]:
        buf = self._v["obs"][self._slot]  # a copy in env order: the agent may keep them
        if self._uniform_f8:
            return [buf[i, :d] for i, d in enumerate(self.obs_dims)]
        return [buf[i, :d].astype(t, copy=False) for i, (d, t) in enumerate(zip(self.obs_dims, self._obs_dtypes))]

    def step_async(self, actions, alive=None, workers=None) -> None:
        """Start stepping: write `actions` (n, >= act_dim) and the alive mask, signal the
        workers (`workers`: a subset of worker indices; default all). Finish with :meth:`step_wait`."""
        self._check_open()
        n, v = self.n, self._v
        actions = np.asarray(actions)
        need = max(self.act_dims)
        if actions.ndim != 2 or actions.shape[0] != n or actions.shape[1] < need:
            raise ValueError(f"actions must have shape ({n}, >= {need}); got {actions.shape}")
        if actions.dtype.kind not in "fiub":
            raise ValueError(f"actions must be numeric; got {actions.dtype}")
        ws = range(self.workers) if workers is None else workers
        mask = np.ones(n, bool) if alive is None else np.asarray(alive, bool)
        for w in ws:
            lo, hi = self.bounds[w], self.bounds[w + 1]
            envs = self._order[lo:hi]
            v["act"][lo:hi, :need] = actions[envs, :need]
            v["alive"][lo:hi] = mask[envs]
            v["flags"][lo:hi] = False
            v["rew"][lo:hi] = 0.0
        self._pending = list(ws)
        self._send(self._pending, ("step", actions.dtype.str))

    def step_wait(self):
        """Wait for the workers of the last :meth:`step_async`; returns `(obs, rewards,
        terminated, truncated, success)`: obs a list of n arrays, the others (n,) arrays
        (float64 rewards; zeros for envs not stepped)."""
        if not self._pending:
            raise RuntimeError("no step in flight: call step_async() first")
        ws, self._pending = self._pending, []
        self._recv(ws)
        v, slot = self._v, self._slot
        flags = v["flags"][slot]
        return self._obs(), v["rew"][slot], flags[:, 0], flags[:, 1], flags[:, 2]

    def envs_of(self, worker: int) -> np.ndarray:
        """Indices of the envs that `worker` steps."""
        return self._order[self.bounds[worker]: self.bounds[worker + 1]].copy()

    def step(self, actions, alive=None):
        """Step every env where `alive` (default all) with `actions[i, :act_dim]`."""
        self.step_async(actions, alive)
        return self.step_wait()


# ---------------------------------------------------------------- process-wide pools

_SHARED: dict[int, VecEnv] = {}


def shared_vecenv(specs: list[TaskSpec], workers: int) -> VecEnv:
    """A process-wide pool of `workers` env workers pointed at `specs`; the workers and the envs
    they built are kept for later calls (like :func:`dtune.eval.rollout.pooled_envs`). A pool
    whose workers died (or that was closed) is replaced."""
    venv = _SHARED.get(workers)
    if venv is not None and not venv.alive():
        venv.close()
        venv = None
    if venv is None:
        venv = _SHARED[workers] = VecEnv(specs, workers)
    elif [(s.name, s.horizon) for s in venv.specs] != [(s.name, s.horizon) for s in specs] or \
            venv.act_dims != [s.act_dim for s in specs] or \
            any(get_suite(s.suite) is not venv.suites.get(s.suite) for s in specs):  # a suite replaced since
        venv.assign(specs)
    return venv


def close_shared() -> None:
    """Close the process-wide pools (also done at interpreter exit)."""
    while _SHARED:
        _SHARED.popitem()[1].close()


atexit.register(close_shared)
