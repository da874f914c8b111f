"""One process or many: the few collective operations the trainer needs, as no-ops for one.

``torchrun --nproc_per_node N -m trainers.train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; then each process joins a process group (NCCL on CUDA, gloo on CPU) and trains a
DistributedDataParallel copy of the model on its share of every global batch.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes the run (metrics, run.json, checkpoints)."""
        return self.rank == 0

    def all_reduce_(self, t: Tensor) -> Tensor:
        """Sum over ranks, in place (stays on the device: no host sync)."""
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is True on any (e.g. rank 0 saw the loss diverge)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    @torch.no_grad()
    def sync_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics, which each rank
        updates from its own share of the batch), so evaluations agree across ranks."""
        if self.world > 1:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            # DDP modules sit in reference cycles that hold the process group: collect them while
            # it is alive. Left to interpreter exit, gloo's threads are torn down in no set order
            # and a rank aborts ("terminate called without an active exception") after a run
            # that finished.
            gc.collect()
            dist.destroy_process_group()


def init_distributed(device_name: str) -> tuple[Dist, str]:
    """Join the process group torchrun describes (if any); return it and the device name to use
    (``cuda:LOCAL_RANK`` for ``auto``/``cuda`` under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        device_name = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank), device_name
