"""The Monitor's clock for the curvature budget: how much of the run was training, how much the
budgeted probes took, and how long the whole run will be.

It keeps time on the budget's own clock: CPU time of this process on a CPU (what the work
costs, which a busy machine does not inflate the way it stalls wall time), wall time elsewhere
(a GPU's work is timed by CUDA events in the probes; see ``CurvatureProbe.run``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .probes import Clock


class BudgetClock:
    """Training time so far, the probes' share of it, and the projected run.

    ``cpu``: the model is on a CPU (the clock is then the process's CPU time)."""

    RECENT_STEPS = 20  # step times the typical step's time is the median of

    def __init__(self, cpu: bool) -> None:
        self.now: Callable[[], float] = time.process_time if cpu else time.monotonic
        self.start = self.now()
        self.started_at = time.monotonic()  # wall time, for the checkpoint's train_seconds
        self.probe_seconds = 0.0  # wall time spent in expensive probes, excluded from training time
        self.probe_budget = 0.0  # the expensive probes' time on the budget's clock
        self.first_step_seconds: float | None = None  # training time at step 1 (its one-time costs)
        self.last_step_at: float | None = None  # the budget clock at the last recorded step
        self.step_times: list[float] = []  # the last few steps' times on the budget's clock

    def train_seconds(self) -> float:
        return self.now() - self.start - self.probe_budget

    def clock(self, step: int, total_steps: int | None, batch_size: int | None = None) -> Clock:
        """The run's time so far for the budgets, less the budgeted probes' own, and, when the
        number of steps is known, the projected whole run: the time so far plus the steps left at
        the pace since step 1 (whose time holds the first step's one-time costs, so no projection
        is made from it alone)."""
        train_seconds = self.train_seconds()
        typical = statistics.median(self.step_times) if self.step_times else None
        total = max(total_steps, step) if total_steps else None
        if total is None or step < 2:
            return Clock(step, train_seconds, None, total, batch_size, typical)
        if self.first_step_seconds is not None:
            pace = (train_seconds - self.first_step_seconds) / (step - 1)
        else:  # resumed from a checkpoint that did not record it
            pace = train_seconds / step
        return Clock(step, train_seconds, train_seconds + (total - step) * pace, total, batch_size, typical)

    def charge(self, seconds: float, budget: float) -> None:
        """The expensive probes took ``seconds`` of wall time, ``budget`` on the budget's clock."""
        self.probe_seconds += seconds
        self.probe_budget += budget

    def stepped(self, probe_budget: float) -> None:
        """A step was recorded; ``probe_budget`` of its time was the budgeted probes'."""
        now = self.now()
        if self.last_step_at is not None:
            self.step_times = [*self.step_times, now - self.last_step_at - probe_budget][-self.RECENT_STEPS :]
        self.last_step_at = now

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not training time."""
        wall, budget = time.monotonic(), self.now()
        try:
            yield
        finally:
            self.started_at += time.monotonic() - wall
            self.start += self.now() - budget
            if self.last_step_at is not None:
                self.last_step_at += self.now() - budget

    def state_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": time.monotonic() - self.started_at,
            "probe_seconds": self.probe_seconds,
            "budget_seconds": self.now() - self.start,
            "probe_budget": self.probe_budget,
            "first_step_seconds": self.first_step_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.started_at = time.monotonic() - state["train_seconds"]
        self.probe_seconds = state["probe_seconds"]
        if "budget_seconds" in state:  # checkpoints from before the budget's own clock lack it
            self.start = self.now() - state["budget_seconds"]
            self.probe_budget = state["probe_budget"]
            self.first_step_seconds = state.get("first_step_seconds")
