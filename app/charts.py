"""Altair chart builders for the dashboard: pure ``DataFrame -> alt.Chart`` functions.

Nothing here touches Streamlit or the store, so every chart is built and checked without a
browser (tests/test_charts.py). A builder returns ``None`` when nothing is left to draw, and the
page says so instead of showing an empty frame.
"""
from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

# Points per line. A dashboard-wide chart cannot show more, and the live view re-sends every
# chart's data every refresh, so long runs are thinned before they reach the browser.
MAX_POINTS = 2000


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Legend labels by run id: the run's name, or ``name (id)`` where several runs share a name."""
    counts = runs["name"].value_counts()
    return {
        run_id: name if counts[name] == 1 else f"{name} ({run_id})"
        for run_id, name in zip(runs["run_id"], runs["name"])
    }


def plottable(df: pd.DataFrame, log_y: bool) -> tuple[pd.DataFrame, int]:
    """The rows that can be drawn, and how many were dropped.

    NaN and inf cannot be placed on an axis (the store keeps them, e.g. a diverged loss), and a
    log axis has no place for zero or negative values either.
    """
    values = df["value"].to_numpy(dtype=float)
    keep = np.isfinite(values)
    if log_y:
        keep &= values > 0
    return df[keep], int((~keep).sum())


def thin(df: pd.DataFrame, by: str, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """Every k-th row of each ``by`` group plus its last one, so no line has more than about
    ``max_points`` points. Rows must already be ordered by step within each group."""
    parts = []
    for _, group in df.groupby(by, sort=False):
        stride = math.ceil(len(group) / max_points)
        parts.append(group.iloc[::stride])
        if (len(group) - 1) % stride:
            parts.append(group.iloc[[-1]])
    return pd.concat(parts, ignore_index=True) if parts else df


def _title(title: str, dropped: int, log_y: bool) -> alt.TitleParams:
    if not dropped:
        return alt.TitleParams(title, anchor="start")
    kind = "non-finite or non-positive" if log_y else "non-finite"
    return alt.TitleParams(title, subtitle=f"{dropped} {kind} values not shown", anchor="start")


def _y(log_y: bool) -> alt.Y:
    return alt.Y("value:Q", title=None, scale=alt.Scale(type="log" if log_y else "linear", zero=False))


def metric_chart(
    df: pd.DataFrame,
    title: str,
    log_y: bool = False,
    switches: pd.DataFrame | None = None,
) -> alt.Chart | alt.LayerChart | None:
    """One line per run (``df``: run_id, step, value, label), coloured by ``label``.

    ``switches`` (run_id, step; ``RunStore.switch_steps``) adds each LAWN run's switch to the
    constrained phase as a dashed vertical rule in that run's colour.
    """
    data, dropped = plottable(df[["run_id", "label", "step", "value"]], log_y)
    if data.empty:
        return None
    data = thin(data, by="run_id")
    color = alt.Color("label:N", title="run")
    lines = (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step"),
            y=_y(log_y),
            color=color,
            tooltip=[
                alt.Tooltip("label:N", title="run"),
                alt.Tooltip("step:Q"),
                alt.Tooltip("value:Q", format=".4g"),
            ],
        )
        .properties(title=_title(title, dropped, log_y))
        .interactive()
    )
    if switches is None or switches.empty:
        return lines
    labels = data[["run_id", "label"]].drop_duplicates()
    rules_data = switches[["run_id", "step"]].merge(labels, on="run_id")
    if rules_data.empty:
        return lines
    rules = (
        alt.Chart(rules_data)
        .mark_rule(strokeDash=[6, 4])
        .encode(
            x="step:Q",
            color=color,
            tooltip=[alt.Tooltip("label:N", title="run"), alt.Tooltip("step:Q", title="LAWN switch at step")],
        )
    )
    return alt.layer(lines, rules)


def layer_chart(
    df: pd.DataFrame,
    title: str,
    switch_step: int | None = None,
) -> alt.Chart | alt.LayerChart | None:
    """One line per layer of one run (``df``: layer, step, value) on a log axis, coloured by layer.

    ``switch_step`` draws that run's LAWN switch as a dashed grey rule.
    """
    data, dropped = plottable(df[["layer", "step", "value"]], log_y=True)
    if data.empty:
        return None
    data = thin(data, by="layer")
    lines = (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step"),
            y=_y(log_y=True),
            color=alt.Color("layer:N", title="layer"),
            tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("step:Q"), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(title=_title(title, dropped, log_y=True))
        .interactive()
    )
    if switch_step is None:
        return lines
    rule = (
        alt.Chart(pd.DataFrame({"step": [switch_step]}))
        .mark_rule(strokeDash=[6, 4], color="gray")
        .encode(x="step:Q", tooltip=[alt.Tooltip("step:Q", title="LAWN switch at step")])
    )
    return alt.layer(lines, rule)


def with_se(values: pd.DataFrame, se: pd.DataFrame) -> pd.DataFrame:
    """Join a metric's series with its ``_se`` series (both from ``RunStore.series``) by run and step."""
    right = se[["run_id", "step", "value"]].rename(columns={"value": "se"})
    return values.merge(right, on=["run_id", "step"], how="left")


def band_chart(
    estimate: pd.DataFrame,
    title: str,
    log_y: bool = False,
    switches: pd.DataFrame | None = None,
    points: pd.DataFrame | None = None,
) -> alt.Chart | alt.LayerChart | None:
    """An estimate with its standard error: per run a line with a +/- 1 SE band.

    ``estimate`` and ``points`` have run_id, label, step, value, se. ``points`` (e.g. the unbiased
    Hutchinson trace on its slow cadence) are drawn as dots with +/- 1 SE error bars on top.
    """
    color = alt.Color("label:N", title="run")
    layers = []
    line = metric_chart(estimate, title, log_y, switches)
    if line is not None:
        layers.extend(line.layer if isinstance(line, alt.LayerChart) else [line])
        band_data, _ = plottable(estimate[["run_id", "label", "step", "value", "se"]], log_y)
        band_data = _bounds(thin(band_data, by="run_id"), log_y)
        layers.append(
            alt.Chart(band_data).mark_area(opacity=0.2).encode(x="step:Q", y="low:Q", y2="high:Q", color=color)
        )
    if points is not None:
        dots, _ = plottable(points[["run_id", "label", "step", "value", "se"]], log_y)
        if not dots.empty:
            dots = _bounds(dots, log_y)
            tooltip = [alt.Tooltip("label:N", title="run"), alt.Tooltip("step:Q"),
                       alt.Tooltip("value:Q", format=".4g"), alt.Tooltip("se:Q", format=".2g", title="SE")]
            layers.append(alt.Chart(dots).mark_rule().encode(x="step:Q", y="low:Q", y2="high:Q", color=color))
            layers.append(alt.Chart(dots).mark_point(filled=True, size=50, shape="diamond")
                          .encode(x="step:Q", y=_y(log_y), color=color, tooltip=tooltip))
    if not layers:
        return None
    chart = alt.layer(*layers)
    return chart if line is not None else chart.properties(title=alt.TitleParams(title, anchor="start"))


def _bounds(df: pd.DataFrame, log_y: bool) -> pd.DataFrame:
    """value +/- se as low / high; on a log axis a low end at or below zero is drawn at value/10."""
    se = df["se"].fillna(0)
    df = df.assign(low=df["value"] - se, high=df["value"] + se)
    if log_y:
        df["low"] = df["low"].where(df["low"] > 0, df["value"] / 10)
    return df
