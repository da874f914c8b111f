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


# ",~f": 400, 12,000, 0.5 (Vega picks the precision from the tick step, "~" drops trailing zeros);
# without it a chart with a single step on its axis labels it "400.000000".
X_AXIS = alt.Axis(format=",~f")


def _y(log_y: bool) -> alt.Y:
    return alt.Y("value:Q", title=None, scale=alt.Scale(type="log" if log_y else "linear", zero=False))


def metric_chart(
    df: pd.DataFrame,
    title: str,
    log_y: bool = False,
    switches: pd.DataFrame | None = None,
    x: str = "step",
    x_title: str | None = None,
    points: bool = False,
) -> alt.Chart | alt.LayerChart | None:
    """One line per run (``df``: run_id, label, ``x``, value), coloured by ``label``.

    ``switches`` (run_id and the same ``x`` column; ``RunStore.switch_steps``) adds each LAWN run's
    switch to the constrained phase as a dashed vertical rule in that run's colour. ``points``
    marks every value (for slow-cadence metrics with few points).
    """
    data, dropped = plottable(df[["run_id", "label", x, "value"]], log_y)
    if data.empty:
        return None
    data = thin(data, by="run_id")
    color = alt.Color("label:N", title="run")
    lines = (
        alt.Chart(data)
        .mark_line(point=points)
        .encode(
            x=alt.X(f"{x}:Q", title=x_title or x, axis=X_AXIS),
            y=_y(log_y),
            color=color,
            tooltip=[
                alt.Tooltip("label:N", title="run"),
                alt.Tooltip(f"{x}:Q", format=".4g"),
                alt.Tooltip("value:Q", format=".4g"),
            ],
        )
        .properties(title=_title(title, dropped, log_y))
        .interactive()
    )
    if switches is None or switches.empty or x not in switches.columns:
        return lines
    labels = data[["run_id", "label"]].drop_duplicates()
    rules_data = switches[["run_id", x]].merge(labels, on="run_id")
    if rules_data.empty:
        return lines
    rules = (
        alt.Chart(rules_data)
        .mark_rule(strokeDash=[6, 4])
        .encode(
            x=f"{x}:Q",
            color=color,
            tooltip=[alt.Tooltip("label:N", title="run"), alt.Tooltip(f"{x}:Q", title=f"LAWN switch at {x}")],
        )
    )
    return alt.layer(lines, rules)


def layer_chart(
    df: pd.DataFrame,
    title: str,
    switch_step: int | None = None,
    reference: float | None = None,
) -> alt.Chart | alt.LayerChart | None:
    """One line per layer of one run (``df``: layer, step, value) on a log axis, coloured by layer.

    ``switch_step`` draws that run's LAWN switch as a dashed grey rule; ``reference`` a horizontal
    dotted rule at that value (e.g. 1e-3 for the update ratio, where adaptivity is lost below it).
    """
    data, dropped = plottable(df[["layer", "step", "value"]], log_y=True)
    if data.empty:
        return None
    data = thin(data, by="layer")
    lines = (
        alt.Chart(data)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="step", axis=X_AXIS),
            y=_y(log_y=True),
            color=alt.Color("layer:N", title="layer"),
            tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("step:Q"), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(title=_title(title, dropped, log_y=True))
        .interactive()
    )
    layers = [lines]
    if switch_step is not None:
        layers.append(
            alt.Chart(pd.DataFrame({"step": [switch_step]}))
            .mark_rule(strokeDash=[6, 4], color="gray")
            .encode(x="step:Q", tooltip=[alt.Tooltip("step:Q", title="LAWN switch at step")])
        )
    if reference is not None:
        layers.append(
            alt.Chart(pd.DataFrame({"value": [reference]}))
            .mark_rule(strokeDash=[2, 2], color="black")
            .encode(y="value:Q", tooltip=[alt.Tooltip("value:Q", title="reference", format=".0e")])
        )
    return lines if len(layers) == 1 else alt.layer(*layers)


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


def heatmap_chart(
    df: pd.DataFrame,
    title: str,
    log_color: bool = True,
    switch_step: int | None = None,
) -> alt.Chart | alt.LayerChart | None:
    """A (layer x step) heatmap of one run (``df``: layer, step, value; ``RunStore.layers``).

    Each cell spans its step bucket (from its first step to the next bucket's), layers keep the
    order they come in (the model's), and the colour is on a log scale by default, since norms and
    update ratios span decades. ``switch_step`` draws the LAWN switch as a dashed white rule.
    """
    data, dropped = plottable(df[["layer", "step", "value"]], log_color)
    if data.empty:
        return None
    steps = np.sort(df["step"].unique())
    width = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    ends = dict(zip(steps, [*steps[1:], steps[-1] + width]))
    data = data.assign(step_end=data["step"].map(ends))
    order = list(dict.fromkeys(df["layer"]))
    cells = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("step:Q", title="step", axis=X_AXIS),
            x2="step_end:Q",
            y=alt.Y("layer:N", sort=order, title=None),
            color=alt.Color("value:Q", title=None, legend=alt.Legend(format=".2~g"),
                            scale=alt.Scale(type="log" if log_color else "linear", scheme="viridis")),
            tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("step:Q"), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(title=_title(title, dropped, log_color))
    )
    if switch_step is None:
        return cells
    rule = (
        alt.Chart(pd.DataFrame({"step": [switch_step]}))
        .mark_rule(strokeDash=[6, 4], color="white", strokeWidth=2)
        .encode(x="step:Q", tooltip=[alt.Tooltip("step:Q", title="LAWN switch at step")])
    )
    return alt.layer(cells, rule)


def threshold_chart(
    values: pd.DataFrame,
    threshold: pd.DataFrame,
    title: str,
    log_y: bool = True,
    switches: pd.DataFrame | None = None,
) -> alt.Chart | alt.LayerChart | None:
    """A slow-cadence estimate (points joined by lines, per run) against a per-run limit drawn
    dashed in the same colour, e.g. sharpness against the edge-of-stability threshold.

    Both frames: run_id, label, step, value. The limit's line breaks where it is not finite
    (an LR of 0 has no edge of stability) rather than bridging the gap.
    """
    line = metric_chart(values, title, log_y, switches, points=True)
    limit = threshold[["run_id", "label", "step", "value"]].sort_values(["run_id", "step"])
    limit = limit.assign(segment=(~np.isfinite(limit["value"].to_numpy(dtype=float))).cumsum())
    limit, _ = plottable(limit, log_y)
    if limit.empty:
        return line
    dashed = (
        alt.Chart(thin(limit, by="run_id"))
        .mark_line(strokeDash=[4, 4])
        .encode(x="step:Q", y=_y(log_y), color=alt.Color("label:N", title="run"), detail="segment:N",
                tooltip=[alt.Tooltip("label:N", title="run"), alt.Tooltip("step:Q"),
                         alt.Tooltip("value:Q", format=".4g", title="threshold")])
    )
    if line is None:
        return dashed.properties(title=alt.TitleParams(title, anchor="start"))
    return alt.layer(*(line.layer if isinstance(line, alt.LayerChart) else [line]), dashed)


def group_chart(
    agg: pd.DataFrame,
    title: str,
    log_y: bool = False,
    x_title: str = "step",
) -> alt.Chart | alt.LayerChart | None:
    """Group means with their band (``agg``: label, x, value, low, high, runs; ``tables.aggregate``):
    a line per group and a shaded band from ``low`` to ``high``."""
    data, dropped = plottable(agg, log_y)
    if data.empty:
        return None
    data = thin(data, by="label")
    if log_y:  # a band reaching zero or below has no place on a log axis: clip it at value / 10
        data = data.assign(low=data["low"].where(data["low"] > 0, data["value"] / 10))
    color = alt.Color("label:N", title="group")
    line = (
        alt.Chart(data)
        .mark_line()
        .encode(x=alt.X("x:Q", title=x_title, axis=X_AXIS), y=_y(log_y), color=color,
                tooltip=[alt.Tooltip("label:N", title="group"), alt.Tooltip("x:Q", format=".4g", title=x_title),
                         alt.Tooltip("value:Q", format=".4g", title="mean"), alt.Tooltip("runs:Q")])
        .properties(title=_title(title, dropped, log_y))
        .interactive()
    )
    band = alt.Chart(data).mark_area(opacity=0.2).encode(x="x:Q", y="low:Q", y2="high:Q", color=color)
    return alt.layer(line, band)


def batch_size_chart(frame: pd.DataFrame, title: str) -> alt.LayerChart | None:
    """Final accuracy against batch size per method (the paper's Figure 1): ours as solid lines
    with +/- std error bars, the paper's as dashed lines with hollow points.

    ``frame``: method, batch_size, accuracy, std, source ("ours" / "paper"); ``paper.figure1_frame``.
    """
    data = frame[np.isfinite(frame["accuracy"].to_numpy(dtype=float))]
    if data.empty:
        return None
    x = alt.X("batch_size:Q", title="batch size", scale=alt.Scale(type="log"))
    color = alt.Color("method:N", title="method")
    lines = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(x=x, y=alt.Y("accuracy:Q", title="test accuracy (%)", scale=alt.Scale(zero=False)), color=color,
                strokeDash=alt.StrokeDash("source:N", title="source", sort=["ours", "paper"]),
                tooltip=["method:N", "source:N", "batch_size:Q", alt.Tooltip("accuracy:Q", format=".2f"),
                         alt.Tooltip("std:Q", format=".2f")])
        .properties(title=alt.TitleParams(title, anchor="start"))
    )
    ours = data[(data["source"] == "ours") & data["std"].notna()]
    ours = ours.assign(low=ours["accuracy"] - ours["std"], high=ours["accuracy"] + ours["std"])
    bars = alt.Chart(ours).mark_rule().encode(x=x, y="low:Q", y2="high:Q", color=color)
    return alt.layer(lines, bars)
