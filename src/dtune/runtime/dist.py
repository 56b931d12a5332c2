"""Multi-process training with torch.distributed, as launched by `torchrun`.

    torchrun --standalone --nproc_per_node 8 -m dtune.cli pretrain --tasks mt40 ...   # 8 GPUs: NCCL
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m dtune.cli pretrain ...  # CPU: gloo

`torchrun` sets RANK, WORLD_SIZE and LOCAL_RANK; without them (or with WORLD_SIZE=1) training
runs in one process as usual.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass
class Dist:
    """This process's place in a distributed run."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        torch.distributed.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks."""
        if not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on one."""
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        """``obj`` of every rank, on every rank."""
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


@contextmanager
def main_first(dist: Dist | None):
    """Rank 0 runs the block first, every other rank after it: loading data, whose file cache (the
    flat ``.npy`` arrays of :mod:`dtune.data.dataset`) rank 0 then builds alone, reading each Minari
    file and holding its episodes in memory once instead of once per process (ranks that share the
    data folder's filesystem; a node with its own copy builds it once per process, as before); the
    others open what it wrote. The block must not use collectives. Without `dist`: just the block."""
    if dist is not None and not dist.main:
        dist.barrier()  # until rank 0 has run the block
    try:
        yield
    finally:  # also when rank 0 fails: the others go on and fail on their own, instead of waiting
        if dist is not None and dist.main:
            dist.barrier()


def single_process(command: str) -> None:
    """Refuse to run `command` under `torchrun` with several processes: it has no distributed
    path, so every process would train the same run and write the same folder."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ValueError(f"{command} runs in one process, but torchrun started {world}; launch it without torchrun "
                         "(`dtune pretrain` and `dtune adapt` are the commands that train across processes)")


def init_distributed(device: str = "auto") -> Dist | None:
    """Join the process group `torchrun` set up (NCCL on CUDA, gloo on CPU); None when not under
    `torchrun` or with one process. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        # rank 0 alone evaluates the unadapted model before training (uncached, tens of minutes for many tasks)
        # while the other ranks wait in a collective: a timeout above torch's defaults (gloo 30 min, NCCL 10)
        minutes = float(os.environ.get("DTUNE_DIST_TIMEOUT_MIN", "180"))
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=minutes))
    return Dist(rank, world, local, dev)


def shutdown(dist: Dist | None) -> None:
    """Leave the process group. `destroy_process_group` only drops torch.distributed's own references:
    a DistributedDataParallel model left in a reference cycle keeps the gloo group alive until the
    interpreter's teardown, where its threads aborted the process now and then ("terminate called without an
    active exception", exit -6, after the run had finished). So collect such garbage first, then destroy."""
    if dist is not None and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()
        gc.collect()
