"""``ParamNorms``: per-layer norms, update ratios and the adaptivity measures, every step; the
math as a plain function (``layer_norms``) and which layers are scale-invariant."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import sharding
from ..metrics import LR_FLOOR
from ..outputs import Keys
from .base import Probe, clean_name


@torch.no_grad()
def layer_norms(
    weights: list[Tensor], grads: list[Tensor], previous: list[Tensor], reduce: sharding.Reduce | None = None
) -> Tensor:
    """Per-layer weight, gradient and update norms, and gradient-weight dot products.

    Returns a (4, L) float32 tensor on the weights' device: rows are |w|, |g|, |w - w_prev|,
    <g, w>. ``torch._foreach_norm`` computes all layers in a few fused kernels. With ``reduce``
    (``sharding.shard_sum``) the tensors are local shards: the squared norms and the dots are
    summed over the shards in one collective, and the roots taken after.
    """
    # One fused call for all three norms: on a CPU each torch call costs microseconds of
    # dispatch whatever its size, and this runs every step.
    norms = torch.stack(torch._foreach_norm([*weights, *grads, *torch._foreach_sub(weights, previous)]))
    dots = torch.stack([torch.vdot(g.flatten(), w.flatten()) for g, w in zip(grads, weights)])
    if reduce is None:
        return torch.cat([norms, dots]).float().view(4, len(weights))
    sums = reduce(torch.cat([norms.square(), dots]).double().view(4, len(weights)))
    return torch.cat([sums[:3].sqrt(), sums[3:]]).float()


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
WEIGHTED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _width(module: nn.Module) -> int | None:
    """Channels a layer puts out, or a normalization layer takes in."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return None


def scale_invariant_layers(model: nn.Module) -> list[str]:
    """Weights that feed a normalization layer directly: a conv or linear layer registered right
    before a BatchNorm / LayerNorm / GroupNorm / InstanceNorm of the same width (conv -> bn in VGG
    and ResNet). The normalization divides out their scale, so the loss does not change when
    they grow: only their direction learns, at an effective rate of lr / |w|^2.

    Read from the order in which modules are registered, which follows the data flow in the usual
    ``nn.Sequential`` and torchvision models; a model that registers them in another order gets
    no ``effective_lr`` rather than a wrong one. Names are cleaned (``clean_name``).
    """
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    found = []
    for (name, layer), (_, nxt) in zip(leaves, leaves[1:]):
        if (
            isinstance(layer, WEIGHTED_LAYERS)
            and isinstance(nxt, NORM_LAYERS)
            and getattr(layer, "weight", None) is not None
            and layer.weight.requires_grad
            and _width(layer) == _width(nxt)
        ):
            found.append(clean_name(f"{name}.weight" if name else "weight"))
    return found


# How a scale-invariant weight's direction turns per step, by optimizer family: the angle is
# about lr * c / |w|^EXPONENT with c free of |w|. SGD's gradient shrinks as 1/|w| (scale
# invariance), so its step turns the direction by lr |g| / |w| ~ lr / |w|^2; Adam's step has a
# size set by lr alone (its normalized direction does not scale with the gradient): lr / |w|;
# a trust-ratio optimizer (LAMB, LARS) steps lr * |w| per tensor: an angle of about lr.
EFFECTIVE_LR_EXPONENT = {"sgd": 2, "adam": 1, "trust_ratio": 0}
TRUST_RATIO_NAMES = ("lamb", "lars")


def update_family(optimizer: torch.optim.Optimizer | None) -> str:
    """``"sgd"``, ``"adam"`` or ``"trust_ratio"``: how the optimizer's step scales with the weights
    (``EFFECTIVE_LR_EXPONENT``). A wrapper (LAWN) is looked through to the optimizer it steps.
    Adam-type: a param group with ``betas`` (Adam, AdamW, AdamP, NAdam, RAdam, Adamax); LAMB and
    LARS by their class name, and LAMB counts as Adam-type where it skips the trust ratio (timm's
    ``always_adapt=False`` with no weight decay). Anything else is SGD-type."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer  # type: ignore[union-attr]
    groups = getattr(optimizer, "param_groups", None)  # None, or not an optimizer: the Monitor says so
    if not groups:
        return "sgd"
    group = groups[0]
    if type(optimizer).__name__.lower().startswith(TRUST_RATIO_NAMES):
        skips = group.get("always_adapt") is False and not group.get("weight_decay")
        return "adam" if skips else "trust_ratio"
    return "adam" if "betas" in group else "sgd"


class ParamNorms(Probe):
    """Per-layer (and whole-model) norms, update ratios and the adaptivity measures:

    * ``weight_norm``, ``grad_norm``, ``update_norm``, ``update_ratio`` (update / weight norm) and
      ``grad_weight_cos``;
    * ``weight_growth``: weight norm over its value at the first step (LAWN holds it constant
      after the switch; without LAWN it keeps rising);
    * ``update_ratio_per_lr``: update ratio over the layer's learning rate, so that the LR
      schedule is divided out and what is left is how far a unit of LR moves the weights. NaN
      (undefined) where the LR is below ``LR_FLOOR`` of the highest LR that layer has had so far
      in the run: near the end of a schedule that decays to 0 the step is mostly noise and
      weight decay divided by a vanishing LR, and would dominate any mean;
    * ``effective_lr``: for the scale-invariant layers (``scale_invariant_layers``), the step size
      their direction actually sees: lr / weight_norm^2 under SGD-type updates, lr / weight_norm
      under Adam-type ones, lr under LAMB (``update_family``, ``EFFECTIVE_LR_EXPONENT``).

    The update is the step actually taken (after LAWN's rescaling, weight decay, everything), so
    the probe keeps a copy of the weights from the previous step: one model-sized buffer.
    """

    METRICS = (
        "weight_norm",
        "grad_norm",
        "update_norm",
        "update_ratio",
        "grad_weight_cos",
        "weight_growth",
        "update_ratio_per_lr",
    )

    def attach(self, model, optimizer):
        named = [(clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.optimizer = optimizer
        # FSDP2: each process holds shards of the layers; their sums are added in one collective.
        self.reduce = sharding.shard_sum(self.params)
        self.collective = self.reduce is not None
        self.previous = [sharding.local(p).detach().clone() for p in self.params]
        self.zeros: dict[int, Tensor] = {}
        self.missing_grads = False  # whether no parameter had a gradient at the last call
        invariant = set(scale_invariant_layers(model))
        self.invariant = [i for i, n in enumerate(self.names) if n in invariant]
        self.keys: Keys = [(m, n) for m in self.METRICS for n in self.names]
        self.keys += [(m, "") for m in self.METRICS]
        self.keys += [("effective_lr", self.names[i]) for i in self.invariant]
        self.reference: Tensor | None = None  # weight norms at the first step: each layer's, then the total
        self.invariant_index: Tensor | None = None
        self.exponent = EFFECTIVE_LR_EXPONENT[update_family(optimizer)]  # effective_lr = lr / |w|^exponent
        self.last: tuple[int, Keys, Tensor] | None = None
        self.peak_lrs: list[float] | None = None  # the highest LR each layer has had, then the first group's
        self._index: dict[tuple, Tensor] = {}  # layer indices per distinct LR, kept on the device

    def state_dict(self) -> dict:
        reference = None if self.reference is None else self.reference.cpu()
        return {**super().state_dict(), "reference": reference, "peak_lrs": self.peak_lrs}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        reference = state.get("reference")  # absent in checkpoints of older versions: start anew
        self.reference = None if reference is None else reference.to(self.params[0].device)
        self.peak_lrs = state.get("peak_lrs")

    def _grad(self, i: int, p: Tensor) -> Tensor:
        if p.grad is not None:
            return sharding.local(p.grad.detach())
        if i not in self.zeros:  # a parameter that got no gradient this step
            self.zeros[i] = torch.zeros_like(sharding.local(p))
        return self.zeros[i]

    def _lrs(self) -> tuple[list[float], float]:
        """Each layer's learning rate now (its param group's) and the first group's (the run's
        ``lr``), as host floats: nothing is copied to the device."""
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        if not groups:
            return [math.nan] * len(self.params), math.nan
        lrs = [float(g["lr"].item() if isinstance(g["lr"], Tensor) else g["lr"]) for g in groups]
        if len(groups) == 1:  # the usual case: one LR for every layer
            return [lrs[0]] * len(self.params), lrs[0]
        by_param = {id(p): lr for group, lr in zip(groups, lrs) for p in group.get("params", ())}
        return [by_param.get(id(p), math.nan) for p in self.params], lrs[0]

    def _per_lr(self, lrs: list[float]) -> list[float]:
        """1 / lr for each LR (each layer's, then the first group's), NaN where it is below
        ``LR_FLOOR`` of the highest that entry has had so far (0 included: undefined)."""
        if self.peak_lrs is None or len(self.peak_lrs) != len(lrs):
            self.peak_lrs = [0.0] * len(lrs)
        self.peak_lrs = [max(p, lr) if lr == lr else p for p, lr in zip(self.peak_lrs, lrs)]
        return [1.0 / lr if lr > 0 and lr >= LR_FLOOR * peak else math.nan for lr, peak in zip(lrs, self.peak_lrs)]

    def _times(self, values: Tensor, scalars: list[float]) -> Tensor:
        """``values[i] * scalars[i]`` with the scalars as kernel arguments (host floats), never as
        a tensor copied to the device each step: one multiply per distinct scalar (usually one)."""
        distinct = list(dict.fromkeys(scalars))
        if len(distinct) == 1:
            return values * distinct[0]
        out = torch.empty_like(values)
        for scalar in distinct:
            key = tuple(i for i, v in enumerate(scalars) if v == scalar or (v != v and scalar != scalar))
            if key not in self._index:
                self._index[key] = torch.tensor(key, device=values.device)
            out[self._index[key]] = values[self._index[key]] * scalar
        return out

    @torch.no_grad()
    def compute(self, ctx):
        weights = [sharding.local(p.detach()) for p in self.params]
        self.missing_grads = all(p.grad is None for p in self.params)
        grads = [self._grad(i, p) for i, p in enumerate(self.params)]
        # Under FSDP2 the sums are global from here on: every ratio, cosine and total below is
        # taken from whole layers, never from a process's shards.
        w, g, u, dot = layer_norms(weights, grads, self.previous, self.reduce)
        if self.missing_grads:
            # No gradient at all: the step was recorded after zero_grad(set_to_none=True), or
            # without a backward. Zeros would read as a vanished gradient (loss flattening), so
            # grad_norm and grad_weight_cos are NaN instead: not measured. The rows stay, so
            # every step has the same rows and the charts show a gap.
            g, dot = torch.full_like(g, math.nan), torch.full_like(dot, math.nan)
        torch._foreach_copy_(self.previous, weights)
        tiny = torch.finfo(torch.float32).tiny
        ratio = u / w.clamp_min(tiny)
        cos = dot / (w * g).clamp_min(tiny)
        w_all, g_all, u_all = w.square().sum().sqrt(), g.square().sum().sqrt(), u.square().sum().sqrt()
        ratio_all = u_all / w_all.clamp_min(tiny)
        norms = torch.cat([w, w_all.reshape(1)])
        if self.reference is None:
            self.reference = norms.clamp_min(tiny)
        growth = norms / self.reference
        lrs, lr_first = self._lrs()
        *per_lr, per_lr_first = self._per_lr([*lrs, lr_first])  # the LR divided out; NaN: undefined
        totals = torch.stack(
            [
                w_all,
                g_all,
                u_all,
                ratio_all,
                dot.sum() / (w_all * g_all).clamp_min(tiny),
                growth[-1],
                ratio_all * per_lr_first,
            ]
        )
        parts = [w, g, u, ratio, cos, growth[:-1], self._times(ratio, per_lr), totals]
        if self.invariant:
            if self.invariant_index is None:
                self.invariant_index = torch.tensor(self.invariant, device=w.device)
            inverse = w[self.invariant_index].pow(self.exponent).clamp_min(tiny).reciprocal()
            parts.append(self._times(inverse, [lrs[i] for i in self.invariant]))
        values = torch.cat(parts)
        self.last = (ctx.step, self.keys, values)  # the newest values, on the device (Monitor.latest)
        return self.keys, values
