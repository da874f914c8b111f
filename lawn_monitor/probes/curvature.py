"""The curvature probes, on the fixed probe batch at a slow cadence and a shared time budget:
``GNTrace``, ``HessianTrace``, ``Sharpness`` (the math they call is ``lawn_monitor.curvature``)."""

from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import curvature
from ..outputs import IGNORE_INDEX, Keys, LogitsFn, logits_of
from .base import Probe, StepContext, clean_name
from .schedules import Schedule


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
    groups, one forward each; the estimate is the mean of the groups' estimates. ``_se`` is the
    error of that estimate against this probe batch's exact trace: each group takes a second,
    independent draw of the vectors (one more backward), and the differences between the two
    draws give the SE (``curvature.paired_se``: scaled so that +-2 SE is a 95% interval with
    ``groups`` degrees of freedom). Assumes a softmax cross-entropy loss; ``loss_fn`` is not used."""

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
        return 2.5  # a forward and two backward passes of the probe batch, in a few small pieces

    def compute(self, ctx):
        if self.shape is None:
            self.shape = curvature.output_shape(self.model, self.inputs, self.logits_fn)
        shape = (self.groups, self.group_size, *self.shape)
        signs = curvature.rademacher(shape, self.generator, self.device)
        second = curvature.rademacher(shape, self.generator, self.device)
        mask = self.targets != IGNORE_INDEX if len(self.shape) > 1 else None  # a sequence's padding
        first, again = curvature.gn_trace_groups(
            self.model, self.names, self.inputs, signs, self.logits_fn, mask, second=second
        )
        se, total_se = curvature.paired_se(first, again), curvature.paired_se(first.sum(1), again.sum(1))
        keys = [("gn_trace", name) for name in self.layers] + [("gn_trace_se", name) for name in self.layers]
        keys += [("gn_trace", ""), ("gn_trace_se", "")]
        return keys, torch.cat([first.mean(0), se, first.sum(1).mean().reshape(1), total_se.reshape(1)])


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
