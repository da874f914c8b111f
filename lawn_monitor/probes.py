"""Probes: what the Monitor measures each step, one small class per kind of measurement.

A probe only computes. The base class owns its schedule (a callable ``step -> bool``) and the
hand-off: ``compute`` returns a list of ``(metric, layer)`` keys and one 1-D tensor of values
*on the device*. The Monitor keeps those tensors and copies them to the host once per flush, so
no probe ever makes the GPU wait (no ``.item()`` here).

The math lives in plain tensor functions (``layer_norms``, ``output_stats``) tested alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Schedule = Callable[[int], bool]
Keys = list[tuple[str, str]]  # (metric, layer); layer "" is the whole model

FLAT_LOSS = 1e-3  # a sample whose loss is under this counts as flattened (flat_frac)


def every(n: int) -> Schedule:
    """Due on steps n, 2n, 3n, ... (every step for n = 1)."""
    if n < 1:
        raise ValueError(f"a probe cadence must be >= 1 step, got {n}")
    return lambda step: step % n == 0


@dataclass
class StepContext:
    """What a probe may look at after ``optimizer.step()``."""

    step: int
    loss: Tensor | None = None
    logits: Tensor | None = None
    targets: Tensor | None = None


class Probe:
    """Base class: a schedule plus ``compute``. Subclasses implement ``compute`` only."""

    def __init__(self, every_n: int | Schedule = 1) -> None:
        self.due: Schedule = every(every_n) if isinstance(every_n, int) else every_n

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """Called once by the Monitor before the first step."""

    def compute(self, ctx: StepContext) -> tuple[Keys, Tensor] | None:
        raise NotImplementedError


# --- the math ---------------------------------------------------------------------------------


@torch.no_grad()
def layer_norms(weights: list[Tensor], grads: list[Tensor], previous: list[Tensor]) -> Tensor:
    """Per-layer weight, gradient and update norms, and gradient-weight dot products.

    Returns a (4, L) float32 tensor on the weights' device: rows are |w|, |g|, |w - w_prev|,
    <g, w>. ``torch._foreach_norm`` computes all layers in a few fused kernels.
    """
    w_norm = torch.stack(torch._foreach_norm(weights))
    g_norm = torch.stack(torch._foreach_norm(grads))
    u_norm = torch.stack(torch._foreach_norm(torch._foreach_sub(weights, previous)))
    dots = torch.stack([torch.vdot(g.flatten(), w.flatten()) for g, w in zip(grads, weights)])
    return torch.stack([w_norm, g_norm, u_norm, dots]).float()


@torch.no_grad()
def output_stats(logits: Tensor, targets: Tensor) -> Tensor:
    """Accuracy, mean logit norm, mean max softmax probability and flat fraction of a batch.

    Returns a float32 tensor [acc, logit_norm, max_prob, flat_frac] on the logits' device.
    """
    logits = logits.detach().float()
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    acc = (logits.argmax(dim=1) == targets).float().mean()
    logit_norm = logits.norm(dim=1).mean()
    max_prob = logits.softmax(dim=1).amax(dim=1).mean()
    flat_frac = (per_sample < FLAT_LOSS).float().mean()
    return torch.stack([acc, logit_norm, max_prob, flat_frac])


# --- cheap probes, every step -----------------------------------------------------------------


def clean_name(name: str) -> str:
    """Parameter names without the wrappers' prefixes (DDP's ``module.``, compile's ``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace("._orig_mod.", ".")


class ParamNorms(Probe):
    """``weight_norm``, ``grad_norm``, ``update_norm``, ``update_ratio`` per layer and in total,
    and ``grad_weight_cos`` per layer and in total.

    The update is the step actually taken (after LAWN's rescaling, weight decay, everything), so
    the probe keeps a copy of the weights from the previous step: one model-sized buffer.
    """

    METRICS = ("weight_norm", "grad_norm", "update_norm", "update_ratio", "grad_weight_cos")

    def attach(self, model, optimizer):
        named = [(clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.previous = [p.detach().clone() for p in self.params]
        self.zeros: dict[int, Tensor] = {}
        self.keys: Keys = [(m, n) for m in self.METRICS for n in self.names]
        self.keys += [(m, "") for m in self.METRICS]

    def _grad(self, i: int, p: Tensor) -> Tensor:
        if p.grad is not None:
            return p.grad.detach()
        if i not in self.zeros:  # a parameter that got no gradient this step
            self.zeros[i] = torch.zeros_like(p)
        return self.zeros[i]

    @torch.no_grad()
    def compute(self, ctx):
        weights = [p.detach() for p in self.params]
        grads = [self._grad(i, p) for i, p in enumerate(self.params)]
        w, g, u, dot = layer_norms(weights, grads, self.previous)
        torch._foreach_copy_(self.previous, weights)
        tiny = torch.finfo(torch.float32).tiny
        ratio = u / w.clamp_min(tiny)
        cos = dot / (w * g).clamp_min(tiny)
        w_all, g_all, u_all = w.square().sum().sqrt(), g.square().sum().sqrt(), u.square().sum().sqrt()
        totals = torch.stack(
            [w_all, g_all, u_all, u_all / w_all.clamp_min(tiny), dot.sum() / (w_all * g_all).clamp_min(tiny)]
        )
        return self.keys, torch.cat([w, g, u, ratio, cos, totals])


class OutputStats(Probe):
    """``train/loss``, ``train/acc``, ``logit_norm``, ``max_prob``, ``flat_frac`` from the batch
    the step was computed on: no extra forward pass."""

    def compute(self, ctx):
        keys: Keys = []
        values: list[Tensor] = []
        if ctx.loss is not None:
            keys.append(("train/loss", ""))
            values.append(ctx.loss.detach().float().reshape(1))
        if ctx.logits is not None and ctx.targets is not None:
            keys += [("train/acc", ""), ("logit_norm", ""), ("max_prob", ""), ("flat_frac", "")]
            values.append(output_stats(ctx.logits, ctx.targets))
        if not values:
            return None
        return keys, torch.cat(values)


def default_probes() -> list[Probe]:
    return [ParamNorms(), OutputStats()]
