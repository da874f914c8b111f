"""The probe base: ``Probe`` (a schedule, an optional compute budget, ``compute``), the budget's
clock (``Clock``), what a probe may look at after a step (``StepContext``), and ``clean_name``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..outputs import Keys, Outputs
from .schedules import Plan, Schedule, every


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


def clean_name(name: str) -> str:
    """Parameter names without the wrappers' prefixes (DDP's ``module.``, compile's ``_orig_mod.``)."""
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace("._orig_mod.", ".")
