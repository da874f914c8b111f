"""trainers/stats.py against scipy and the textbook formulas on fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from lawn_monitor_trainers.stats import bootstrap_diff, mean_ci, welch

A = [70.1, 71.3, 69.8, 70.6, 70.9]
B = [68.2, 69.9, 67.5, 70.4, 68.8, 69.1]


def test_mean_interval_is_students_t():
    m = mean_ci(A)
    low, high = sps.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=sps.sem(A))
    assert (m.mean, m.low, m.high, m.n) == pytest.approx((np.mean(A), low, high, 5))
    # by hand: t(0.975, 4) = 2.776445..., s = 0.60249...
    assert m.half == pytest.approx(2.7764451 * np.std(A, ddof=1) / math.sqrt(5), rel=1e-6)
    assert m.text() == "70.54 ± 0.75 (n=5)"


def test_mean_of_one_value_has_no_interval_and_nan_is_dropped():
    m = mean_ci([3.0, float("nan")])
    assert m.n == 1 and m.mean == 3.0 and math.isnan(m.low) and m.text() == "3.00 (n=1)"
    assert mean_ci([]).text() == "-"


def test_welch_agrees_with_scipy_and_the_satterthwaite_formula():
    d = welch(A, B)
    ref = sps.ttest_ind(A, B, equal_var=False)
    assert d.p == pytest.approx(ref.pvalue)
    va, vb = np.var(A, ddof=1) / 5, np.var(B, ddof=1) / 6
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 5)
    assert d.df == pytest.approx(df)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (d.diff, d.low, d.high) == pytest.approx((np.mean(A) - np.mean(B), d.diff - half, d.diff + half))
    # scipy >= 1.11 gives the same interval
    ci = ref.confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    assert not d.within_noise and d.low > 0


def test_within_noise_exactly_when_the_interval_holds_zero():
    close = welch([1.0, 2.0, 3.0], [1.5, 2.5, 2.0])
    assert close.low < 0 < close.high and close.within_noise
    assert welch([1.0], [2.0, 3.0]).within_noise  # no interval: no evidence of a difference
    assert math.isnan(welch([1.0, 1.0], [2.0, 2.0]).p)  # constants: no test


def test_bootstrap_interval_brackets_the_difference_and_is_reproducible():
    low, high = bootstrap_diff(A, B)
    assert low < np.mean(A) - np.mean(B) < high
    assert (low, high) == bootstrap_diff(A, B)
    d = welch(A, B)
    assert abs(low - d.low) < 0.6 and abs(high - d.high) < 0.6  # same scale as Welch's at n=5, 6
