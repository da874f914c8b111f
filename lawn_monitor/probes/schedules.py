"""When a probe runs: ``every(n)``, and ``log_spaced`` plans (dense early, sparse late) that know
their steps in advance (``Plan``), so a budgeted probe can spend early what its early points need."""

from __future__ import annotations

import bisect
from collections.abc import Callable

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
