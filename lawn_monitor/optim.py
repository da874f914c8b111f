"""LAWN (Logit Attenuating Weight Normalization) and the learning-rate schedules around it.

LAWN wraps any ``torch.optim.Optimizer``:

* free phase: the inner optimizer runs unchanged, bit for bit, for ``free_steps`` steps;
* switch (at the start of step ``free_steps + 1``, or on ``.switch()``): every constrained
  tensor's current L2 norm becomes its target, and weight decay is turned off. With
  ``free_steps="auto"`` the switch comes at the onset of loss flattening as a ``Monitor`` sees
  it (``AutoSwitch``);
* constrained phase: after every inner step each constrained tensor is rescaled to its target.

The wrapper shares the inner optimizer's ``param_groups`` and ``state``, so LR schedulers and
``torch.amp.GradScaler`` work on it as on any optimizer, and ``state_dict()`` carries the phase,
the step count and the targets so that a resumed run continues identically.

    opt = LAWN(torch.optim.Adam(model.parameters(), lr=1e-3), free_steps=5 * steps_per_epoch)

Which tensors are constrained (``params``): ``"ndim2"`` (default) every tensor with ``ndim >= 2``,
i.e. every conv and linear weight; ``"homogeneous"`` (needs ``model=``) the final homogeneous
sub-network, the part whose weight norms scale the logits (``homogeneous_params``); ``"all"``
every trainable tensor, biases and normalization layers' scales and shifts included (``PARAM_CHOICES``).

Under FSDP2 (``fully_shard``: parameters are DTensors sharded over processes; build LAWN after
sharding) the norms are those of the whole tensors: each process sums its shard's squares and
one ``all_reduce`` per step adds them for all constrained tensors (``sharding.shard_sum``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from . import sharding

__all__ = [
    "LAWN",
    "AutoSwitch",
    "AUTO_RULES",
    "PARAM_CHOICES",
    "select_params",
    "homogeneous_params",
    "BUILDERS",
    "make_optimizer",
    "project_to_norm",
    "tangent_project",
    "warmup_decay",
    "lawn_schedule",
    "warmup_decay_factor",
    "lawn_factor",
]


# --- the math: plain tensor functions ---------------------------------------------------------


@torch.no_grad()
def project_to_norm(params: list[Tensor], targets: Tensor, reduce: sharding.Reduce | None = None) -> None:
    """Rescale each tensor in place so that its L2 norm equals the matching entry of ``targets``.

    With ``reduce`` (``sharding.shard_sum``) the tensors are local shards and the norm is the
    whole tensor's: one collective for all of them."""
    norms = sharding.norms(params, reduce).to(targets.dtype)
    scales = targets / norms.clamp_min(torch.finfo(targets.dtype).tiny)
    torch._foreach_mul_(params, list(scales.to(params[0].dtype).unbind()))


@torch.no_grad()
def tangent_project(params: list[Tensor], grads: list[Tensor], reduce: sharding.Reduce | None = None) -> None:
    """Remove, in place, the radial component of each gradient: g <- g - (<g, w> / |w|^2) w.

    With the norm held fixed, only the tangential part of the gradient can move a weight.
    With ``reduce`` the tensors are local shards: both sums are the whole tensors' (one
    collective for all of them).
    """
    sums = torch.stack([torch.stack([(g * w).sum(), (w * w).sum()]) for w, g in zip(params, grads)], dim=1)
    if reduce is not None:
        sums = reduce(sums)
    for i, (w, g) in enumerate(zip(params, grads)):
        coef = sums[0, i] / sums[1, i].clamp_min(torch.finfo(w.dtype).tiny)
        g.sub_(w * coef)


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def homogeneous_params(model: nn.Module) -> list[Tensor]:
    """The weights of the model's final homogeneous sub-network: the affine weight (scale) of the
    last normalization layer and every tensor with ``ndim >= 2`` registered after it.

    Everything before the last normalization layer is scale-invariant: its weight norms do not
    change the logits (the normalization divides them out). From the last normalization layer's
    output on, the network (ReLU, pooling, linear layers) is positively homogeneous in its
    weights, so their norms, and the last norm layer's scale, set the size of the logits: these
    are the tensors whose growth LAWN has to stop. Biases, the last norm layer's shift included,
    stay free (a bias's norm is not a scale). "After" is registration order, which is the
    forward order for sequential models (VGG, the CNN here, torchvision's ResNets); in a ResNet
    the last block's skip connection bypasses its norm layer, so there only the residual branch
    scales with it. A model with no normalization layer is homogeneous as a whole: then this is
    every ``ndim >= 2`` tensor, as ``"ndim2"``.
    """
    modules = list(model.modules())
    last = max((i for i, m in enumerate(modules) if isinstance(m, NORM_LAYERS)), default=None)
    if last is None:
        return [p for p in model.parameters() if p.ndim >= 2]
    chosen: list[Tensor] = []
    weight = getattr(modules[last], "weight", None)
    if weight is not None:
        chosen.append(weight)
    seen = {id(p) for m in modules[: last + 1] for p in m.parameters(recurse=False)}
    for module in modules[last + 1 :]:
        for p in module.parameters(recurse=False):
            if p.ndim >= 2 and id(p) not in seen:
                chosen.append(p)
                seen.add(id(p))
    return chosen


AUTO_RULES = ("flat_frac", "ratio_drop", "logit_growth")
# What each rule reads from the Monitor (``Monitor.latest``), in this order.
AUTO_SIGNALS = {
    "flat_frac": ("flat_frac",),
    "ratio_drop": ("update_ratio_per_lr",),
    "logit_growth": ("train/acc", "logit_norm"),
}


@dataclass
class AutoSwitch:
    """When LAWN with ``free_steps="auto"`` switches: at the onset of loss flattening.

    LAWN adds each new value of the rule's signals (read from the Monitor, 0-d tensors on the
    device) to sums on the device (no sync) and, every ``window`` values, reads their means to the
    host: one host read per ``window`` steps, in the free phase only (none before ``min_steps``,
    none after the switch). A rule's condition must hold for ``patience`` consecutive windows. The
    rules (``rule``):

    * ``"flat_frac"``: the window's mean ``flat_frac`` (share of a batch's samples with loss under
      1e-3) is >= ``threshold``. With ``threshold=0.5, patience=1`` (the defaults) this is the
      original rule, which waits until half the batch is flat; the onset of flattening is a low
      threshold held for a few windows, e.g. ``threshold=0.05, patience=3``.
    * ``"ratio_drop"``: the window's mean ``update_ratio_per_lr`` (how far a unit of LR moves the
      weights: it falls as the weight norms grow while the loss flattens) is <= ``drop`` times its
      early level, the mean of the first window read (the one ending at or after ``min_steps``).
    * ``"logit_growth"``: once the window's mean ``train/acc`` is >= ``acc``, the mean ``logit_norm``
      has grown to ``growth`` times its value in the first such window: the margins grow by
      scaling up, not by learning.

    Non-finite values (e.g. ``update_ratio_per_lr`` at a tiny LR) are left out of a window's mean;
    a window with none is not judged. LAWN switches after ``max_steps`` steps in any case. The
    decision is made at the end of a step from the values the Monitor has recorded by then (up to
    the step before: the Monitor records a step after the optimizer's) and takes effect at the
    start of the next step, exactly as ``free_steps`` would: the LR schedule (``lawn_schedule``)
    sees it in time to start the warm-up after the switch on that step. It depends on the values
    only, never on wall time, so a rerun or a resumed run switches at the same step.

    Args:
        max_steps: switch after this many steps anyway (required: a run that never flattens
            still gets its constrained phase).
        threshold: ``flat_frac``: the window mean at or above which the condition holds.
        window: values averaged per check (and steps between host reads).
        min_steps: never switch before this many steps.
        rule: one of ``AUTO_RULES``.
        patience: consecutive windows the condition must hold.
        drop: ``ratio_drop``: the share of the early level at or below which the condition holds.
        acc: ``logit_growth``: the training accuracy from which the logit norm is watched.
        growth: ``logit_growth``: the logit norm's growth over its level at ``acc`` that fires.
    """

    max_steps: int
    threshold: float = 0.5
    window: int = 20
    min_steps: int = 0
    rule: str = "flat_frac"
    patience: int = 1
    drop: float = 0.5
    acc: float = 0.95
    growth: float = 1.25

    def __post_init__(self) -> None:
        checks = [
            (
                _is_int(self.max_steps) and self.max_steps >= 0,
                f"max_steps=...) must be an int >= 0, got {self.max_steps!r}",
            ),
            (
                _is_int(self.min_steps) and 0 <= self.min_steps <= self.max_steps,
                f"min_steps=...) must be an int in [0, max_steps={self.max_steps}], got {self.min_steps!r}",
            ),
            (_is_int(self.window) and self.window >= 1, f"window=...) must be an int >= 1, got {self.window!r}"),
            (0.0 < self.threshold <= 1.0, f"threshold=...) is a share of samples in (0, 1], got {self.threshold!r}"),
            (self.rule in AUTO_RULES, f"rule=...) must be one of {', '.join(AUTO_RULES)}, got {self.rule!r}"),
            (
                _is_int(self.patience) and self.patience >= 1,
                f"patience=...) must be an int >= 1, got {self.patience!r}",
            ),
            (0.0 < self.drop < 1.0, f"drop=...) is a share of the early level in (0, 1), got {self.drop!r}"),
            (0.0 < self.acc <= 1.0, f"acc=...) is a training accuracy in (0, 1], got {self.acc!r}"),
            (self.growth > 1.0, f"growth=...) is a factor > 1, got {self.growth!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"AutoSwitch({message}")

    @property
    def signals(self) -> tuple[str, ...]:
        return AUTO_SIGNALS[self.rule]

    def holds(self, means: list[float], state: dict[str, Any]) -> str | None:
        """Whether this window's means (one per signal, NaN where none was finite) meet the
        rule's condition: a description of why, or None. ``state`` keeps the rule's early level
        (``reference``) between windows."""
        if any(math.isnan(m) for m in means):
            return None
        if self.rule == "flat_frac":
            return f"flat_frac {means[0]:.3f} >= {self.threshold:g}" if means[0] >= self.threshold else None
        if self.rule == "ratio_drop":
            if state.get("reference") is None:
                state["reference"] = means[0]
                return None
            level = state["reference"]
            ok = means[0] <= self.drop * level
            return f"update_ratio_per_lr {means[0]:.4g} <= {self.drop:g} x its early {level:.4g}" if ok else None
        acc, norm = means
        if acc < self.acc:
            return None
        if state.get("reference") is None:
            state["reference"] = norm
            return None
        level = state["reference"]
        ok = norm >= self.growth * level
        return (
            f"logit_norm {norm:.4g} >= {self.growth:g} x {level:.4g} (train/acc {acc:.3f} >= {self.acc:g})"
            if ok
            else None
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- the wrapper ------------------------------------------------------------------------------


ParamSelector = Callable[[Tensor], bool]


PARAM_CHOICES = ("ndim2", "homogeneous", "all")


def select_params(
    all_params: list[Tensor], params: Iterable[Tensor] | ParamSelector | str | None, model: nn.Module | None
) -> list[int]:
    """Positions in ``all_params`` of the tensors LAWN constrains (see ``LAWN``'s ``params``)."""
    if params == "homogeneous":
        if model is None:
            raise ValueError(
                "LAWN(params='homogeneous') needs model=: the final homogeneous sub-network is found "
                "from the model's layers"
            )
        params = homogeneous_params(model)
    if params is None or params == "ndim2":
        return [i for i, p in enumerate(all_params) if p.ndim >= 2]
    if params == "all":
        return list(range(len(all_params)))
    if isinstance(params, str):
        raise ValueError(
            f"LAWN params={params!r}: use {', '.join(map(repr, PARAM_CHOICES))}, a list of tensors or a callable"
        )
    if callable(params):
        return [i for i, p in enumerate(all_params) if params(p)]
    ids = {id(p) for p in params}
    chosen = [i for i, p in enumerate(all_params) if id(p) in ids]
    if len(chosen) != len(ids):
        raise ValueError("LAWN params must all belong to the wrapped optimizer")
    return chosen


def _check_wrapped(optimizer: Optimizer, free_steps: int | str, auto: AutoSwitch | None) -> None:
    if not isinstance(optimizer, Optimizer):
        raise ValueError(f"LAWN wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, LAWN):
        raise ValueError("LAWN cannot wrap another LAWN optimizer")
    if free_steps == "auto":
        if not isinstance(auto, AutoSwitch):
            raise ValueError(
                "free_steps='auto' needs auto=AutoSwitch(max_steps=...): the step by which LAWN switches anyway"
            )
    elif not _is_int(free_steps) or int(free_steps) < 0:
        raise ValueError(f"free_steps must be an int >= 0 or 'auto', got {free_steps!r}")


class LAWN(Optimizer):
    """Layer-wise weight-norm constraint after a free phase, around any optimizer.

    Args:
        optimizer: the inner optimizer (SGD, Adam, AdamW, AdamP, ...). LAWN steps it.
        free_steps: optimizer steps in the free phase, after which the norms are frozen; or
            ``"auto"``: switch at the onset of loss flattening (``auto``, read from ``monitor``).
        params: which tensors are constrained: ``"ndim2"`` (or ``None``) for every tensor with
            ``ndim >= 2`` (conv and linear weights; biases and norm-layer affine parameters stay
            free), ``"homogeneous"`` for the final homogeneous sub-network of ``model``
            (``homogeneous_params``), ``"all"`` for every tensor the optimizer holds (weights,
            biases, and normalization layers' scales and shifts: each can grow the logits, the
            last norm layer's scale and shift and the classifier's bias directly), an iterable
            of tensors, or a callable ``tensor -> bool``.
        tangent: remove the radial component of the gradient before each constrained step.
        reset_moments: clear the inner optimizer's per-parameter state (momentum, Adam moments)
            at the switch.
        model: the model, for ``params="homogeneous"``.
        monitor: a ``Monitor`` of this run: ``free_steps="auto"`` reads its ``flat_frac``, and
            the switch (step, rule, reason) is written to its run.json as ``lawn_switch``. The
            Monitor takes the optimizer, so it can be set after both exist: ``lawn.monitor = m``.
        auto: the rule for ``free_steps="auto"`` (``AutoSwitch``; its ``max_steps`` is required).

    ``switch_info`` says how the switch came: ``{"step": first constrained step, "rule":
    "fixed" | "auto" | "manual", "reason": text}`` (None before it).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        free_steps: int | str,
        params: Iterable[Tensor] | ParamSelector | str | None = "ndim2",
        tangent: bool = False,
        reset_moments: bool = False,
        model: nn.Module | None = None,
        monitor: Any = None,
        auto: AutoSwitch | None = None,
    ) -> None:
        _check_wrapped(optimizer, free_steps, auto)
        self.optimizer = optimizer
        # None while an automatic switch is still undecided; then the number of free steps.
        self.free_steps: int | None = None if free_steps == "auto" else int(free_steps)
        self.auto = auto if free_steps == "auto" else None
        self.monitor = monitor
        self.switch_info: dict[str, Any] | None = None
        self._auto_sum: Tensor | None = None  # this window's signals: (sums, finite counts), on the device
        self._auto_count = 0
        self._auto_seen = 0  # the Monitor's step of the last value added
        self._auto_reason: str | None = None
        self._auto_state: dict[str, Any] = {"streak": 0, "reference": None}  # the rule's memory between windows
        if self.auto is not None and self.auto.max_steps == 0:
            self.free_steps, self._auto_reason = 0, "max_steps 0: no free phase"
        self.param_choice = params if isinstance(params, str) else "ndim2" if params is None else "custom"
        self.tangent = bool(tangent)
        self.reset_moments = bool(reset_moments)
        self.step_count = 0
        self.phase = "free"
        self.targets: Tensor | None = None  # one entry per constrained tensor, set at the switch
        self.free_weight_decay: list[float] = []  # each group's weight decay before the switch

        all_params = [p for g in optimizer.param_groups for p in g["params"]]
        chosen = select_params(all_params, params, model)
        self.constrained_index = chosen  # positions in the flattened param_groups
        # FSDP2: the constrained tensors' shards are summed over processes (None: not sharded).
        self._reduce = sharding.shard_sum([all_params[i] for i in chosen])

        # A wrapper optimizer is still an optimizer: torch's own __init__ sets up the hook
        # registries and patches step() so that hooks registered on LAWN fire once per LAWN step.
        # It also builds a fresh param_groups list and state, which the properties below store
        # on the inner optimizer: it gets its own objects back at once, so the groups and the
        # state stay shared (LR schedulers, GradScaler) and nothing it has accumulated is lost.
        # The copies of the groups keep __init__'s checks from rewriting the inner's own dicts.
        groups, state = optimizer.param_groups, optimizer.state
        super().__init__([dict(g) for g in groups], optimizer.defaults)
        optimizer.param_groups, optimizer.state = groups, state

    # The inner optimizer owns groups, defaults and state; its load_state_dict replaces its
    # param_groups list, so these are properties rather than copies of the reference.
    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, value) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict) -> None:
        self.optimizer.defaults = value

    def constrained_params(self) -> list[Tensor]:
        all_params = [p for g in self.param_groups for p in g["params"]]
        return [all_params[i] for i in self.constrained_index]

    @torch.no_grad()
    def switch(self, rule: str = "manual", reason: str = "switch() called") -> None:
        """Freeze each constrained tensor's norm at its current value and turn weight decay off.
        ``rule`` and ``reason`` go into ``switch_info`` (and the Monitor's run.json)."""
        if self.phase == "constrained":
            return
        params = [sharding.local(p) for p in self.constrained_params()]
        if params:
            self.targets = sharding.norms(params, self._reduce).float()
        else:
            self.targets = torch.zeros(0)
        self.free_weight_decay = [float(g.get("weight_decay", 0.0)) for g in self.param_groups]
        for group in self.param_groups:
            if "weight_decay" in group:
                group["weight_decay"] = 0.0
        if self.reset_moments:
            self.optimizer.state.clear()
        self.phase = "constrained"
        if self.free_steps is None:  # a manual switch before the automatic one
            self.free_steps = self.step_count
        self.switch_info = {"step": self.step_count + 1, "rule": rule, "reason": reason}
        if self.monitor is not None and hasattr(self.monitor, "annotate"):
            self.monitor.annotate(lawn_switch=self.switch_info)

    def _auto_check(self) -> None:
        """At the end of a free step: add the Monitor's newest values of the rule's signals, and
        decide at a window's end (one host read) or at max_steps. A decision sets ``free_steps`` to
        the steps done, so the switch happens at the start of the next step (see ``AutoSwitch``)."""
        auto, done = self.auto, self.step_count
        assert auto is not None  # called in the free phase of free_steps="auto" only
        if done >= auto.max_steps:
            self.free_steps = done
            self._auto_reason = f"max_steps {auto.max_steps} reached before the {auto.rule} rule held"
            return
        values = self._auto_values()
        if values is None:
            return
        finite = torch.isfinite(values)
        added = torch.stack([torch.where(finite, values, torch.zeros_like(values)), finite.float()])
        self._auto_sum = added if self._auto_sum is None else self._auto_sum + added
        self._auto_count += 1
        if self._auto_count < auto.window:
            return
        total, self._auto_sum, self._auto_count = self._auto_sum, None, 0
        if done < auto.min_steps:
            return  # no host read before min_steps
        sums, counts = total.tolist()  # the one sync per window
        means = [s / n if n else math.nan for s, n in zip(sums, counts)]
        why = auto.holds(means, self._auto_state)
        self._auto_state["streak"] = self._auto_state["streak"] + 1 if why else 0
        if why and self._auto_state["streak"] >= auto.patience:
            held = f", {auto.patience} windows running" if auto.patience > 1 else ""
            self.free_steps = done
            self._auto_reason = f"{why} (mean of the {auto.window} values through step {self._auto_seen}{held})"

    def _auto_values(self) -> Tensor | None:
        """The rule's signals at the Monitor's newest step (a float tensor on the device), or None
        when the Monitor has recorded nothing new since the last call."""
        if self.monitor is None:
            raise ValueError(
                "LAWN(free_steps='auto') reads its signals from a Monitor: pass monitor= or set "
                "lawn.monitor = Monitor(model, lawn, ...) before the first step"
            )
        assert self.auto is not None
        latest = [self.monitor.latest(name) if hasattr(self.monitor, "latest") else None for name in self.auto.signals]
        found = [x for x in latest if x is not None]
        if len(found) < len(latest) or found[0][0] <= self._auto_seen:
            return None
        self._auto_seen = found[0][0]
        return torch.stack([value.detach().float().reshape(()) for _, value in found])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        if self.phase == "free" and self.free_steps is not None and self.step_count >= self.free_steps:
            if self.auto is not None:
                self.switch("auto", self._auto_reason or "the auto rule held")
            else:
                self.switch("fixed", f"free_steps {self.free_steps} done")
        if self.phase == "free":
            loss = self.optimizer.step(closure)
            self.step_count += 1
            if self.auto is not None and self.free_steps is None:
                self._auto_check()
            return loss

        loss = None
        if closure is not None:
            # Gradients must exist before they can be projected: evaluate the closure here.
            with torch.enable_grad():
                loss = closure()
        params = [sharding.local(p) for p in self.constrained_params()]
        if self.tangent and params:
            # Every process projects the same tensors (one collective under FSDP2); a tensor
            # without a gradient this step gets a zero one, which the projection leaves at zero.
            grads = [
                sharding.local(p.grad) if p.grad is not None else torch.zeros_like(w)
                for p, w in zip(self.constrained_params(), params)
            ]
            tangent_project(params, grads, self._reduce)
        self.optimizer.step()
        if params and self.targets is not None:
            project_to_norm(params, self.targets.to(params[0].device), self._reduce)
        self.step_count += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {
            "inner": self.optimizer.state_dict(),
            "lawn": {
                "phase": self.phase,
                "step_count": self.step_count,
                "free_steps": self.free_steps,
                "targets": None if self.targets is None else self.targets.detach().cpu().clone(),
                "constrained_index": list(self.constrained_index),
                "free_weight_decay": list(self.free_weight_decay),
                "tangent": self.tangent,
                "reset_moments": self.reset_moments,
                "switch_info": self.switch_info,
                "auto": None
                if self.auto is None
                else {
                    **asdict(self.auto),
                    "sum": None if self._auto_sum is None else self._auto_sum.tolist(),
                    "state": dict(self._auto_state),
                    "count": self._auto_count,
                    "seen": self._auto_seen,
                    "reason": self._auto_reason,
                },
            },
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if "inner" not in state_dict or "lawn" not in state_dict:
            raise ValueError("not a LAWN state_dict (expected keys 'inner' and 'lawn')")
        self.optimizer.load_state_dict(state_dict["inner"])
        lawn = state_dict["lawn"]
        if list(lawn["constrained_index"]) != list(self.constrained_index):
            raise ValueError("LAWN state_dict constrains different parameters than this optimizer")
        self.phase = lawn["phase"]
        self.step_count = int(lawn["step_count"])
        self.free_steps = None if lawn["free_steps"] is None else int(lawn["free_steps"])
        self.switch_info = lawn.get("switch_info")
        auto = lawn.get("auto")
        if (auto is None) != (self.auto is None):
            raise ValueError(
                "LAWN state_dict and this optimizer differ in free_steps='auto': resume with the original run's setting"
            )
        if auto is not None:
            self.auto = AutoSwitch(**{f.name: auto[f.name] for f in fields(AutoSwitch) if f.name in auto})
            device = self.constrained_params()[0].device if self.constrained_index else None
            total = auto["sum"]
            if isinstance(total, float):  # checkpoints before the rules: one flat_frac sum
                total = [[total], [float(auto["count"])]]
            self._auto_sum = None if total is None else torch.tensor(total, device=device)
            self._auto_state = dict(auto.get("state") or {"streak": 0, "reference": None})
            self._auto_count, self._auto_seen = int(auto["count"]), int(auto["seen"])
            self._auto_reason = auto["reason"]
        self.targets = None if lawn["targets"] is None else lawn["targets"].clone()
        self.free_weight_decay = list(lawn["free_weight_decay"])
        self.tangent = bool(lawn["tangent"])
        self.reset_moments = bool(lawn["reset_moments"])

    def __repr__(self) -> str:
        return (
            f"LAWN(free_steps={'auto' if self.free_steps is None else self.free_steps}, phase={self.phase!r}, "
            f"params={self.param_choice!r}, tangent={self.tangent}, "
            f"reset_moments={self.reset_moments}, constrained={len(self.constrained_index)},\n"
            f"  {self.optimizer!r})"
        )


# --- learning-rate schedules ------------------------------------------------------------------


def _decay(progress: float, kind: str) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown decay {kind!r}: use 'cosine', 'linear' or 'none'")


def warmup_decay_factor(step: int, total_steps: int, warmup_steps: int, decay: str = "cosine") -> float:
    """LR multiplier of the baseline schedule: linear warm-up, then decay to zero at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    return _decay((step - warmup_steps) / span, decay)


def lawn_factor(
    step: int,
    total_steps: int,
    free_steps: int | None,
    warmup_steps: int,
    decay: str = "cosine",
    free_warmup_steps: int = 0,
    after_scale: float = 1.0,
) -> float:
    """LR multiplier of LAWN's schedule: constant in the free phase (after an optional linear
    warm-up of ``free_warmup_steps`` from step 0, for large batches), then warm-up and decay
    from a peak of ``after_scale`` (the LR after the switch, relative to the free phase's).
    ``free_steps`` None: the switch is not decided yet (``free_steps="auto"``), still free.

    The warm-up after the switch lets the optimizer settle on the sphere of fixed norms before
    the rate is high again (the paper's three-phase schedule).
    """
    if free_steps is None or step < free_steps:
        return (step + 1) / free_warmup_steps if step < free_warmup_steps else 1.0
    return after_scale * warmup_decay_factor(step - free_steps, total_steps - free_steps, warmup_steps, decay)


def warmup_decay(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, decay: str = "cosine") -> LambdaLR:
    """The baselines' schedule, stepped once per optimizer step."""
    _decay(0.0, decay)  # validate early
    return LambdaLR(optimizer, lambda s: warmup_decay_factor(s, total_steps, warmup_steps, decay))


def lawn_schedule(
    optimizer: Optimizer,
    total_steps: int,
    free_steps: int | str,
    warmup_steps: int = 0,
    decay: str = "cosine",
    free_warmup_steps: int = 0,
    after_scale: float = 1.0,
) -> LambdaLR:
    """LAWN's free / warm-up / decay schedule, stepped once per optimizer step. ``free_steps="auto"``
    follows the switch of ``optimizer`` (a LAWN with ``free_steps="auto"``) when it is decided.
    ``after_scale``: the peak LR after the switch as a multiple of the free phase's."""
    _decay(0.0, decay)
    if free_steps == "auto":
        if not isinstance(optimizer, LAWN):
            raise ValueError("lawn_schedule(free_steps='auto') follows a LAWN optimizer's switch: pass the LAWN")
        return LambdaLR(
            optimizer,
            lambda s: lawn_factor(
                s, total_steps, optimizer.free_steps, warmup_steps, decay, free_warmup_steps, after_scale
            ),
        )
    if not isinstance(free_steps, int):
        raise ValueError(f"lawn_schedule(free_steps=...) must be an int or 'auto', got {free_steps!r}")
    return LambdaLR(
        optimizer,
        lambda s: lawn_factor(s, total_steps, free_steps, warmup_steps, decay, free_warmup_steps, after_scale),
    )


# --- optimizers by name -----------------------------------------------------------------------


def _sgd(params, lr, weight_decay, momentum=0.9, **_):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _adam(params, lr, weight_decay, betas=(0.9, 0.999), **_):
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _adamw(params, lr, weight_decay, betas=(0.9, 0.999), **_):
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _adamp(params, lr, weight_decay, betas=(0.9, 0.999), **_):
    from adamp import AdamP  # the authors' own implementation

    return AdamP(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _lamb(params, lr, weight_decay, betas=(0.9, 0.999), **_):
    # timm's LAMB, set up as the LAMB paper's Algorithm 2 (You et al. 2020): bias-corrected
    # Adam direction plus weight decay, r + wd * w, scaled per tensor by |w| / |r + wd * w|;
    # no global gradient clipping (timm's default clips at 1.0), and the trust ratio applied to
    # every tensor even when weight decay is 0 (timm's default skips those: under LAWN, whose
    # switch turns weight decay off, LAMB would silently become Adam).
    # pytorch-optimizer's Lamb was the other candidate; it skips the bias correction.
    from timm.optim import Lamb

    return Lamb(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=1e-6, max_grad_norm=None, always_adapt=True)


# The optimizers ``make_optimizer`` builds by name: (params, lr, weight_decay, **options) -> the
# optimizer. The trainers' defaults for each (learning rate, weight decay) are theirs:
# trainers/optimizers.py.
BUILDERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "adamp": _adamp,
    "lamb": _lamb,
}


def make_optimizer(
    name: str,
    params,
    lr: float,
    weight_decay: float = 0.0,
    lawn: bool = False,
    free_steps: int | str = 0,
    tangent: bool = False,
    reset_moments: bool = False,
    lawn_params: str = "ndim2",
    model: torch.nn.Module | None = None,
    auto: AutoSwitch | None = None,
    **kwargs,
) -> Optimizer:
    """Build an optimizer by name (``sgd``, ``adam``, ``adamw``, ``adamp``, ``lamb``), wrapped in LAWN if asked."""
    if name not in BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}: choose from {', '.join(BUILDERS)}")
    inner = BUILDERS[name](params, lr=lr, weight_decay=weight_decay, **kwargs)
    if not lawn:
        return inner
    return LAWN(
        inner,
        free_steps=free_steps,
        params=lawn_params,
        tangent=tangent,
        reset_moments=reset_moments,
        model=model,
        auto=auto,
    )
