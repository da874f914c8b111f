"""Altair chart builders for the dashboard: pure ``DataFrame -> alt.Chart`` functions.

Nothing here touches Streamlit or the store, so every chart is built and checked without a
browser (tests/test_charts.py). A builder returns ``None`` when nothing is left to draw, and the
page says so instead of showing an empty frame.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from .styles import Palette, method_palette

# Points per line. A dashboard-wide chart cannot show more, and the live view re-sends every
# chart's data every refresh, so long runs are thinned before they reach the browser.
MAX_POINTS = 2000
# The dashboard serializes its charts with their data inline (state.vega_lite); Altair's default
# refuses more than 5,000 rows, which a heatmap of 50 layers x 200 steps passes. The sizes are
# bounded here instead (MAX_POINTS, the stores' downsampling).
alt.data_transformers.disable_max_rows()


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


# A y axis "ignores outliers" (TensorBoard's option): values beyond fences set around the bulk of
# them (the 2nd to 98th percentile, widened by its own width on each side; on a log axis in
# decades) are left out of its range, so one point at LR ~0 (update ratio 1e-14) or one diverged
# step no longer flattens every other value into a line, while a curve's own start stays in view.
OUTLIER_QUANTILES = (0.02, 0.98)
OUTLIER_FENCE = 1.0  # how many bulk widths beyond the bulk a value must lie to be left out


def robust_domain(values, log_y: bool) -> list[float] | None:
    """A y domain that leaves out the outliers (see ``OUTLIER_QUANTILES``), or None when there are
    none (the whole range is then the axis)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)] if log_y else v[np.isfinite(v)]
    if len(v) < 10:
        return None
    if log_y:
        v = np.log10(v)
    lo, hi = np.quantile(v, OUTLIER_QUANTILES)
    width = max(hi - lo, 1e-12 if not log_y else 1e-3)
    kept = v[(v >= lo - OUTLIER_FENCE * width) & (v <= hi + OUTLIER_FENCE * width)]
    if len(kept) == len(v):
        return None
    lo, hi = float(kept.min()), float(kept.max())
    pad = 0.05 * max(hi - lo, width)
    lo, hi = lo - pad, hi + pad
    return [float(10**lo), float(10**hi)] if log_y else [lo, hi]


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
RAW_OPACITY = 0.3  # the raw values' outline behind the smoothed line, as TensorBoard draws its raw line
RANGE_OPACITY = 0.15  # the fill of each downsampling bucket's min-max range, so spikes stay on screen
SE_OPACITY = 0.2


def _zoomable(chart, zoom: bool):
    """Drag to pan, scroll to zoom (a selection bound to the scales), when asked: it costs about
    a tenth of a second of the browser's time per chart, so pages of small multiples leave it off
    unless the sidebar turns it on."""
    return chart.interactive() if zoom else chart


def _layered(*layers) -> alt.LayerChart:
    """Layers over one set of scales, each with its own legend: only the main layer draws one (its
    secondary layers say ``legend=None``, which on a merged legend would hide it, and their faint
    marks would otherwise lend the swatches their faint look)."""
    return alt.layer(*layers).resolve_legend(
        color="independent", stroke="independent", fill="independent", strokeDash="independent"
    )


# One gridline per decade or so, not one per minor tick. A y title longer than the plot is tall
# would push the chart's own title off the top: titles are cut to fit (full text in the tooltip).
TITLE_LIMIT = 170
LOG_AXIS = alt.Axis(tickCount=6, format="~g", titleLimit=TITLE_LIMIT)
LINEAR_AXIS = alt.Axis(titleLimit=TITLE_LIMIT)
# px of the whole chart: Streamlit fits a chart's title, axes and legend into it (Vega's "fit"
# autosize), which leaves a half-width chart's plot about 200 px with a two-row legend below.
HEIGHT = 340


def _y(log_y: bool, title: str | None, field: str = "value", domain: list[float] | None = None) -> alt.Y:
    scale = alt.Scale(type="log" if log_y else "linear", zero=False)
    if domain is not None:
        scale = alt.Scale(type="log" if log_y else "linear", zero=False, domain=domain, nice=False)
    return alt.Y(f"{field}:Q", title=title, scale=scale, axis=LOG_AXIS if log_y else LINEAR_AXIS)


def _palette(palette: Palette | None, data: pd.DataFrame) -> Palette:
    return palette if palette is not None else Palette.default(data["label"])


def as_percent(df: pd.DataFrame) -> pd.DataFrame:
    """Shares (0..1) as percentages, in every value column a chart may draw."""
    columns = [c for c in ("value", "smoothed", "min", "max", "se") if c in df.columns]
    return df.assign(**{c: df[c] * 100.0 for c in columns})


def _ranges(data: pd.DataFrame, log_y: bool) -> pd.DataFrame:
    """Each bucket's min and max as drawable ends: every row, a bucket of one value a band of no
    height (its outline is then the raw line); a row without them spans its own value. A log axis
    cannot place a min at or below zero: it is drawn at value / 10."""
    value = data["value"].astype(float)
    lo, hi = (data.get(end, value).astype(float) for end in ("min", "max"))
    lo, hi = lo.where(np.isfinite(lo), value), hi.where(np.isfinite(hi), value)
    if log_y:
        lo = lo.where(lo > 0, value / 10)
    spread = data.assign(min=lo, max=hi)
    return spread[np.isfinite(spread["min"]) & np.isfinite(spread["max"])]


SWITCH_DASH = [6, 4]


def _switch_rules(switches: pd.DataFrame | None, data: pd.DataFrame, x: str, palette: Palette):
    """Each LAWN run's switch as a dashed rule in its colour. Runs that switch at the same x share
    the rule's length by turns (interleaved dashes, one layer per turn), so both colours show; the
    tooltip names every run switching there."""
    if switches is None or switches.empty or x not in switches.columns:
        return None
    rules_data = switches[["run_id", x]].merge(data[["run_id", "label"]].drop_duplicates(), on="run_id")
    if rules_data.empty:
        return None
    rules_data = rules_data.assign(
        turn=rules_data.groupby(x).cumcount(),
        runs=rules_data.groupby(x)["label"].transform(lambda names: ", ".join(names)),
    )
    turns = int(rules_data["turn"].max()) + 1
    dash = SWITCH_DASH if turns == 1 else [5, 5 * (turns - 1)]
    layers = [
        alt.Chart(rules_data[rules_data["turn"] == turn])
        .mark_rule(strokeDash=dash, strokeDashOffset=-5 * turn, opacity=0.9, strokeWidth=1.5)
        .encode(
            x=f"{x}:Q",
            stroke=palette.stroke(),
            tooltip=[alt.Tooltip("runs:N", title="LAWN switch of"), alt.Tooltip(f"{x}:Q", title=f"at {x}")],
        )
        for turn in range(turns)
    ]
    return layers


def _crosshair(data: pd.DataFrame, x: str, x_enc, smoothed: bool, fmt: str, temporal: bool):
    """A vertical rule that follows the pointer, with every run's value at that x in its tooltip
    (the smoothed value and the raw one where smoothing is on): TensorBoard's and W&B's hover.
    Runs logged at other x than the pointer's show their latest value at or before it."""
    labels = list(dict.fromkeys(data["label"]))
    columns = {label: f"r{i}" for i, label in enumerate(labels)}  # field names free of dots and brackets
    fields = ["smoothed", "value"] if smoothed else ["value"]
    wide: pd.DataFrame | None = None
    for field in fields:
        table = data.pivot_table(index=x, columns="label", values=field, aggfunc="last").sort_index()
        last = data.groupby("label")[x].max()
        filled = table.ffill()
        for label in table.columns:  # never past a run's last point
            filled.loc[filled.index > last[label], label] = np.nan
        suffix = "s" if field == "smoothed" else "v"
        filled = filled.rename(columns={label: columns[label] + suffix for label in table.columns})
        wide = filled if wide is None else wide.join(filled)
    assert wide is not None  # one table per field, at least one field
    wide = wide.reset_index()
    if len(wide) > MAX_POINTS:
        wide = wide.iloc[:: math.ceil(len(wide) / MAX_POINTS)]
    tooltip = [_x_tooltip(x, x_enc.title if isinstance(x_enc.title, str) else x, temporal)]
    for label in labels:
        name = columns[label]
        if smoothed:
            tooltip.append(alt.Tooltip(f"{name}s:Q", format=fmt, title=f"{label} (smoothed)"))
            tooltip.append(alt.Tooltip(f"{name}v:Q", format=fmt, title=f"{label} (raw)"))
        else:
            tooltip.append(alt.Tooltip(f"{name}v:Q", format=fmt, title=label))
    hover = alt.selection_point(nearest=True, on="pointerover", fields=[x], empty=False, clear="pointerout")
    return (
        alt.Chart(wide)
        .mark_rule(color="#888", strokeWidth=1)
        .encode(x=x_enc, opacity=alt.condition(hover, alt.value(0.6), alt.value(0)), tooltip=tooltip)
        .add_params(hover)
    )


def metric_chart(
    df: pd.DataFrame,
    title: str,
    log_y: bool = False,
    switches: pd.DataFrame | None = None,
    x: str = "step",
    x_title: str | None = None,
    points: bool = False,
    palette: Palette | None = None,
    y_title: str | None = None,
    percent: bool = False,
    zoom: bool = False,
    robust: bool = False,
    x_domain: list[float] | None = None,
    temporal: bool = False,
    crosshair: bool = False,
    fit_x: tuple[str, ...] = (),
) -> alt.Chart | alt.LayerChart | None:
    """One line per run (``df``: run_id, label, ``x``, value; from ``RunStore.series`` also
    smoothed, min and max), in each run's colour and dash (``palette``).

    Where ``smoothed`` differs from ``value`` the smoothed line is drawn over the faint raw values
    (TensorBoard's look): each downsampling bucket's min-max range, filled and outlined, which is
    the raw line where a bucket held one value and keeps a spike inside a bucket visible.
    ``switches`` (run_id and the same ``x``; ``RunStore.switch_steps``) adds each LAWN run's
    switch as a dashed rule in its colour.
    ``points`` marks every value (slow-cadence metrics); ``percent`` draws shares as %.
    ``robust``: the y axis leaves out a few outliers (``robust_domain``); ``x_domain`` fixes the
    x range; ``fit_x``: the x range spans these runs (Live: the live ones) and the other runs are
    cut there; ``temporal``: ``x`` holds datetimes (wall-clock axis);
    ``crosshair``: a hover rule with every run's value at the pointer's x.
    """
    drawn = _metric_layers(
        df,
        log_y,
        switches,
        x,
        x_title,
        points,
        palette,
        y_title,
        percent,
        robust=robust,
        x_domain=x_domain or _fit(df, x, fit_x),
        temporal=temporal,
        crosshair=crosshair,
    )
    if drawn is None:
        return None
    layers, dropped = drawn
    chart = layers[0] if len(layers) == 1 else _layered(*layers)
    return _zoomable(chart.properties(title=_title(title, dropped, log_y), height=HEIGHT), zoom)


def _fit(df: pd.DataFrame, x: str, run_ids: tuple[str, ...]) -> list[float] | None:
    """An x range from 0 to a little past the last x of these runs (None: no such runs drawn)."""
    if not run_ids or df.empty:
        return None
    values = df.loc[df["run_id"].isin(run_ids) & np.isfinite(df["value"].to_numpy(float)), x]
    return [0.0, float(max(values.max() * 1.05, 10.0))] if not values.empty else None


def _line_tooltip(data: pd.DataFrame, x: str, x_title: str | None, temporal: bool, fmt: str, smoothed: bool) -> list:
    tooltip = [
        alt.Tooltip("label:N", title="run"),
        _x_tooltip(x, x_title or x, temporal),
        alt.Tooltip("value:Q", format=fmt, title="value"),
    ]
    if smoothed:
        tooltip.append(alt.Tooltip("smoothed:Q", format=fmt))
    if "shown" in data.columns:  # what a run's value is, where runs show different things (sharpness)
        tooltip.append(alt.Tooltip("shown:N", title="of"))
    return tooltip


def _x_tooltip(x: str, title: str, temporal: bool) -> alt.Tooltip:
    if temporal:
        return alt.Tooltip(f"{x}:T", format="%Y-%m-%d %H:%M:%S", title=title)
    return alt.Tooltip(f"{x}:Q", format=",.6~g", title=title)


def _x_encoding(x: str, x_title: str | None, temporal: bool, x_domain: list[float] | None) -> alt.X:
    if temporal:
        return alt.X(f"{x}:T", title=x_title or x, axis=alt.Axis(format="%H:%M", labelOverlap=True))
    if x_domain is not None:
        return alt.X(f"{x}:Q", title=x_title or x, axis=X_AXIS, scale=alt.Scale(domain=x_domain, nice=False))
    return alt.X(f"{x}:Q", title=x_title or x, axis=X_AXIS)


def _metric_layers(
    df,
    log_y,
    switches,
    x,
    x_title,
    points,
    palette,
    y_title,
    percent,
    robust=False,
    x_domain=None,
    temporal=False,
    crosshair=False,
):
    """``metric_chart``'s layers and the count of values it could not draw (None: nothing to draw)."""
    data, dropped, smoothed = _line_data(df, x, log_y, x_domain, percent)
    if data is None:
        return None
    palette = _palette(palette, data)
    main = "smoothed" if smoothed else "value"
    domain = robust_domain(np.concatenate([data["value"], data[main]]), log_y) if robust else None
    x_enc = _x_encoding(x, x_title, temporal, x_domain)
    fmt = ".2f" if percent else ".4~g"
    tooltip = _line_tooltip(data, x, x_title, temporal, fmt, smoothed)
    # Drawn in this order: the faint raw range under the main line (one data set for both).
    data = _ranges(data, log_y)
    layers = _under_layers(data, x_enc, log_y, y_title, domain, palette, smoothed)
    faint = palette.opacity()
    layers.append(
        alt.Chart(data)
        .mark_line(point=points, strokeWidth=2, clip=True)
        .encode(
            x=x_enc,
            y=_y(log_y, y_title, main, domain),
            color=palette.color(),
            strokeDash=palette.dash(),
            tooltip=tooltip,
            **({"opacity": faint} if faint is not None else {}),
        )
    )
    rules = _switch_rules(switches, data, x, palette)
    if rules is not None:
        layers.extend(rules)
    if crosshair:
        layers.append(_crosshair(data, x, x_enc, smoothed, fmt, temporal))
    return layers, dropped


def _line_data(df: pd.DataFrame, x: str, log_y: bool, x_domain, percent: bool) -> tuple:
    """What a metric chart draws: the drawable rows within ``x_domain``, thinned, as % if asked
    (None where nothing is left), the count it could not draw, and whether ``smoothed`` differs
    from ``value`` (then rows without a positive smoothed value are left off a log axis)."""
    columns = [c for c in ("run_id", "label", x, "value", "smoothed", "min", "max", "shown") if c in df.columns]
    data, dropped = plottable(df[columns], log_y)
    if x_domain is not None:
        data = data[data[x] <= x_domain[1]]
    if data.empty:
        return None, dropped, False
    data = thin(data, by="run_id")
    if percent:
        data = as_percent(data)
    smoothed = "smoothed" in data.columns and not np.allclose(
        data["smoothed"].to_numpy(float), data["value"].to_numpy(float), equal_nan=True
    )
    if smoothed and log_y:
        data = data[data["smoothed"] > 0]
    return data, dropped, smoothed


def _under_layers(data, x_enc, log_y: bool, y_title, domain, palette: Palette, smoothed: bool) -> list:
    """The faint layer under a metric's line (``data`` from ``_ranges``, which the line
    shares): the raw values, as each bucket's min-max range filled and outlined. Where a bucket
    holds one value the outline is the raw line itself (what TensorBoard draws faintly behind a
    smoothed one); where it holds many, the outline is their envelope, so a spike inside a bucket
    stays visible. One layer, not a band and a raw line: fewer marks for the browser to draw
    (benchmarks/chart_views.py's page of eight charts: 2.81 s against 3.17 s). Drawn only where
    it shows something the main line does not: the main line is smoothed, or a bucket has a range."""
    if data.empty or not (smoothed or (data["max"] > data["min"]).any()):
        return []
    return [
        alt.Chart(data)
        .mark_area(
            fillOpacity=RANGE_OPACITY, strokeOpacity=RAW_OPACITY, strokeWidth=1, interpolate="step-after", clip=True
        )
        .encode(x=x_enc, y=_y(log_y, y_title, "min", domain), y2="max:Q", fill=palette.fill(), stroke=palette.stroke())
    ]


def layer_chart(
    df: pd.DataFrame,
    title: str,
    switch_step: int | None = None,
    reference: float | None = None,
    y_title: str | None = None,
    zoom: bool = False,
) -> alt.Chart | alt.LayerChart | None:
    """One line per layer of one run (``df``: layer, step, value) on a log axis, coloured by layer.

    ``switch_step`` draws that run's LAWN switch as a dashed grey rule; ``reference`` a horizontal
    dotted rule at that value.
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
            y=_y(True, y_title),
            color=alt.Color(
                "layer:N",
                title="layer",
                sort=list(dict.fromkeys(data["layer"])),
                legend=alt.Legend(orient="bottom", columns=3, labelLimit=300, symbolType="stroke"),
            ),
            tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("step:Q"), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(title=_title(title, dropped, log_y=True))
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
    return _zoomable(lines if len(layers) == 1 else alt.layer(*layers), zoom)


def band_chart(
    estimate: pd.DataFrame,
    title: str,
    log_y: bool = False,
    switches: pd.DataFrame | None = None,
    points: pd.DataFrame | None = None,
    palette: Palette | None = None,
    y_title: str | None = None,
    zoom: bool = False,
) -> alt.Chart | alt.LayerChart | None:
    """An estimate with its standard error: per run a line (marked at each point) with a +/- 1 SE
    band. ``estimate`` and ``points`` have run_id, label, step, value, se. ``points`` (e.g. the
    unbiased Hutchinson trace on its slow cadence) are drawn as diamonds with +/- 1 SE bars."""
    shown = [d for d in (estimate, points) if d is not None and not d.empty]
    if not shown:
        return None
    palette = palette if palette is not None else Palette.default(pd.concat(shown)["label"])
    layers = []
    estimate = estimate.drop(columns=[c for c in ("smoothed", "min", "max") if c in estimate.columns])
    line = _metric_layers(estimate, log_y, switches, "step", None, True, palette, y_title, False)
    if line is not None:
        band_data, _ = plottable(estimate[["run_id", "label", "step", "value", "se"]], log_y)
        band_data = _bounds(thin(band_data, by="run_id"), log_y)
        layers.append(
            alt.Chart(band_data)
            .mark_area(opacity=SE_OPACITY)
            .encode(x="step:Q", y=alt.Y("low:Q", title=y_title), y2="high:Q", fill=palette.fill())
        )
        layers.extend(line[0])
    if points is not None:
        dots, _ = plottable(points[["run_id", "label", "step", "value", "se"]], log_y)
        if not dots.empty:
            dots = _bounds(dots, log_y)
            tooltip = [
                alt.Tooltip("label:N", title="run"),
                alt.Tooltip("step:Q"),
                alt.Tooltip("value:Q", format=".4g"),
                alt.Tooltip("se:Q", format=".2g", title="SE"),
            ]
            layers.append(
                alt.Chart(dots)
                .mark_rule()
                .encode(x="step:Q", y=alt.Y("low:Q", title=y_title), y2="high:Q", stroke=palette.stroke())
            )
            # The points carry the legend only when there is no line to carry it.
            colour = (
                {"color": palette.color()} if line is None else {"fill": palette.fill(), "stroke": palette.stroke()}
            )
            layers.append(
                alt.Chart(dots)
                .mark_point(filled=True, size=60, shape="diamond", opacity=1)
                .encode(x="step:Q", y=_y(log_y, y_title), tooltip=tooltip, **colour)
            )
    if not layers:
        return None
    return _zoomable(_layered(*layers).properties(title=alt.TitleParams(title, anchor="start"), height=HEIGHT), zoom)


def _bounds(df: pd.DataFrame, log_y: bool) -> pd.DataFrame:
    """value +/- se as low / high; on a log axis a low end at or below zero is drawn at value/10."""
    se = df["se"].fillna(0)
    df = df.assign(low=df["value"] - se, high=df["value"] + se)
    if log_y:
        df["low"] = df["low"].where(df["low"] > 0, df["value"] / 10)
    return df


HEATMAP_QUANTILES = (0.01, 0.99)  # the colour scale spans these; cells beyond take its end colours


def color_domain(frames: list[pd.DataFrame], log_color: bool = True, center: float | None = None):
    """One colour domain for several heatmaps (so that one colour means one value on all of them):
    the 1st to 99th percentile of their drawable values, so that one column of outliers (the last
    step at LR 0) cannot wash out the contrast between layers (cells beyond it are clamped to the
    end colours); around ``center`` it is symmetric (on a log scale [center / m, center * m]), so
    that ``center`` is the middle colour. None if nothing is drawable."""
    values = (
        pd.concat([plottable(f[["value"]], log_color)[0]["value"] for f in frames if not f.empty])
        if any(not f.empty for f in frames)
        else pd.Series(dtype=float)
    )
    if values.empty:
        return None
    finite = values.to_numpy(float)
    lo = float(np.quantile(finite, HEATMAP_QUANTILES[0], method="lower"))
    hi = float(np.quantile(finite, HEATMAP_QUANTILES[1], method="higher"))
    if center is None:
        return [lo, hi] if hi > lo else [lo * 0.9, hi * 1.1 + 1e-12]
    if log_color:
        m = max(hi / center, center / lo, 1.001)
        return [center / m, center * m]
    m = max(hi - center, center - lo, 1e-6)
    return [center - m, center + m]


def heatmap_chart(
    df: pd.DataFrame,
    title: str,
    log_color: bool = True,
    switch_step: int | None = None,
    domain: list[float] | None = None,
    center: float | None = None,
) -> alt.Chart | alt.LayerChart | None:
    """A (layer x step) heatmap of one run (``df``: layer, step, value; ``RunStore.layers``).

    Each cell spans its step bucket (from its first step to the next bucket's), layers keep the
    order they come in (the model's), and the colour is on a log scale by default, since norms and
    update ratios span decades. ``domain`` fixes the colour range (``color_domain``: the same for
    heatmaps shown side by side); with ``center`` the colours diverge from it (blue below, red
    above: e.g. weight growth around 1). ``switch_step`` draws the LAWN switch as a dashed rule.
    """
    data, dropped = plottable(df[["layer", "step", "value"]], log_color)
    if data.empty:
        return None
    steps = np.sort(df["step"].unique())
    width = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    ends = dict(zip(steps, [*steps[1:], steps[-1] + width]))
    data = data.assign(step_end=data["step"].map(ends))
    order = list(dict.fromkeys(df["layer"]))
    scale: dict[str, Any] = {"type": "log" if log_color else "linear"}
    if center is not None:
        scale.update(scheme="redblue", reverse=True, domainMid=center)
    else:
        scale.update(scheme="viridis")
    height = max(220, 22 * len(order) + 100)  # px in all: a row per layer, the title and the x axis
    legend = alt.Legend(format=".3~g", gradientLength=height - 110)
    if domain is not None:
        scale.update(domain=list(domain), clamp=True)
        lo, hi = domain
        ticks = np.geomspace(lo, hi, 5) if log_color and lo > 0 else np.linspace(lo, hi, 5)
        legend = alt.Legend(format=".3~g", gradientLength=height - 110, values=[float(f"{t:.3g}") for t in ticks])
    cells = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X(
                "step:Q",
                title="step",
                axis=X_AXIS,
                scale=alt.Scale(domain=[float(steps[0]), float(data["step_end"].max())], nice=False),
            ),
            x2="step_end:Q",
            y=alt.Y("layer:N", sort=order, title=None, axis=alt.Axis(labelLimit=220, labelOverlap=False)),
            color=alt.Color("value:Q", title=None, legend=legend, scale=alt.Scale(**scale)),
            tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("step:Q"), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(title=_title(title, dropped, log_color), height=height)
    )
    if switch_step is None:
        return cells
    rule = (
        alt.Chart(pd.DataFrame({"step": [switch_step]}))
        .mark_rule(strokeDash=[6, 4], color="black", strokeWidth=2)
        .encode(x="step:Q", tooltip=[alt.Tooltip("step:Q", title="LAWN switch at step")])
    )
    return cells + rule  # alt.layer(cells, rule), typed as a LayerChart


def threshold_chart(
    values: pd.DataFrame,
    threshold: pd.DataFrame,
    title: str,
    log_y: bool = True,
    switches: pd.DataFrame | None = None,
    palette: Palette | None = None,
    y_title: str | None = None,
    zoom: bool = False,
) -> alt.Chart | alt.LayerChart | None:
    """A slow-cadence estimate (points joined by lines, per run, in the run's dash) against a
    per-run limit drawn as a thin dotted line in the same colour, e.g. sharpness against the
    edge-of-stability threshold. Both frames: run_id, label, step, value. The limit's line breaks
    where it is not finite (an LR of 0 has no edge of stability) rather than bridging the gap."""
    shown = [d for d in (values, threshold) if not d.empty]
    if not shown:
        return None
    palette = palette if palette is not None else Palette.default(pd.concat(shown)["label"])
    values = values.drop(columns=[c for c in ("smoothed", "min", "max") if c in values.columns])
    drawn = _metric_layers(values, log_y, switches, "step", None, True, palette, y_title, False)
    layers, dropped = drawn if drawn is not None else ([], 0)
    limit = threshold[["run_id", "label", "step", "value"]].sort_values(["run_id", "step"])
    limit = limit.assign(segment=(~np.isfinite(limit["value"].to_numpy(dtype=float))).cumsum())
    limit, _ = plottable(limit, log_y)
    y = _y(log_y, y_title)
    estimates, _ = plottable(values[["value"]], log_y)
    if estimates.empty:  # no estimate yet: the axis spans the line where it is lowest
        estimates = limit[["value"]].nsmallest(1, "value")
    if not limit.empty:
        # The line runs off to infinity as a schedule takes the LR to 0: the axis spans the
        # estimates and the line where it is lowest (where they would meet it), and clips the rest.
        lo = min(estimates["value"].min(), limit["value"].min())
        hi = max(estimates["value"].max(), limit["value"].min())
        y = alt.Y(
            "value:Q",
            title=y_title,
            axis=LOG_AXIS if log_y else LINEAR_AXIS,
            scale=alt.Scale(
                type="log" if log_y else "linear",
                zero=False,
                domain=[lo / 2, hi * 3] if log_y else [lo - 0.1 * abs(hi - lo), hi * 1.3],
            ),
        )
        layers = [layer if layer.encoding.y is alt.Undefined else layer.encode(y=y) for layer in layers]
    if not limit.empty:
        layers.append(
            alt.Chart(thin(limit, by="run_id"))
            .mark_line(strokeDash=[2, 3], strokeWidth=1.5, clip=True)
            .encode(
                x="step:Q",
                y=y,
                detail=["label:N", "segment:N"],
                **({"color": palette.color()} if drawn is None else {"stroke": palette.stroke()}),
                tooltip=[
                    alt.Tooltip("label:N", title="run"),
                    alt.Tooltip("step:Q"),
                    alt.Tooltip("value:Q", format=".4g", title="threshold"),
                ],
            )
        )
    if not layers:
        return None
    chart = layers[0] if len(layers) == 1 else _layered(*layers)
    return _zoomable(chart.properties(title=_title(title, dropped, log_y), height=HEIGHT), zoom)


def group_chart(
    agg: pd.DataFrame,
    title: str,
    log_y: bool = False,
    x_title: str = "step",
    palette: Palette | None = None,
    y_title: str | None = None,
    percent: bool = False,
    zoom: bool = False,
    temporal: bool = False,
) -> alt.Chart | alt.LayerChart | None:
    """Group means with their band (``agg``: label, x, value, low, high, runs; ``tables.aggregate``):
    a line per group and a shaded band from ``low`` to ``high``; ``temporal``: x holds datetimes."""
    data, dropped = plottable(agg, log_y)
    if data.empty:
        return None
    data = thin(data, by="label")
    if percent:
        data = data.assign(value=data["value"] * 100, low=data["low"] * 100, high=data["high"] * 100)
    if log_y:  # a band reaching zero or below has no place on a log axis: clip it at value / 10
        data = data.assign(low=data["low"].where(data["low"] > 0, data["value"] / 10))
    palette = _palette(palette, data)
    x_enc = _x_encoding("x", x_title, temporal, None)
    line = (
        alt.Chart(data)
        .mark_line(strokeWidth=2)
        .encode(
            x=x_enc,
            y=_y(log_y, y_title),
            color=palette.color(title="group"),
            strokeDash=palette.dash(),
            tooltip=[
                alt.Tooltip("label:N", title="group"),
                _x_tooltip("x", x_title, temporal),
                alt.Tooltip("value:Q", format=".4g", title="mean"),
                alt.Tooltip("runs:Q"),
            ],
        )
    )
    band = (
        alt.Chart(data)
        .mark_area(opacity=SE_OPACITY)
        .encode(x=x_enc, y=alt.Y("low:Q", title=y_title), y2="high:Q", fill=palette.fill())
    )
    return _zoomable(_layered(band, line).properties(title=_title(title, dropped, log_y), height=HEIGHT), zoom)


def batch_size_chart(frame: pd.DataFrame, title: str, palette: Palette | None = None) -> alt.LayerChart | None:
    """Final accuracy against batch size per method (the paper's Figure 1): ours as solid lines
    with +/- std error bars, the paper's as dashed lines with hollow points. Methods keep the
    dashboard's colours (optimizer = hue); LAWN is a lighter shade here, since dashes mean the paper.

    ``frame``: method, batch_size, accuracy, std, source ("ours" / "paper"); ``paper.figure1_frame``.
    """
    data = frame[np.isfinite(frame["accuracy"].to_numpy(dtype=float))]
    if data.empty:
        return None
    palette = palette if palette is not None else method_palette(data["method"])
    data = data.assign(label=data["method"])
    x = alt.X("batch_size:Q", title="batch size", scale=alt.Scale(type="log"))
    color = palette.color(title="method")
    lines = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=x,
            y=alt.Y("accuracy:Q", title="test accuracy (%)", scale=alt.Scale(zero=False)),
            color=color,
            strokeDash=alt.StrokeDash(
                "source:N", title="source", sort=["ours", "paper"], legend=alt.Legend(orient="bottom")
            ),
            tooltip=[
                "method:N",
                "source:N",
                "batch_size:Q",
                alt.Tooltip("accuracy:Q", format=".2f"),
                alt.Tooltip("std:Q", format=".2f"),
            ],
        )
        .properties(title=alt.TitleParams(title, anchor="start"))
    )
    ours = data[(data["source"] == "ours") & data["std"].notna()]
    ours = ours.assign(low=ours["accuracy"] - ours["std"], high=ours["accuracy"] + ours["std"])
    bars = alt.Chart(ours).mark_rule().encode(x=x, y="low:Q", y2="high:Q", stroke=palette.stroke())
    return _layered(lines, bars)
