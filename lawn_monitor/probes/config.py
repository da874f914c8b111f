"""``ProbeConfig``: what the Monitor measures and how often, and the probes it builds."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..outputs import LogitsFn, logits_of
from .base import Probe
from .curvature import GNTrace, HessianTrace, Sharpness
from .norms import ParamNorms
from .output_stats import OutputStats
from .schedules import log_spaced

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
    # Samples it measures on. The top eigenvalue of a few samples' Hessian swings with which samples
    # they are: digits MLP near flat, 12 random batches against the full batch's 2.6: 16 samples
    # 0.9-29 (sd 3.3x the value), 128 samples 2.0-6.5 (sd 0.5x), 256 samples 2.2-4.9 (sd 0.26x).
    sharpness_size: int = 128
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
        common = dict(loss_fn=loss_fn or F.cross_entropy, seed=self.seed, logits_fn=logits_fn)
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
