"""A model's outputs as the Monitor reads them: the logits out of any output (a tensor, Hugging
Face's ``ModelOutput``, a dict), sequence logits (B, T, V) as one sample per position with
``IGNORE_INDEX`` targets left out, and the statistics of a batch (accuracy, logit norm, max
softmax probability, flattened samples) as sums, so micro-batches and processes add theirs up
before dividing. Used by the output-statistics probe and by the curvature probes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import FLAT_LOSS  # a sample whose loss is under it counts as flattened (flat_frac)

Keys = list[tuple[str, str]]  # (metric, layer); layer "" is the whole model

IGNORE_INDEX = -100  # a target that is no sample (F.cross_entropy's and Hugging Face's default)
LogitsFn = Callable[[Any], Tensor]


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: the output itself if it is a tensor, else its ``.logits``
    (Hugging Face's ``ModelOutput``) or its ``"logits"`` entry. The default ``logits_fn``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}: pass "
        "logits_fn=lambda output: ... to the Monitor to take them out"
    )


@overload
def flatten_outputs(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]: ...
@overload
def flatten_outputs(logits: Tensor, targets: None = None) -> tuple[Tensor, None]: ...
def flatten_outputs(logits: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Sequence logits (B, T, V) and targets (B, T) as (B*T, V) and (B*T,): each position is a
    sample. Classification logits (B, C) pass unchanged."""
    if logits.ndim <= 2:
        return logits, targets
    return logits.reshape(-1, logits.shape[-1]), None if targets is None else targets.reshape(-1)


NORMALIZED = ("log-probabilities", "probabilities")


@torch.no_grad()
def normalized_flags(logits: Tensor, rows: int = 64) -> Tensor:
    """Whether a batch's "logits" are in fact normalized, as a tensor of two flags on their
    device (no host sync): [a ``log_softmax``'s output (every value <= 0, each row's exp summing
    to 1), a softmax's (values in [0, 1], rows summing to 1)], from the first ``rows`` samples.
    ``normalized_kind`` reads them."""
    flat, _ = flatten_outputs(logits.detach().float())
    flat = flat[:rows]
    if flat.ndim != 2 or flat.shape[-1] < 2 or flat.shape[0] == 0:
        return torch.zeros(2, dtype=torch.bool, device=logits.device)
    log_probs = (flat <= 0).all() & (flat.logsumexp(dim=1).abs() < 1e-3).all()
    probs = ((flat >= 0) & (flat <= 1)).all() & ((flat.sum(dim=1) - 1).abs() < 1e-3).all()
    return torch.stack([log_probs, probs])


def normalized_kind(flags: Tensor) -> str | None:
    """``"log-probabilities"``, ``"probabilities"`` or None from ``normalized_flags`` (read on
    the host: a sync)."""
    found = flags.tolist()
    return next((kind for kind, flag in zip(NORMALIZED, found) if flag), None)


@torch.no_grad()
def output_sums(logits: Tensor, targets: Tensor) -> Tensor:
    """Sums over a batch's samples of [correct, logit norm, max softmax probability, flattened],
    and their number, as a float32 tensor of 5 on the logits' device.

    Sequence logits count each position as a sample (``flatten_outputs``); targets equal to
    ``IGNORE_INDEX`` are left out by weighting with a mask, not by indexing, whose result's size
    would have to be read on the host (a sync).
    """
    logits, flat_targets = flatten_outputs(logits.detach().float(), targets)
    assert flat_targets is not None
    targets = flat_targets
    kept = (targets != IGNORE_INDEX).float()
    per_sample = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE_INDEX)
    correct = (logits.argmax(dim=1) == targets).float()
    logit_norm = logits.norm(dim=1)
    max_prob = logits.softmax(dim=1).amax(dim=1)
    flat = (per_sample < FLAT_LOSS).float()
    sums = torch.stack([correct, logit_norm, max_prob, flat]) @ kept
    return torch.cat([sums, kept.sum().reshape(1)])


def output_stats(logits: Tensor, targets: Tensor) -> Tensor:
    """Accuracy, mean logit norm, mean max softmax probability and flat fraction of a batch.

    Returns a float32 tensor [acc, logit_norm, max_prob, flat_frac] on the logits' device (NaN
    where every target is ``IGNORE_INDEX``).
    """
    sums = output_sums(logits, targets)
    return sums[:4] / sums[4]


class Outputs:
    """The outputs of the (micro-)batches since the last recorded step, reduced as they come:
    the mean of their losses, and output statistics over all their samples. Only sums are
    kept, on the device, so no batch's logits outlive its own step."""

    def __init__(self) -> None:
        self.loss: Tensor | None = None  # sum of the losses given
        self.losses = 0
        self.sums: Tensor | None = None  # output_sums, added up

    def add(
        self, loss: Tensor | float | None = None, logits: Tensor | None = None, targets: Tensor | None = None
    ) -> None:
        if loss is not None:
            loss = loss.detach().float().reshape(()) if isinstance(loss, Tensor) else torch.tensor(float(loss))
            self.loss = loss if self.loss is None else self.loss + loss.to(self.loss.device)
            self.losses += 1
        if logits is not None and targets is not None:
            sums = output_sums(logits, targets.to(logits.device))
            self.sums = sums if self.sums is None else self.sums + sums

    def __bool__(self) -> bool:
        return self.loss is not None or self.sums is not None

    def totals(self) -> tuple[Keys, Tensor]:
        """The statistics' keys and their sums, with the sample count last: what processes that
        each saw a share of the batch add up (``OutputStats(reduce=...)``) before dividing. The
        loss (a mean per micro-batch) is weighted by the samples, or by 1 without targets."""
        known = self.sums if self.sums is not None else self.loss
        if known is None:
            raise ValueError("Outputs.totals: nothing was observed")
        device = known.device
        count = self.sums[4:] if self.sums is not None else torch.ones(1, device=device)
        keys: Keys = []
        parts: list[Tensor] = []
        if self.loss is not None:
            keys.append(("train/loss", ""))
            parts.append((self.loss / self.losses).reshape(1).to(device) * count)
        if self.sums is not None:
            keys += [("train/acc", ""), ("logit_norm", ""), ("max_prob", ""), ("flat_frac", "")]
            parts.append(self.sums[:4])
        return keys, torch.cat([*parts, count])

    def rows(self) -> tuple[Keys, Tensor] | None:
        """The statistics' keys and values (means), or None when nothing was observed."""
        if not self:
            return None
        keys, total = self.totals()
        return keys, total[:-1] / total[-1]
