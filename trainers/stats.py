"""Means and differences of means with 95% intervals, for comparisons over a few seeds.

A mean gets Student's t interval; a difference of two means gets Welch's interval and test
(unequal variances, Welch-Satterthwaite degrees of freedom), the one a comparison of two methods
over seeds needs; a percentile bootstrap of the difference is there as a check that assumes no
normality. A difference is "within noise" when its interval holds 0.

    >>> mean_ci([70.1, 71.3, 69.8, 70.6, 70.9]).text()
    '70.54 ± 0.75 (n=5)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


def _values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


@dataclass(frozen=True)
class Mean:
    """A mean over ``n`` values with its confidence interval (``low``, ``high``); NaN bounds with n < 2."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        if not math.isfinite(self.half):
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f} (n={self.n})"


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Mean:
    """The mean and its t interval: mean ± t(1 - (1 - level)/2, n - 1) * s / sqrt(n). Non-finite values are dropped."""
    x = _values(values)
    n = len(x)
    if n == 0:
        return Mean(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Mean(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Mean(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Difference:
    """``a - b`` over two groups of values: the difference of means, Welch's interval and p-value."""

    diff: float
    low: float
    high: float
    p: float
    df: float
    n_a: int
    n_b: int

    @property
    def within_noise(self) -> bool:
        """Whether the interval holds 0 (also when it cannot be computed: no evidence of a difference)."""
        return not (self.low > 0 or self.high < 0)

    def text(self, digits: int = 2) -> str:
        if not math.isfinite(self.low):
            return f"{self.diff:+.{digits}f} (too few values for an interval)"
        return f"{self.diff:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """Difference of means ``mean(a) - mean(b)`` with Welch's t interval and two-sided p-value.

    se = sqrt(s_a²/n_a + s_b²/n_b); df by Welch-Satterthwaite; interval diff ± t(df) * se. With
    fewer than two values on a side, or no variance on either, the interval and p are NaN (a
    difference between constants is no evidence either way)."""
    x, y = _values(a), _values(b)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, math.nan, len(x), len(y))
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(diff, math.nan, math.nan, math.nan, math.nan, len(x), len(y))
    df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df) * se)
    p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    return Difference(diff, diff - half, diff + half, p, float(df), len(x), len(y))


def bootstrap_diff(
    a: Sequence[float], b: Sequence[float], level: float = LEVEL, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)``, each group resampled on its own
    (scipy.stats.bootstrap); NaN with fewer than two values on a side."""
    x, y = _values(a), _values(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan
    result = stats.bootstrap(
        (x, y),
        lambda u, v, axis: u.mean(axis=axis) - v.mean(axis=axis),
        confidence_level=level,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
