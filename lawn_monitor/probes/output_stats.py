"""``OutputStats``: loss, accuracy and the output statistics of the batches a step was computed on."""

from __future__ import annotations

from torch import Tensor

from .. import sharding
from ..outputs import Keys
from .base import Probe
from .schedules import Schedule


class OutputStats(Probe):
    """``train/loss``, ``train/acc``, ``logit_norm``, ``max_prob``, ``flat_frac`` from the batches
    the step was computed on (``Monitor.observe``): no extra forward pass.

    ``reduce`` (e.g. ``sharding.all_reduce_sum()``; the Monitor sets it under torch.distributed)
    sums a tensor over the processes that each computed a share of the global batch: the probe
    reduces sums and counts, one collective per call, so the values are the global batch's. The
    loss given to ``Monitor.step`` is then each process's mean over its share (weighted by its
    share's size; by 1 when no targets are given). Every process must pass the same kinds of
    values (loss, logits and targets) on the same steps."""

    def __init__(self, every_n: int | Schedule = 1, reduce: sharding.Reduce | None = None) -> None:
        super().__init__(every_n)
        self.reduce = reduce
        self.last: tuple[int, Keys, Tensor] | None = None  # the newest values, on the device (Monitor.latest)

    def attach(self, model, optimizer):
        self.collective = self.reduce is not None

    uses_outputs = True

    def compute(self, ctx):
        if not ctx.outputs:
            return None
        keys, total = ctx.outputs.totals()
        if self.reduce is not None:
            total = self.reduce(total)
        values = total[:-1] / total[-1]
        self.last = (ctx.step, keys, values)
        return keys, values
