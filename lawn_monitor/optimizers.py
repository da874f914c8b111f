"""The optimizers a Monitor watches: usually one, or several, each with a name (a GAN's
discriminator and generator).

With one optimizer the whole-model metrics keep their plain names (``lr``, ``update_norm``).
With several, each optimizer's are named ``<metric>/<name>`` (``lr/D``, ``update_norm/G``); its
per-layer values keep their names, since a parameter belongs to one optimizer.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import Tensor

from .outputs import Keys
from .probes import ParamNorms

NAME = re.compile(r"[A-Za-z0-9_.\-]+")


def hookable(optimizer: Any) -> Any:
    """The optimizer whose step post-hooks run on every real step: the optimizer itself, or for a
    wrapper that does not keep torch's hooks (Accelerate's ``AcceleratedOptimizer``) the one
    inside it (``.optimizer``)."""
    hooked = optimizer
    while not hasattr(hooked, "_optimizer_step_post_hooks") and hasattr(hooked, "optimizer"):
        hooked = hooked.optimizer
    if not hasattr(hooked, "register_step_post_hook") or not hasattr(hooked, "_optimizer_step_post_hooks"):
        raise TypeError(
            f"Monitor.attach: cannot hook the steps of a {type(optimizer).__name__}: pass the "
            "torch.optim.Optimizer it wraps, or call monitor.step() after each step"
        )
    return hooked


def lr_of(optimizer: Any) -> float:
    """The learning rate of the first param group (NaN without an optimizer)."""
    if optimizer is None or not optimizer.param_groups:
        return math.nan
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, Tensor) else lr)


def phase_of(optimizer: Any) -> float:
    """LAWN's phase: 1 constrained, 0 free (and for any other optimizer)."""
    return 1.0 if getattr(optimizer, "phase", "free") == "constrained" else 0.0


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"Monitor: optimizer name {name!r}: use letters, digits, '_', '-' or '.' (e.g. 'D', 'G'); "
            "it becomes the suffix of that optimizer's whole-model metrics (lr/D)"
        )
    return name


def named(optimizer: Any) -> dict[str, Any]:
    """``{name: optimizer}`` from what ``Monitor`` was given: None (none yet), one optimizer (name
    ``""``), a dict of named ones, or a list (named ``opt0``, ``opt1``, ...; a list of one is one)."""
    if optimizer is None:
        return {}
    if isinstance(optimizer, dict):
        return {check_name(name): opt for name, opt in optimizer.items()}
    if isinstance(optimizer, (list, tuple)):
        if len(optimizer) == 1:
            return {"": optimizer[0]}
        return {f"opt{i}": opt for i, opt in enumerate(optimizer)}
    return {"": optimizer}


class Optimizers:
    """The watched optimizers, and with several, each one's ``ParamNorms`` (run at its own step,
    when its gradients are the ones it stepped with) and the values it measured since the last
    recorded step."""

    def __init__(self, optimizer: Any) -> None:
        self.named = named(optimizer)
        self.norms: dict[str, ParamNorms] = {}
        self.captured: dict[str, tuple[Keys, Tensor]] = {}
        self.stepped: set[str] = set()  # optimizers that stepped since the last recorded step

    @property
    def first(self) -> Any:
        return next(iter(self.named.values()), None)

    @property
    def several(self) -> bool:
        """Whether the optimizers are named (several, or one attached with a name)."""
        return any(self.named)

    def host_values(self) -> list[tuple[str, float]]:
        """``lr`` and ``phase`` of each optimizer (suffixed with its name when there are several)."""
        if not self.named:
            return [("lr", math.nan), ("phase", 0.0)]
        values = []
        for name, opt in self.named.items():
            suffix = f"/{name}" if name else ""
            values += [(f"lr{suffix}", lr_of(opt)), (f"phase{suffix}", phase_of(opt))]
        return values

    def take(self) -> dict[str, tuple[Keys, Tensor]]:
        """The values measured at each optimizer's step since the last recorded step; the next
        step's start empty."""
        captured, self.captured = self.captured, {}
        self.stepped = set()
        return captured

    def state_dict(self) -> list[dict]:
        return [probe.state_dict() for probe in self.norms.values()]

    def load_state_dict(self, states: list[dict]) -> None:
        for probe, state in zip(self.norms.values(), states):
            probe.load_state_dict(state)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]
