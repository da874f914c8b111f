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

The package, one module per kind of measurement: ``schedules`` (``every``, ``log_spaced``),
``base`` (``Probe``, its budget ``Clock``, ``StepContext``), ``norms`` (``ParamNorms``),
``output_stats`` (``OutputStats``), ``curvature`` (``GNTrace``, ``HessianTrace``, ``Sharpness``)
and ``config`` (``ProbeConfig``). Every name is importable from ``lawn_monitor.probes``.
"""

from __future__ import annotations

from .base import Clock, Probe, StepContext, clean_name
from .config import BUDGET_SHARES, ProbeConfig
from .curvature import CurvatureProbe, GNTrace, HessianTrace, Sharpness
from .norms import (
    EFFECTIVE_LR_EXPONENT,
    NORM_LAYERS,
    WEIGHTED_LAYERS,
    ParamNorms,
    layer_norms,
    scale_invariant_layers,
    update_family,
)
from .output_stats import OutputStats
from .schedules import LOG_OFFSET, Plan, Schedule, every, log_spaced

__all__ = [
    "BUDGET_SHARES",
    "EFFECTIVE_LR_EXPONENT",
    "LOG_OFFSET",
    "NORM_LAYERS",
    "WEIGHTED_LAYERS",
    "Clock",
    "CurvatureProbe",
    "GNTrace",
    "HessianTrace",
    "OutputStats",
    "ParamNorms",
    "Plan",
    "Probe",
    "ProbeConfig",
    "Schedule",
    "Sharpness",
    "StepContext",
    "clean_name",
    "every",
    "layer_norms",
    "log_spaced",
    "scale_invariant_layers",
    "update_family",
]
