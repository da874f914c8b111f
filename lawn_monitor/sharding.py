"""Parameters split over processes: FSDP2's DTensors, their local shards, and the one all-reduce
that turns per-layer sums over local shards into the whole layers' sums.

Under ``torch.distributed.fsdp.fully_shard`` each parameter is a DTensor sharded on dim 0: a
process holds some rows of it (``to_local()``; possibly none). A squared norm or a dot product is
a sum over elements, so each process sums its rows, one ``all_reduce`` (SUM) of all layers'
sums stacked together adds the shards, and only then are square roots, ratios and cosines taken.
Under DDP the parameters are plain tensors, the same on every process (DDP averages the
gradients before the step): nothing is reduced, and nothing is counted twice.

``shard_sum(params)`` returns that reduction as a function of a stacked tensor of per-layer
sums (``None`` when no parameter is sharded); the math functions take it as ``reduce``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over processes; the last dim is per layer


def _dtensor_type():
    if not dist.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t: Tensor) -> bool:
    """A DTensor: a parameter that FSDP2 (or tensor parallelism) spreads over processes."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def local(t: Tensor) -> Tensor:
    """This process's part of ``t``: the local shard of a DTensor, ``t`` itself otherwise."""
    return cast("DTensor", t).to_local() if is_sharded(t) else t


def shard_sum(params: list[Tensor]) -> Reduce | None:
    """The all-reduce that makes per-layer sums over local shards the whole layers' sums, or
    None when no parameter is a DTensor (one process, or DDP's replicated copies).

    The returned function takes sums whose last dimension runs over ``params`` and returns them
    summed over the processes of the shards' device mesh, in ONE collective (every process of
    the mesh must call it). A layer that is not sharded on that mesh (a plain tensor or a
    replicated DTensor: the same on every process) is counted on the mesh's first process only.
    Only a one-dimensional mesh (FSDP2's default) is supported.
    """
    sharded = [cast("DTensor", p) for p in params if is_sharded(p)]
    if not sharded:
        return None
    meshes = {tuple(p.device_mesh.mesh.flatten().tolist()) for p in sharded}
    if len(meshes) > 1 or sharded[0].device_mesh.ndim != 1:
        raise NotImplementedError(
            "per-layer norms of parameters on a multi-dimensional or on several device "
            "meshes (HSDP, tensor parallelism) are not supported: use one 1-D mesh (FSDP2's default)"
        )
    mesh = sharded[0].device_mesh
    group, first = mesh.get_group(), mesh.get_local_rank() == 0
    split = [is_sharded(p) and any(pl.is_shard() for pl in cast("DTensor", p).placements) for p in params]
    if all(split):
        counted = None
    else:  # replicated layers: this process's copy counts once in the sum, on the first process
        counted = torch.tensor([1.0 if s or first else 0.0 for s in split])
    devices: dict[tuple, Tensor] = {}

    def reduce(sums: Tensor) -> Tensor:
        if counted is not None:
            key = (sums.device, sums.dtype)
            if key not in devices:  # the mask moves to the device once, not each step
                devices[key] = counted.to(sums.device, sums.dtype)
            sums = sums * devices[key]
        else:
            sums = sums.clone()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        return sums

    return reduce


def all_reduce_sum(group=None) -> Reduce:
    """Sum over the processes of ``group`` (default: all), out of place: for the per-batch output
    statistics, which each process computes on its own share of the global batch."""

    def reduce(t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t

    return reduce


def norms(tensors: list[Tensor], reduce: Reduce | None = None) -> Tensor:
    """L2 norms of ``tensors``, stacked; with ``reduce`` (``shard_sum``), of the whole tensors
    whose local shards these are: squared norms are summed over the shards, then rooted."""
    local_norms = torch.stack(torch._foreach_norm(tensors))
    if reduce is None:
        return local_norms
    return reduce(local_norms.square()).sqrt()
