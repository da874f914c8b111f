"""One colour language for every chart: a run's colour, line style and label come from its config.

* the optimizer family is the hue (SGD blue, Adam red, AdamW orange, AdamP green, LAMB purple);
* LAWN is a dashed line (on Figure 1, where dashes mean "the paper's numbers", a lighter shade);
* runs that share a method (seeds, other batch sizes) share its hue in slightly different shades,
  numbered by creation time within the method, so a run keeps its shade when others are added;
* labels are the run's name, with a few characters of its id where names collide.

Nothing depends on which runs a page shows or in which order, so a run has the same colour on
every chart of every page and after a rerun. Pure functions; no Streamlit here.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import altair as alt
import pandas as pd

from lawn_monitor.runinfo import is_true

FAMILY_COLORS = {"sgd": "#1f77b4", "adam": "#d62728", "adamw": "#ff7f0e", "adamp": "#2ca02c", "lamb": "#9467bd"}
OTHER_COLORS = ["#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]  # runs without a known optimizer
SHADES = [0.0, -0.16, 0.14, -0.28, 0.24, -0.08, 0.07]  # lightness offsets for runs sharing a method
SOLID, DASHED = [1, 0], [6, 3]
LIGHTER = 0.22  # how much lighter a LAWN method is where dashes are taken (Figure 1)
FAINT = 0.35  # opacity of runs drawn for comparison only (ended runs beside live ones)


def shade(color: str, offset: float) -> str:
    """``color`` (#rrggbb) with its HLS lightness moved by ``offset`` (clamped to stay visible)."""
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    h, light, s = colorsys.rgb_to_hls(r, g, b)
    r, g, b = colorsys.hls_to_rgb(h, min(max(light + offset, 0.15), 0.8), s)
    return "#" + "".join(f"{round(v * 255):02x}" for v in (r, g, b))


def family_color(optimizer, fallback_key: str = "") -> str:
    """The hue of an optimizer family; other runs get a fixed colour from their name's hash."""
    name = "" if optimizer is None or (isinstance(optimizer, float) and math.isnan(optimizer)) else str(optimizer)
    if name.lower() in FAMILY_COLORS:
        return FAMILY_COLORS[name.lower()]
    return OTHER_COLORS[zlib.crc32((name or fallback_key).encode()) % len(OTHER_COLORS)]


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Legend labels by run id: the run's name, or ``name ·3f2a`` (the id's last characters) where
    several runs share a name; the whole id if even that is not unique."""
    names = dict(zip(runs["run_id"], runs["name"]))
    counts = pd.Series(names).value_counts()
    labels = {r: n if counts[n] == 1 else f"{n} ·{str(r)[-4:]}" for r, n in names.items()}
    repeated = pd.Series(labels).value_counts()
    return {r: f"{names[r]} ({r})" if repeated[label] > 1 else label for r, label in labels.items()}


@dataclass(frozen=True)
class RunStyle:
    label: str
    color: str
    lawn: bool


def run_styles(runs: pd.DataFrame) -> dict[str, RunStyle]:
    """Every run's style, from the whole runs table (not the shown subset, so that it is stable)."""
    if runs.empty:
        return {}
    labels = run_labels(runs)
    optimizer = runs["optimizer"] if "optimizer" in runs.columns else pd.Series(None, index=runs.index)
    lawn = runs["lawn"].map(is_true) if "lawn" in runs.columns else pd.Series(False, index=runs.index)
    created = runs["created_at"].astype(str) if "created_at" in runs.columns else pd.Series("", index=runs.index)
    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "optimizer": optimizer.astype(object),
            "lawn": lawn,
            "created": created,
            "name": runs["name"],
        }
    )
    table["family"] = [family_color(o, n) for o, n in zip(table["optimizer"], table["name"])]
    table = table.sort_values(["created", "run_id"], kind="stable")
    table["rank"] = table.groupby(["family", "lawn"], sort=False).cumcount()
    return {
        row.run_id: RunStyle(labels[row.run_id], shade(row.family, SHADES[row.rank % len(SHADES)]), bool(row.lawn))
        for row in cast(Iterable[Any], table.itertuples())  # attributes named after the columns
    }


@dataclass(frozen=True)
class Palette:
    """The colour and dash scales for a set of labels, identical on every chart that shows them:
    one legend domain, in one order, built from all the runs (or groups) a page shows."""

    labels: tuple[str, ...]
    colors: tuple[str, ...]
    dashed: tuple[bool, ...]
    faint: tuple[bool, ...] = ()  # drawn faintly (ended runs beside live ones); empty: none

    @classmethod
    def of(cls, styles: dict[str, RunStyle], run_ids, faint=()) -> Palette:
        ids = [r for r in dict.fromkeys(run_ids) if r in styles]
        chosen = [styles[r] for r in ids]
        faint = set(faint)
        return cls(
            tuple(s.label for s in chosen),
            tuple(s.color for s in chosen),
            tuple(s.lawn for s in chosen),
            tuple(r in faint for r in ids) if faint else (),
        )

    def opacity(self) -> alt.Opacity | None:
        """Full opacity, or FAINT for the faint runs; None when no run is faint."""
        if not any(self.faint):
            return None
        return alt.Opacity(
            "label:N",
            scale=alt.Scale(domain=list(self.labels), range=[FAINT if f else 1.0 for f in self.faint]),
            legend=None,
        )

    @classmethod
    def default(cls, labels) -> Palette:
        """For labels without runs behind them: fixed colours by the label's hash, solid lines."""
        labels = tuple(dict.fromkeys(labels))
        return cls(labels, tuple(family_color(None, label) for label in labels), tuple(False for _ in labels))

    def _legend(self) -> alt.Legend:
        # Below the plot, wrapping in up to 2 columns: a half-width chart keeps its full width.
        return alt.Legend(
            title=None,
            orient="bottom",
            direction="horizontal",
            symbolType="stroke",
            symbolStrokeWidth=2.5,
            symbolSize=300,
            symbolOpacity=1,
            labelLimit=360,
            columns=max(1, min(len(self.labels), 2)),
        )

    def _scale(self) -> alt.Scale:
        return alt.Scale(domain=list(self.labels), range=list(self.colors))

    def color(self, title: str = "run") -> alt.Color:
        """Colour by ``label``, with the legend (line swatches). For a chart's main layer only."""
        return alt.Color("label:N", title=title, scale=self._scale(), legend=self._legend())

    def stroke(self) -> alt.Stroke:
        """The same colours for secondary layers' lines and rules (raw-value outlines, switch rules,
        thresholds). A separate channel without a legend: a layer that hid the colour legend would
        hide the whole chart's, and one that kept it would lend the legend its faint look."""
        return alt.Stroke("label:N", scale=self._scale(), legend=None)

    def fill(self) -> alt.Fill:
        """The same colours for secondary layers' areas and points (bands), without a legend."""
        return alt.Fill("label:N", scale=self._scale(), legend=None)

    def dash(self) -> alt.StrokeDash:
        """LAWN runs dashed; on the same field and domain as ``color``, so the two share one legend."""
        return alt.StrokeDash(
            "label:N",
            scale=alt.Scale(domain=list(self.labels), range=[DASHED if d else SOLID for d in self.dashed]),
            legend=self._legend(),
        )

    def lighter_for_lawn(self) -> Palette:
        """LAWN as a lighter shade instead of dashes (for charts whose dashes mean something else)."""
        return Palette(
            self.labels,
            tuple(shade(c, LIGHTER) if d else c for c, d in zip(self.colors, self.dashed)),
            tuple(False for _ in self.labels),
        )


def method_palette(methods) -> Palette:
    """Colours for the paper's method names (``SGD``, ``Adam-LAWN``, ...): the optimizer's hue,
    lighter with LAWN (for Figure 1, whose dashes mean the paper's numbers)."""
    labels = list(dict.fromkeys(methods))
    colors = []
    for method in labels:
        base, _, suffix = str(method).partition("-")
        color = family_color(base, str(method))
        colors.append(shade(color, LIGHTER) if suffix.upper() == "LAWN" else color)
    return Palette(tuple(labels), tuple(colors), tuple(False for _ in labels))


def group_palette(styles: dict[str, RunStyle], groups: dict[str, str]) -> Palette:
    """Colours for groups of runs (``groups``: run id -> group label; Compare's averages): a group
    whose runs share one method takes its first run's colour and dash, so "Adam-LAWN over seeds"
    looks like its runs; a group whose runs share an optimizer but not LAWN (averaged by optimizer
    alone) takes that optimizer's hue, solid; a group of mixed optimizers gets a neutral colour.
    Groups never share a colour: a later group whose colour is taken gets the next free one."""
    members: dict[str, list[RunStyle]] = {}
    for run_id, label in groups.items():
        if run_id in styles:
            members.setdefault(label, []).append(styles[run_id])
    labels: list[str] = []
    colors: list[str] = []
    dashed: list[bool] = []
    for label, chosen in sorted(members.items()):
        hues = {_hue(s.color) for s in chosen}
        if len(hues) == 1 and len({s.lawn for s in chosen}) == 1:
            color, lawn = chosen[0].color, chosen[0].lawn
        elif len(hues) == 1:
            color, lawn = _family_of(chosen[0].color), False
        else:
            color, lawn = family_color(None, label), False
        if (color, lawn) in zip(colors, dashed):
            color = next((c for c in OTHER_COLORS if c not in colors), shade(color, SHADES[len(colors) % len(SHADES)]))
        labels.append(label)
        colors.append(color)
        dashed.append(lawn)
    return Palette(tuple(labels), tuple(colors), tuple(dashed))


def _family_of(color: str) -> str:
    """The family hue a run's shade was made from (the one of FAMILY_COLORS with its hue)."""
    return next((c for c in FAMILY_COLORS.values() if _hue(c) == _hue(color)), color)


def _hue(color: str) -> float:
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return round(colorsys.rgb_to_hls(r, g, b)[0], 3)
