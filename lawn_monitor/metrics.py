"""What each metric the Monitor writes means: one source for the README's table, the dashboard's
axis titles and its metric descriptions.

    python -m lawn_monitor.metrics      # prints the README's "What is measured" table

``tests/test_metrics.py`` checks that the README carries exactly this table, so the two cannot
drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

# update_ratio_per_lr is undefined (NaN) on a step whose LR is below this share of the highest LR
# that layer has had so far in the run: the end of a schedule that decays to 0 would otherwise
# dominate every mean, chart and heatmap of it (a step divided by a vanishing LR).
LR_FLOOR = 0.01

WHOLE = "whole model"
EACH = "each parameter and whole model"
PER_LAYER = "each parameter"


@dataclass(frozen=True)
class Metric:
    name: str
    layers: str  # where it is logged: WHOLE, EACH or PER_LAYER (or a narrower phrase)
    meaning: str  # one line: what it is, and what it shows about loss flattening and LAWN
    axis: str  # the y-axis title, with its unit
    log: bool = False  # shrinks or grows by decades: log scale by default
    percent: bool = False  # a share drawn as a percentage (accuracy)
    smooth: bool = True  # logged every step: the dashboard's smoothing applies (not to slow cadences)


METRICS: list[Metric] = [
    Metric(
        "train/loss",
        WHOLE,
        "mean cross-entropy of the training batch; falls toward zero as the loss flattens",
        "train loss (nats)",
        log=True,
    ),
    Metric("train/acc", WHOLE, "share of the training batch classified correctly", "train accuracy (%)", percent=True),
    Metric(
        "test/loss",
        WHOLE,
        "mean cross-entropy over the whole evaluation set",
        "test loss (nats)",
        log=True,
        smooth=False,
    ),
    Metric(
        "test/acc",
        WHOLE,
        "top-1 accuracy over the whole evaluation set: the number in the paper's tables",
        "test accuracy (%)",
        percent=True,
        smooth=False,
    ),
    Metric(
        "test/acc5",
        WHOLE,
        "top-5 accuracy over the evaluation set (more than 10 classes)",
        "test top-5 accuracy (%)",
        percent=True,
        smooth=False,
    ),
    Metric(
        "val/loss",
        WHOLE,
        "mean cross-entropy over the validation split (held out of the training data): choices are made on it",
        "validation loss (nats)",
        log=True,
        smooth=False,
    ),
    Metric(
        "val/acc",
        WHOLE,
        "top-1 accuracy over the validation split (held out of the training data): what tuning maximizes",
        "validation accuracy (%)",
        percent=True,
        smooth=False,
    ),
    Metric(
        "lr",
        WHOLE,
        "learning rate of the first param group: the schedule (LAWN: free, warm-up, decay)",
        "learning rate",
        smooth=False,
    ),
    Metric(
        "phase",
        WHOLE,
        "LAWN phase: 0 free, 1 constrained (always 0 without LAWN)",
        "phase (1: constrained)",
        smooth=False,
    ),
    Metric(
        "weight_norm",
        EACH,
        "L2 norm of the weights; grows without LAWN, frozen by LAWN after the switch",
        "weight norm (L2)",
    ),
    Metric(
        "weight_growth",
        EACH,
        "weight norm / its value at the first step: keeps rising without LAWN, constant after LAWN's switch",
        "weight growth (x first step)",
    ),
    Metric(
        "grad_norm", EACH, "L2 norm of the gradient; collapses as the loss flattens", "gradient norm (L2)", log=True
    ),
    Metric(
        "update_norm",
        EACH,
        "L2 norm of the step actually taken (after LAWN's rescaling and weight decay)",
        "update norm (L2)",
        log=True,
    ),
    Metric(
        "update_ratio",
        EACH,
        "update norm / weight norm: how far a step moves the weights relative to their "
        "size (adaptivity), LR schedule included",
        "update / weight norm",
        log=True,
    ),
    Metric(
        "update_ratio_per_lr",
        EACH,
        "update ratio / learning rate: adaptivity with the LR schedule divided "
        f"out; falls as weights grow, holds under LAWN; NaN where the LR is under {LR_FLOOR:.0%} of "
        "its peak so far",
        "update ratio per unit LR",
        log=True,
    ),
    Metric(
        "effective_lr",
        "each parameter that feeds a normalization layer",
        "the step the direction of a scale-invariant weight (conv or linear right before "
        "BatchNorm/LayerNorm/GroupNorm) sees: lr / weight norm^2 under SGD, lr / weight norm under "
        "Adam-type optimizers, lr under LAMB; shrinks as such weights grow",
        "effective LR (per step)",
        log=True,
    ),
    Metric(
        "grad_weight_cos",
        EACH,
        "cosine between gradient and weights: the radial share of the gradient",
        "cosine(gradient, weights)",
    ),
    Metric("logit_norm", WHOLE, "mean L2 norm of the logits; grows as the loss flattens", "logit norm (L2)"),
    Metric(
        "max_prob",
        WHOLE,
        "mean largest softmax probability; saturates toward 1 as the loss flattens",
        "max softmax probability",
    ),
    Metric(
        "flat_frac",
        WHOLE,
        "share of the training batch whose loss is under 1e-3 (flattened samples)",
        "flattened samples (%)",
        percent=True,
    ),
    Metric(
        "gn_trace",
        EACH,
        "Hessian-trace proxy: the Gauss-Newton trace of softmax cross-entropy on the fixed "
        "probe batch (eval mode), from random signs pushed through a square root of the output Hessian (no "
        "sampled labels); collapses as the loss flattens",
        "Hessian trace (GN proxy)",
        log=True,
        smooth=False,
    ),
    Metric(
        "gn_trace_se",
        EACH,
        "standard error of gn_trace against the probe batch's exact trace (a second draw of the vectors per "
        "group), scaled so that +-2 SE is a 95% interval",
        "standard error",
        log=True,
        smooth=False,
    ),
    Metric(
        "hessian_trace",
        EACH,
        "unbiased Hutchinson estimate of the Hessian trace on the probe batch (slow cadence)",
        "Hessian trace (Hutchinson)",
        log=True,
        smooth=False,
    ),
    Metric("hessian_trace_se", EACH, "standard error of hessian_trace", "standard error", log=True, smooth=False),
    Metric(
        "sharpness",
        WHOLE,
        "top Hessian eigenvalue on the probe batch (warm-started Lanczos): what SGD's threshold bounds",
        "sharpness (top eigenvalue)",
        log=True,
        smooth=False,
    ),
    Metric(
        "sharpness_precond",
        WHOLE,
        "Adam family only: top eigenvalue of Adam's preconditioned Hessian P^-1 H "
        "(P = sqrt(v_hat) + eps), the quantity Adam's threshold bounds",
        "preconditioned sharpness",
        log=True,
        smooth=False,
    ),
    Metric(
        "sharpness_threshold",
        WHOLE,
        "edge-of-stability line at the current LR: (2+2 momentum)/lr for SGD, "
        "(2+2 beta1)/((1-beta1) lr) for Adam, inf where the LR is 0",
        "stability threshold",
        log=True,
        smooth=False,
    ),
    Metric(
        "curvature_time",
        WHOLE,
        "seconds the curvature probes took at this step (held to the budget)",
        "curvature time (s)",
        log=True,
        smooth=False,
    ),
    Metric("step_time", WHOLE, "seconds per training step, curvature probes excluded", "step time (s)", log=True),
    Metric("samples_per_s", WHOLE, "training throughput", "samples per second"),
]
BY_NAME = {m.name: m for m in METRICS}


def info(name: str) -> Metric:
    """The metric's description; a metric logged by the user's own ``monitor.log`` gets a plain one."""
    return BY_NAME.get(name) or Metric(name, WHOLE, "logged with monitor.log", name)


def metric_table(names=None):
    """A pandas table of the metrics (``names``: these, in this order; default all): metric,
    logged for, meaning."""
    import pandas as pd

    chosen = [info(n) for n in names] if names is not None else METRICS
    return pd.DataFrame(
        {
            "metric": [m.name for m in chosen],
            "logged for": [m.layers for m in chosen],
            "what it shows": [m.meaning for m in chosen],
        }
    )


def markdown_table() -> str:
    """The README's table of metrics."""
    lines = ["| metric | logged for | what it shows |", "|---|---|---|"]
    lines += [f"| `{m.name}` | {m.layers} | {m.meaning} |" for m in METRICS]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
