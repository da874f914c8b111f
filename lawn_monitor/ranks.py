"""The Monitor's place among the processes of a distributed run (DDP, FSDP2): rank 0 writes the
run; the others run only the probes that join a collective, on the same steps, and keep nothing.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch.distributed as dist
from torch import nn

from . import sharding
from .probes import Clock, OutputStats, Probe, StepContext


def rank_and_world(process_group: Any = None) -> tuple[int, int]:
    """This process's rank in ``process_group`` (default: all processes) and the group's size;
    (0, 1) without an initialized torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(process_group), dist.get_world_size(process_group)


# A recorded step whose output statistics wait for outputs handed over after it: step, epoch,
# wall time, the probes that read them.
Awaiting = tuple[int, float, float, list[Probe]]


class Ranks:
    """Which process this is, whether it writes, and how its probes take part."""

    def __init__(self, process_group: Any = None, enabled: bool = True) -> None:
        self.process_group = process_group
        self.rank, self.world_size = rank_and_world(process_group) if enabled else (0, 1)
        self.writes = enabled and self.rank == 0  # only rank 0 writes the run

    def prepare(self, probes: list[Probe], model: nn.Module) -> list[Probe]:
        """The probes this process runs: the output statistics summed over the processes (each
        saw its share of the batch); no curvature under FSDP2."""
        if self.world_size > 1:
            for probe in probes:
                if isinstance(probe, OutputStats) and probe.reduce is None:
                    probe.reduce = sharding.all_reduce_sum(self.process_group)
        if any(p.expensive for p in probes) and any(sharding.is_sharded(p) for p in model.parameters()):
            # Their forward passes run on detached copies of the parameters, which under FSDP2 are
            # this process's shards: the model would need FSDP's all-gathers on every process in
            # step, on a schedule each process's own budget decides. Not supported yet.
            if self.writes:
                warnings.warn(
                    "Monitor: curvature probes (gn_trace, hessian_trace, sharpness) are off for "
                    "FSDP2-sharded parameters; norms, update ratios and output statistics are logged",
                    stacklevel=4,
                )
            probes = [p for p in probes if not p.expensive]
        return probes

    @staticmethod
    def join(probes: list[Probe], ctx: StepContext, epoch: float, wall: float, late: bool) -> Awaiting | None:
        """On a process that does not write: run the collective probes due at ``ctx.step`` (their
        schedules depend on the step alone, so they are due on the same steps as on rank 0) and
        keep nothing. Those that read outputs still to come (``late``) are returned to wait."""
        due = [probe for probe in probes if probe.collective and probe.due(Clock(ctx.step, 0.0))]
        waiting = [probe for probe in due if late and probe.uses_outputs]
        for probe in due:
            if probe not in waiting:
                probe.run(ctx)
        return (ctx.step, epoch, wall, waiting) if waiting else None
