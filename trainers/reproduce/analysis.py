"""What the reproduction's runs say: pure functions over the frame of runs that ``collect`` builds
from the store (one row per ended run), returning frames and rows the page renders. No store, no
files: each function can be tested on a small frame written by hand.

Accuracies in the frame are shares (0.71); everything returned here is in percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..stats import Difference, Mean, mean_ci, welch

# The paper's claims about accuracy as (a, b, sign): the paper says sign * (a - b) > 0. Adam-L2 and
# AdamW against Adam-LAWN tell "weight decay alone" from "LAWN": the paper says LAWN does better.
CLAIMS = (
    ("Adam-LAWN", "SGD-LAWN", +1),
    ("Adam-LAWN", "SGD", +1),
    ("SGD-LAWN", "SGD", +1),
    ("Adam-LAWN", "Adam", +1),
    ("Adam-L2", "Adam-LAWN", -1),
    ("AdamW", "Adam-LAWN", -1),
    ("Adam", "SGD", -1),
)

# The paper's mechanism as claims about end-of-run measurements (same form, on the seeds' runs).
MECHANISM_CLAIMS = (
    ("logit_norm", "Adam", "SGD", +1, "Adam's logits grow larger than SGD's"),
    ("flat_frac", "Adam", "SGD", +1, "Adam's loss is flatter than SGD's at the end"),
    ("gn_trace", "Adam", "SGD", -1, "Adam ends where the loss is flatter (lower curvature) than SGD"),
    ("flat_frac", "Adam-LAWN", "Adam", -1, "LAWN stops Adam's flattening"),
    ("weight_growth", "Adam-LAWN", "Adam", -1, "LAWN holds the weight norms that Adam lets grow"),
    ("update_ratio_per_lr", "Adam-LAWN", "Adam", +1, "LAWN keeps Adam's weight adaptivity"),
)

# The end-of-run measurements of the mechanism table, in its column order.
MECHANISM = ("flat_frac", "train_loss", "logit_norm", "weight_growth", "update_ratio_per_lr", "gn_trace")


def percent(values: pd.Series) -> list[float]:
    return list(100 * values.astype(float))


@dataclass(frozen=True)
class Verdict:
    """``a - b`` on one measurement, with what the paper expects of its sign."""

    a: str
    b: str
    metric: str
    diff: Difference
    sign: int  # the paper says sign * (a - b) > 0; 0: it says nothing

    @property
    def outcome(self) -> str:
        """``holds``, ``within noise`` or ``contradicted`` (the opposite sign, outside noise); with
        no expected sign, ``a higher``, ``within noise`` or ``b higher``."""
        d = self.diff
        if d.within_noise:
            return "within noise"
        if self.sign == 0:
            return f"{self.a} higher" if d.diff > 0 else f"{self.b} higher"
        return "holds" if self.sign * d.diff > 0 else "contradicted"


def verdict(frame: pd.DataFrame, a: str, b: str, metric: str = "test_acc", sign: int = 0) -> Verdict | None:
    """Method ``a`` against ``b`` on ``metric`` over their seeds (Welch); None if either has no value."""
    x = frame.loc[frame["method"] == a, metric].astype(float).dropna()
    y = frame.loc[frame["method"] == b, metric].astype(float).dropna()
    if x.empty or y.empty:  # no run, or the measurement undefined in every run
        return None
    scale = 100.0 if metric.endswith("_acc") else 1.0
    return Verdict(a, b, metric, welch(list(scale * x), list(scale * y)), sign)


def claim_verdicts(seeds: pd.DataFrame) -> list[Verdict]:
    """The paper's accuracy claims (CLAIMS) on test accuracy, in their order; pairs without runs are left out."""
    found = [verdict(seeds, a, b, "test_acc", sign) for a, b, sign in CLAIMS]
    return [v for v in found if v is not None]


def mechanism_verdicts(seeds: pd.DataFrame) -> list[tuple[str, Verdict]]:
    found = [(claim, verdict(seeds, a, b, metric, sign)) for metric, a, b, sign, claim in MECHANISM_CLAIMS]
    return [(claim, v) for claim, v in found if v is not None]


def tally(verdicts: list[Verdict]) -> dict[str, list[Verdict]]:
    """The verdicts by outcome: holds, within noise, contradicted."""
    out: dict[str, list[Verdict]] = {"holds": [], "within noise": [], "contradicted": []}
    for v in verdicts:
        out.setdefault(v.outcome, []).append(v)
    return out


def group_means(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group (in first-seen order): n, val and test accuracy with 95% intervals (``Mean``), the
    mean switch epoch and how many seeds switched on their rule, and the means of the mechanism
    measurements and of the logit norms around the switch."""
    rows = []
    for key, runs in frame.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row.update(
            n=len(runs),
            diverged=int((runs["status"] == "diverged").sum()),
            val=mean_ci(percent(runs["val_acc"])),
            test=mean_ci(percent(runs["test_acc"])),
            switch_epoch=_mean(runs["switch_epoch"]),
            on_rule=int(runs["switched_on_rule"].sum()),
            lawn_runs=int(runs["lawn"].sum()),
        )
        for metric in (*MECHANISM, "onset", "sustained", "logit_at_switch", "logit_growth", "total_steps"):
            row[metric] = _mean(runs[metric]) if metric in runs else math.nan
        row["flattened"] = int(runs["onset"].notna().sum()) if "onset" in runs else 0
        row["sustained_n"] = int(runs["sustained"].notna().sum()) if "sustained" in runs else 0
        rows.append(row)
    return pd.DataFrame(rows)


def _mean(values: pd.Series) -> float:
    x = values.astype(float).dropna()
    return float(x.mean()) if len(x) else math.nan


def best_on_validation(groups: pd.DataFrame, within: str) -> pd.DataFrame:
    """``groups`` (from ``group_means``) with a column ``best``: True on the row of each ``within``
    group whose mean validation accuracy is highest (the choice; test accuracy plays no part)."""
    groups = groups.copy()
    val = groups["val"].map(lambda m: m.mean)
    groups["best"] = False
    for _, idx in groups.groupby(within, sort=False).groups.items():
        if val[idx].notna().any():
            groups.loc[val[idx].idxmax(), "best"] = True
    return groups


def against_best(frame: pd.DataFrame, groups: pd.DataFrame, within: str, variant: str) -> dict[tuple, Difference]:
    """For each row of ``groups`` that is not its group's best on validation: the best's validation
    accuracy minus this one's, with Welch's interval (is the winner's lead more than noise?)."""
    out = {}
    for _, rows in groups.groupby(within, sort=False):
        best = rows[rows["best"]]
        if best.empty:
            continue
        winner = best.iloc[0][variant]
        for _, row in rows[~rows["best"]].iterrows():
            runs = frame[frame[within] == row[within]]
            x = percent(runs.loc[runs[variant] == winner, "val_acc"])
            y = percent(runs.loc[runs[variant] == row[variant], "val_acc"])
            out[(row[within], row[variant])] = welch(x, y)
    return out


def study_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per study: trials that completed, were pruned or failed, and the best validation accuracy
    (%) with the trial that reached it. ``trials``: one row per trial (method, number, state, value)."""
    rows = []
    for method, t in trials.groupby("method", sort=False):
        done = t[t["state"] == "COMPLETE"]
        best = done.loc[done["value"].idxmax()] if not done.empty else None
        rows.append(
            {
                "method": method,
                "complete": len(done),
                "pruned": int((t["state"] == "PRUNED").sum()),
                "failed": int((t["state"] == "FAIL").sum()),
                "best_value": 100 * float(best["value"]) if best is not None else math.nan,
                "best_trial": int(best["number"]) if best is not None else -1,
            }
        )
    return pd.DataFrame(rows)


def low_seeds(frame: pd.DataFrame, by: list[str], points: float = 10.0) -> list[tuple[str, float, float]]:
    """Runs whose test accuracy is more than ``points`` below the best seed of their group: (name,
    its %, the group's best %). What a mean over five seeds can hide."""
    found = []
    for _, runs in frame.groupby([k for k in by if k in frame.columns], sort=True, dropna=False):
        best = runs["test_acc"].max()
        for row in runs[runs["test_acc"] < best - points / 100].itertuples():
            found.append((row.name, 100 * row.test_acc, 100 * best))
    return found


def fallen(frame: pd.DataFrame, points: float = 20.0) -> list[tuple[str, float, float]]:
    """Runs whose final test accuracy is more than ``points`` below their own best: (name, final %, best %)."""
    low = frame[frame["test_acc"] < frame["best_test_acc"] - points / 100]
    return [(r.name, 100 * r.test_acc, 100 * r.best_test_acc) for r in low.itertuples()]


def mean_text(m: Mean) -> str:
    return m.text()


def finite(value: float) -> bool:
    return value is not None and bool(np.isfinite(value))
