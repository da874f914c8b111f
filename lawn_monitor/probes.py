"""Probes: what the Monitor measures each step, one small class per kind of measurement.

A probe only computes. The base class owns its schedule (a callable ``step -> bool``) and the
hand-off: ``compute`` returns a list of ``(metric, layer)`` keys and one 1-D tensor of values
*on the device*. The Monitor keeps those tensors and copies them to the host once per flush, so
no probe ever makes the GPU wait (no ``.item()`` here).

The math lives in plain tensor functions (``layer_norms`` here, ``output_sums`` in outputs.py) tested alone.

Under torch.distributed a probe may need every process: ``ParamNorms`` when the parameters are
FSDP2 shards (``sharding.shard_sum``), ``OutputStats`` when it has a ``reduce`` (each process
saw its share of the batch). Such a probe is ``collective``: every process runs it on the same
steps (its schedule depends on the step only, never on a budget), and each call makes one
all-reduce of one stacked tensor.

Models' outputs come in several shapes: a logits tensor, an object with ``.logits`` (Hugging
Face's ``ModelOutput``), a dict with ``"logits"``. ``logits_of`` takes the logits out of any of
them, and sequence logits (B, T, V) count each position as a sample (``flatten_outputs``), with
targets of ``IGNORE_INDEX`` (padding, the prompt) left out, as in ``F.cross_entropy``.
"""

from __future__ import annotations

import bisect
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import curvature, sharding
from .outputs import IGNORE_INDEX, Keys, LogitsFn, Outputs, logits_of

Schedule = Callable[[int], bool]


def every(n: int) -> Schedule:
    """Due on steps n, 2n, 3n, ... (every step for n = 1)."""
    if n < 1:
        raise ValueError(f"a probe cadence must be >= 1 step, got {n}")
    return lambda step: step % n == 0


class Plan:
    """A schedule that knows its steps in advance. ``share(step)`` is the fraction of them at or
    before ``step``: a budgeted probe may have spent that fraction of its budget by then, so a
    plan that is dense early gets its early points (see ``Probe.allowance``)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = sorted(set(steps))
        self._due = set(self.steps)

    def __call__(self, step: int) -> bool:
        return step in self._due

    def share(self, step: int) -> float:
        return bisect.bisect_right(self.steps, step) / len(self.steps)


LOG_OFFSET = 50  # log_spaced: spacing is geometric in (step + total / LOG_OFFSET)


def log_spaced(points: int, total_steps: int | None = None) -> Schedule:
    """Dense early, sparse late, where training changes fastest: ``points`` distinct steps from 1
    to ``total_steps`` (all of them if there are fewer), geometric in ``step + total_steps / 50``:
    about half of them in the first eighth of the run, and the same shape whatever its length.
    Without a known length: every power of two."""
    if points < 1:
        raise ValueError(f"a log-spaced schedule needs >= 1 point, got {points}")
    if total_steps is None:
        return lambda step: step > 0 and step & (step - 1) == 0
    points = min(points, total_steps)
    if points == 1:
        return Plan([total_steps])
    offset = total_steps / LOG_OFFSET
    ratio = (total_steps - 1) / offset + 1
    raw = [1 + offset * (ratio ** (i / (points - 1)) - 1) for i in range(points)]
    steps = [1]
    for r in raw[1:]:  # distinct: the first ones may round to the same step
        steps.append(max(round(r), steps[-1] + 1))
    steps[-1] = total_steps
    for i in range(points - 2, -1, -1):  # and none past the end
        steps[i] = min(steps[i], steps[i + 1] - 1)
    return Plan(steps)


@dataclass
class StepContext:
    """What a probe may look at after ``optimizer.step()``: the step, and the outputs of the
    batches it was computed on (all its micro-batches under gradient accumulation)."""

    step: int
    outputs: Outputs | None = None


@dataclass
class Clock:
    """Where the run stands, for budgets, on the budget's clock (CPU time on a CPU, wall time on
    a GPU: see ``CurvatureProbe.run``). ``train_seconds``: time since the Monitor started, less
    the budgeted probes' own; ``total_seconds``: the run's projected length (None
    while the number of steps is unknown); ``step_seconds``: a typical training step's time (the
    Monitor gives the median of the recent ones), for a probe's ``estimate``."""

    step: int
    train_seconds: float
    total_seconds: float | None = None
    total_steps: int | None = None
    batch_size: int | None = None
    step_seconds: float | None = None

    def typical_step(self) -> float:
        return self.step_seconds if self.step_seconds is not None else self.train_seconds / max(1, self.step)


class Probe:
    """Base class: a schedule, an optional compute budget, and ``compute``.

    Subclasses implement ``compute`` only. With a ``budget`` (a fraction of training time), a
    due step is postponed until the probe's total time including one more call fits its
    ``allowance``. With a known run length the allowance is the budget times the run's projected
    length times the share of the probe's plan due so far: a plan that is dense early may spend
    early what its early points need, and by the last step the probe has taken at most ``budget``
    of the run. Without a known length it is the budget times the training time so far. The cost
    of the next call is predicted as the least of the last few measured (a busy machine only ever
    makes a call slower), leaving out the first call, which pays one-time set-up costs; until
    there are three, the probe's ``estimate`` is one of them. A call is charged
    its measured time, but at most STALL times that prediction: a call that a busy machine
    slowed down (training steps slow alike), or the first call's one-time set-up, is charged
    about what such a call costs, so one bad moment does not use up a short run's budget.
    ``curvature_time`` keeps the times as measured.
    """

    RECENT = 5  # measured costs the next call's cost is predicted from (the least of them)
    STALL = 4.0  # a call is charged at most this many times its predicted cost

    expensive = False  # timed (see ``run``), budgeted, and counted in curvature_time
    collective = False  # joins a collective: every process must run it on the same steps (set by attach)
    uses_outputs = False  # reads the step's outputs (StepContext.outputs), which may come after the step

    def __init__(self, every_n: int | Schedule = 1, budget: float | None = None) -> None:
        self.schedule: Schedule = every(every_n) if isinstance(every_n, int) else every_n
        self.budget = budget
        self.pending = False
        self.spent = 0.0  # seconds
        self.costs: list[float] = []  # the last RECENT calls' costs (the first call's left out), in seconds
        self.last_cost = 0.0  # seconds, on the budget's clock
        self.last_seconds = 0.0  # seconds of the last call, as curvature_time records them
        self.predicted: float | None = None  # the cost the budget expected of the next call
        self.calls = 0
        self.last_step: int | None = None
        self.stopped: str | None = None  # why this probe runs no more in this run (set on divergence)

    def estimate(self, clock: Clock) -> float:
        """Seconds one call should take, before any call has been measured."""
        return 0.0

    def allowance(self, clock: Clock) -> float:
        """Seconds this probe may have spent in all, counting the call about to run."""
        if self.budget is None:
            return math.inf
        if clock.total_seconds is None or not clock.total_steps:
            return self.budget * clock.train_seconds
        if isinstance(self.schedule, Plan):
            share = self.schedule.share(clock.step)
        else:
            share = min(1.0, clock.step / clock.total_steps)
        return self.budget * clock.total_seconds * share

    def affordable(self, clock: Clock) -> bool:
        if self.stopped is not None:
            return False
        if self.budget is None:
            return True
        known = self.costs if len(self.costs) >= 3 else [*self.costs, self.estimate(clock)]
        self.predicted = min(known)
        return self.spent + self.predicted <= self.allowance(clock)

    def due(self, clock: Clock) -> bool:
        if self.schedule(clock.step):
            self.pending = True
        return self.pending and self.affordable(clock)

    def run(self, ctx: StepContext) -> tuple[Keys, Tensor] | None:
        """``compute``, and the bookkeeping of one call."""
        out = self.compute(ctx)
        self.charge(0.0, ctx.step)
        return out

    def charge(self, seconds: float, step: int) -> None:
        """Record one call of the probe."""
        self.pending = False
        charged = seconds
        if self.predicted:
            charged = min(seconds, self.STALL * self.predicted)
        self.spent += charged
        if self.calls:
            self.costs = [*self.costs, seconds][-self.RECENT :]
        self.calls += 1
        self.last_cost, self.last_step = seconds, step

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        """Called once by the Monitor before the first step."""

    def state_dict(self) -> dict:
        """Schedule and budget bookkeeping (subclasses add their random state), for checkpoints."""
        return {
            "pending": self.pending,
            "spent": self.spent,
            "costs": self.costs,
            "calls": self.calls,
            "last_step": self.last_step,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.pending, self.spent = state["pending"], state["spent"]
        old = [state["last_cost"]] if state.get("last_cost") is not None else []  # checkpoints before "costs"
        self.costs, self.last_step = list(state.get("costs", old)), state["last_step"]
        self.calls = state.get("calls", len(self.costs))
        self.stopped = state.get("stopped")

    def compute(self, ctx: StepContext) -> tuple[Keys, Tensor] | None:
        raise NotImplementedError


# --- the math ---------------------------------------------------------------------------------


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


# --- cheap probes, every step -----------------------------------------------------------------


def clean_name(name: str) -> str:
    """Parameter names without the wrappers' prefixes (DDP's ``module.``, compile's ``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace("._orig_mod.", ".")


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


class ParamNorms(Probe):
    """Per-layer (and whole-model) norms, update ratios and the adaptivity measures:

    * ``weight_norm``, ``grad_norm``, ``update_norm``, ``update_ratio`` (update / weight norm) and
      ``grad_weight_cos``;
    * ``weight_growth``: weight norm over its value at the first step (LAWN holds it constant
      after the switch; without LAWN it keeps rising);
    * ``update_ratio_per_lr``: update ratio over the layer's learning rate, so that the LR
      schedule is divided out and what is left is how far a unit of LR moves the weights (NaN
      where the LR is 0);
    * ``effective_lr``: lr / weight_norm^2 for the scale-invariant layers
      (``scale_invariant_layers``), the step size their direction actually sees.

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
        self._index: dict[tuple, Tensor] = {}  # layer indices per distinct LR, kept on the device

    def state_dict(self) -> dict:
        reference = None if self.reference is None else self.reference.cpu()
        return {**super().state_dict(), "reference": reference}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        reference = state.get("reference")  # absent in checkpoints of older versions: start anew
        self.reference = None if reference is None else reference.to(self.params[0].device)

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
        per_lr = [1.0 / lr if lr > 0 else math.nan for lr in lrs]  # the LR divided out; 0: undefined
        totals = torch.stack(
            [
                w_all,
                g_all,
                u_all,
                ratio_all,
                dot.sum() / (w_all * g_all).clamp_min(tiny),
                growth[-1],
                ratio_all * (1.0 / lr_first if lr_first > 0 else math.nan),
            ]
        )
        parts = [w, g, u, ratio, cos, growth[:-1], self._times(ratio, per_lr), totals]
        if self.invariant:
            if self.invariant_index is None:
                self.invariant_index = torch.tensor(self.invariant, device=w.device)
            inverse_square = w[self.invariant_index].square().clamp_min(tiny).reciprocal()
            parts.append(self._times(inverse_square, [lrs[i] for i in self.invariant]))
        return self.keys, torch.cat(parts)


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


# --- curvature probes, on the fixed probe batch, slow cadence ----------------------------------


class CurvatureProbe(Probe):
    """Base of the probes that measure the loss's curvature on a fixed probe batch (its first
    ``size`` samples; all of them by default).

    They work on detached copies of the weights and cloned buffers, in eval mode, with their own
    random generator, and never call ``backward`` on the model: training's ``.grad``, BatchNorm
    statistics, RNG state and optimizer state are left exactly as they were. Each call times
    itself (``run``), so the budget works from measured costs on any model and machine.
    """

    expensive = True

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        loss_fn=F.cross_entropy,
        every_n: int | Schedule = 1,
        budget: float | None = None,
        seed: int = 0,
        size: int | None = None,
        logits_fn: LogitsFn = logits_of,
    ) -> None:
        super().__init__(every_n, budget)
        if size is not None and size < 1:
            raise ValueError(f"a curvature probe needs a probe batch of >= 1 sample, got size={size}")
        self.inputs, self.targets = inputs[:size], targets[:size]
        self.loss_fn, self.seed, self.logits_fn = loss_fn, seed, logits_fn

    def attach(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]  # as functional_call needs them
        self.layers = [clean_name(n) for n in self.names]
        self.device = named[0][1].device
        self.inputs, self.targets = self.inputs.to(self.device), self.targets.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def run(self, ctx):
        """``compute``, timed. On CUDA the time is that between two events around the call on
        the device, read after one synchronize at its end: the probe's own span, not the
        training kernels still queued before it; it is both what the budget is charged and what
        ``curvature_time`` records. On a CPU ``curvature_time`` records wall time and the budget
        is charged the process's CPU time (all threads), as the Monitor counts training time
        for it: on a machine shared with other jobs, wall time stalls whenever the scheduler
        looks away (a 1-second digits run took 3 to 20 seconds here while others trained), and
        CPU time does not."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self._compute_or_stop(ctx)
            end.record()
            end.synchronize()  # the one sync per call
            cost = seconds = start.elapsed_time(end) / 1000
        else:
            started, cpu = time.perf_counter(), time.process_time()
            out = self._compute_or_stop(ctx)
            seconds = time.perf_counter() - started
            cost = time.process_time() - cpu if self.device.type == "cpu" else seconds
        self.charge(cost, ctx.step)
        self.last_seconds = seconds
        # Non-finite values (recorded as they are) from non-finite weights: a diverged network,
        # nothing more to measure. One more host read, after the call's own sync above.
        if out is not None and self.stopped is None and not bool(torch.isfinite(out[1]).all()):
            self._stop_if_diverged()
        return out

    def _compute_or_stop(self, ctx: StepContext) -> tuple[Keys, Tensor] | None:
        """``compute``; where it raises on a network whose weights are no longer finite (a
        diverged run), no row and no further calls instead of the exception. Any other error
        is a bug and raised."""
        try:
            return self.compute(ctx)
        except (RuntimeError, ValueError, ArithmeticError):
            if not self._stop_if_diverged():
                raise
            return None

    def _stop_if_diverged(self) -> bool:
        finite = all(bool(torch.isfinite(p.detach()).all()) for p in self.model.parameters())
        if not finite:
            self.stopped = "the model's weights are not finite"
            warnings.warn(
                f"{type(self).__name__}: {self.stopped}; this curvature probe stops for the rest of the run",
                stacklevel=4,
            )
        return not finite

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])

    def units(self) -> float:
        """A call's expected cost in training steps of the probe batch's size (forward +
        backward): the budget's guess before the first call is measured."""
        raise NotImplementedError

    def estimate(self, clock):
        scale = len(self.inputs) / clock.batch_size if clock.batch_size else 1.0
        return self.units() * clock.typical_step() * scale

    def per_layer(self, metric: str, samples: Tensor) -> tuple[Keys, Tensor]:
        """Rows for per-layer samples (n, L): mean and SE per layer and of the per-sample totals."""
        mean, se = curvature.mean_and_se(samples)
        total, total_se = curvature.mean_and_se(samples.sum(dim=1))
        keys = [(metric, name) for name in self.layers] + [(f"{metric}_se", name) for name in self.layers]
        keys += [(metric, ""), (f"{metric}_se", "")]
        return keys, torch.cat([mean, se, total.reshape(1), total_se.reshape(1)])


class GNTrace(CurvatureProbe):
    """``gn_trace`` (+ ``_se``): the Gauss-Newton trace of softmax cross-entropy (the mean over
    the probe batch), per layer and in total, from Rademacher vectors through a square root of
    the output Hessian (``curvature.gn_trace_groups``). The probe batch is split into ``groups``
    groups, one backward each; the estimate is the mean of the groups' estimates and ``_se``
    their standard error, which covers the random vectors and also which samples the probe
    batch happens to hold (an SE for the trace over the training set, conservative for this
    batch's own trace). Assumes a softmax cross-entropy loss; ``loss_fn`` is not used."""

    def __init__(self, *args, groups: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if groups < 2:
            raise ValueError(f"the GN trace needs >= 2 groups for a standard error, got {groups}")
        if len(self.inputs) < groups:
            raise ValueError(
                f"the GN trace splits its probe batch into {groups} groups, but it has "
                f"{len(self.inputs)} samples: pass a larger probe batch or fewer groups"
            )
        self.groups = groups
        self.group_size = len(self.inputs) // groups
        self.shape: tuple[int, ...] | None = None  # one sample's logits: (C,), or (T, V) for a sequence

    def units(self):
        return 1.5  # a forward and backward of the probe batch, in a few small pieces

    def compute(self, ctx):
        if self.shape is None:
            self.shape = curvature.output_shape(self.model, self.inputs, self.logits_fn)
        signs = curvature.rademacher((self.groups, self.group_size, *self.shape), self.generator, self.device)
        mask = self.targets != IGNORE_INDEX if len(self.shape) > 1 else None  # a sequence's padding
        samples = curvature.gn_trace_groups(self.model, self.names, self.inputs, signs, self.logits_fn, mask)
        return self.per_layer("gn_trace", samples)


class HessianTrace(CurvatureProbe):
    """``hessian_trace`` (+ ``_se``): Hutchinson's unbiased tr(H) with ``num_probes`` Rademacher
    vectors (one Hessian-vector product each), per layer and in total."""

    def __init__(self, *args, num_probes: int = 100, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if num_probes < 2:
            raise ValueError(f"Hutchinson needs >= 2 probes for a standard error, got {num_probes}")
        self.num_probes = num_probes

    def units(self):
        return 1 + 2 * self.num_probes  # each Hessian-vector product is about two backward passes

    def compute(self, ctx):
        leaves, grads = curvature.loss_and_grads(
            self.model, self.names, self.inputs, self.targets, self.loss_fn, self.logits_fn
        )
        samples = curvature.hutchinson_samples(curvature.hvp_fn(leaves, grads), leaves, self.num_probes, self.generator)
        return self.per_layer("hessian_trace", samples)


class Sharpness(CurvatureProbe):
    """``sharpness``: the top Hessian eigenvalue by Lanczos (``curvature.lanczos_top``, warm-started
    from the last eigenvector), beside ``sharpness_threshold``, the edge-of-stability line of the optimizer at
    its current LR.

    For Adam-family optimizers (param groups with ``betas``) that line applies to the
    *preconditioned* sharpness, the top eigenvalue of P^-1 H with Adam's P = sqrt(v_hat) + eps,
    logged as ``sharpness_precond`` once the optimizer has second moments; the plain
    ``sharpness`` is logged too, for comparison with SGD runs.
    """

    WARM_NOISE = 0.3

    def __init__(self, *args, iters: int = 20, tol: float = 0.1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.iters, self.tol = iters, tol
        self.vectors: dict[str, list[Tensor]] = {}

    def units(self):
        # Hessian-vector products (two backward passes each): a cold start takes about 6.
        kinds = 2 if self.optimizer is not None and "betas" in self.optimizer.param_groups[0] else 1
        return 1 + 2 * min(self.iters, 6) * kinds

    def state_dict(self) -> dict:  # the warm-start vectors too, so a resumed run continues alike
        return {**super().state_dict(), "vectors": {k: [t.cpu() for t in v] for k, v in self.vectors.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        device = self.inputs.device
        self.vectors = {k: [t.to(device) for t in v] for k, v in state["vectors"].items()}

    def _top(self, kind: str, hvp, like: list[Tensor]) -> float:
        v0 = curvature.rademacher_like(like, self.generator)
        if kind in self.vectors:
            # Warm start, with some of a random vector mixed in (norm WARM_NOISE against 1): were
            # the last eigenvector nearly orthogonal to the new top one, Lanczos could settle on a
            # lower eigenvalue with a small residual; the random part keeps the top one in reach.
            scale = self.WARM_NOISE / math.sqrt(sum(t.numel() for t in like))
            v0 = [w + scale * r for w, r in zip(self.vectors[kind], v0)]
        value, vector, _ = curvature.lanczos_top(hvp, v0, self.iters, self.tol)
        self.vectors[kind] = [t.detach() for t in vector]
        return value

    def _adam_scale(self) -> list[Tensor] | None:
        """P^-1/2 per parameter from Adam's state, or None when it has none (yet)."""
        if self.optimizer is None or "betas" not in self.optimizer.param_groups[0]:
            return None
        params = dict(self.model.named_parameters())
        group = self.optimizer.param_groups[0]
        beta2, eps = group["betas"][1], group.get("eps", 1e-8)
        scales = []
        for name in self.names:
            state = self.optimizer.state.get(params[name], {})
            if "exp_avg_sq" not in state or "step" not in state:  # LAMB keeps its step elsewhere
                return None
            step = float(state["step"])
            v_hat = state["exp_avg_sq"] / (1 - beta2**step)
            scales.append((v_hat.sqrt() + eps).rsqrt())
        return scales

    def compute(self, ctx):
        leaves, grads = curvature.loss_and_grads(
            self.model, self.names, self.inputs, self.targets, self.loss_fn, self.logits_fn
        )
        hvp = curvature.hvp_fn(leaves, grads)
        keys: Keys = [("sharpness", ""), ("sharpness_threshold", "")]
        values = [self._top("plain", hvp, leaves), curvature.stability_threshold(self.optimizer)]
        scales = self._adam_scale()
        if scales is not None:
            # P^-1/2 H P^-1/2 has the eigenvalues of P^-1 H and is symmetric: Lanczos applies.
            def precond(v):
                return [s * hv for s, hv in zip(scales, hvp([s * t for s, t in zip(scales, v)]))]

            keys.append(("sharpness_precond", ""))
            values.append(self._top("precond", precond, leaves))
        return keys, torch.tensor(values, dtype=torch.float32)


# Each curvature probe's share of ProbeConfig.budget.
BUDGET_SHARES = {"gn_trace": 0.42, "sharpness": 0.55, "hessian_trace": 0.03}


@dataclass
class ProbeConfig:
    """What the Monitor measures and how often (steps count optimizer steps).

    Curvature points are planned over the run, dense early (``log_spaced``), and held to a
    budget: at most ``budget`` of the training time in all, shared by the probes as in
    BUDGET_SHARES. Where a run's steps are long against a probe's cost every planned point runs
    and curvature takes much less; where steps are short (small models on a CPU) the budget
    decides and points are left out evenly along the plan. Each curvature probe uses the first
    ``*_size`` samples of the probe batch.
    """

    every: int = 1  # cheap probes (norms, update ratios, output stats): every N steps
    curvature: bool = True  # curvature probes, when the Monitor has a probe batch
    gn_points: int = 32  # Gauss-Newton trace proxy: points over the run
    gn_size: int = 16  # samples it measures on
    gn_groups: int = 4  # groups its standard error comes from (gn_size / gn_groups samples each)
    hessian_points: int = 3  # Hutchinson tr(H): points over the run
    hessian_probes: int = 20  # Rademacher vectors per Hutchinson estimate (SE ~ 1/sqrt of it)
    hessian_size: int = 32  # samples it measures on
    sharpness_points: int = 8  # top Hessian eigenvalue: points over the run
    sharpness_iters: int = 20  # Hessian-vector products at most per eigenvalue (warm-started Lanczos)
    sharpness_size: int = 16  # samples it measures on
    budget: float = 0.4  # curvature takes at most this fraction of training time
    seed: int = 0  # for the probes' own random draws (Rademacher vectors)

    def build(
        self,
        probe_batch: tuple[Tensor, Tensor] | None,
        loss_fn=None,
        total_steps: int | None = None,
        logits_fn: LogitsFn = logits_of,
    ) -> list[Probe]:
        probes: list[Probe] = [ParamNorms(self.every), OutputStats(self.every)]
        if not self.curvature or probe_batch is None:
            return probes
        inputs, targets = probe_batch
        common: dict[str, Any] = dict(loss_fn=loss_fn or F.cross_entropy, seed=self.seed, logits_fn=logits_fn)
        groups = min(self.gn_groups, len(inputs[: self.gn_size]))
        probes += [
            GNTrace(
                inputs,
                targets,
                every_n=log_spaced(self.gn_points, total_steps),
                budget=self.budget * BUDGET_SHARES["gn_trace"],
                size=self.gn_size,
                groups=groups,
                **common,
            ),
            HessianTrace(
                inputs,
                targets,
                every_n=log_spaced(self.hessian_points, total_steps),
                budget=self.budget * BUDGET_SHARES["hessian_trace"],
                size=self.hessian_size,
                num_probes=self.hessian_probes,
                **common,
            ),
            Sharpness(
                inputs,
                targets,
                every_n=log_spaced(self.sharpness_points, total_steps),
                budget=self.budget * BUDGET_SHARES["sharpness"],
                size=self.sharpness_size,
                iters=self.sharpness_iters,
                **common,
            ),
        ]
        return probes
