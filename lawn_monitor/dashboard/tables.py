"""Pure helpers that shape ``RunStore`` frames for the pages: filters, progress and ETA, grouping.

Nothing here touches Streamlit; tests/test_charts.py checks them on hand-made frames.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from lawn_monitor.runinfo import is_true
from lawn_monitor.schema import READ_STATUSES

# Config keys offered as filters and as group-by keys, in this order, where the runs have them.
CONFIG_KEYS = ["dataset", "model", "optimizer", "lawn", "batch_size", "lr", "free_epochs", "epochs", "seed"]
STATUSES = list(READ_STATUSES)
BANDS = {"std": "mean ± std", "stderr": "mean ± standard error", "minmax": "min to max"}


def as_text(values: pd.Series) -> pd.Series:
    """Config values as the URL carries them: 256 (not 256.0), True, adam; missing is ""."""

    def one(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    return values.map(one)


def filter_options(runs: pd.DataFrame) -> dict[str, list[str]]:
    """For each config key the runs have with more than one value, its values (as text, sorted)."""
    options = {}
    for key in CONFIG_KEYS:
        if key in runs.columns:
            values = sorted(set(as_text(runs[key])) - {""}, key=_natural)
            if len(values) > 1:
                options[key] = values
    return options


def _natural(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def filter_runs(runs: pd.DataFrame, status: list[str], config: dict[str, list[str]]) -> pd.DataFrame:
    """The runs whose status is in ``status`` and whose config values are in ``config[key]``
    (empty lists mean no filter; values compared as text, as they come from the URL)."""
    keep = pd.Series(True, index=runs.index)
    if status:
        keep &= runs["status"].isin(status)
    for key, wanted in config.items():
        if wanted:
            column = as_text(runs[key]) if key in runs.columns else pd.Series("", index=runs.index)
            keep &= column.isin(wanted)
    return runs[keep]


def _seconds(iso) -> float:
    try:
        then = datetime.fromisoformat(str(iso))
    except ValueError:
        return float("nan")
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return then.timestamp()


def eta_seconds(info: dict, now: float | None = None) -> float | None:
    """Seconds left for a run at its mean pace so far (run.json: step, total_steps, created_at,
    heartbeat_at); None while unknown (no total, no step yet)."""
    step, total = info.get("step") or 0, info.get("total_steps")
    if not total or step <= 0:
        return None
    if step >= total:
        return 0.0
    elapsed = _seconds(info.get("heartbeat_at")) - _seconds(info.get("created_at"))
    if not np.isfinite(elapsed) or elapsed <= 0:
        return None
    return (total - step) * elapsed / step


def duration(seconds: float | None) -> str:
    """``95 -> "1 min 35 s"``, ``7300 -> "2 h 1 min"``; "unknown" for None."""
    if seconds is None or not np.isfinite(seconds):
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def progress_text(label: str, info: dict, now: float | None = None) -> str:
    """The line above a live run's progress bar: ``adam-lawn: step 1,200 / 6,000 (20%), ETA 4 min 2 s``."""
    step, total = info.get("step") or 0, info.get("total_steps")
    if not total:
        return f"{label}: step {step:,}"
    if info.get("activity"):  # what the writer is doing past its steps, e.g. "measuring curvature"
        return f"{label}: step {step:,} / {total:,} ({min(step / total, 1):.0%}), {info['activity']}"
    if step >= total:
        return f"{label}: step {step:,} / {total:,} (100%), done"
    return f"{label}: step {step:,} / {total:,} ({step / total:.0%}), ETA {duration(eta_seconds(info, now))}"


def group_labels(runs: pd.DataFrame, by: list[str], names: dict[str, str]) -> dict[str, str]:
    """Each run's group label: ``optimizer=adam, lawn=True`` for ``by=["optimizer", "lawn"]``; with
    no keys every run is its own group, labelled by ``names``."""
    if not by:
        return dict(names)
    text = {key: as_text(runs[key]) if key in runs.columns else pd.Series("", index=runs.index) for key in by}
    return {run_id: ", ".join(f"{key}={text[key].iloc[i]}" for key in by) for i, run_id in enumerate(runs["run_id"])}


def aggregate(df: pd.DataFrame, groups: dict[str, str], band: str, bins: int = 1000) -> pd.DataFrame:
    """Average runs of the same group: ``df`` (run_id, x, value; e.g. ``RunStore.series``) ->
    label, x, value (mean over the group's runs), low, high (the ``band``), runs (how many).

    Runs are put on a shared grid of ``bins`` equal x intervals per group, each run keeping its last
    value in each interval, so seeds logged at the same steps line up exactly and runs on a time
    axis still average sensibly. A group of one run has no spread: its band is the line itself.
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    columns = ["label", "x", "value", "low", "high", "runs"]
    data = df[np.isfinite(df["value"].to_numpy(dtype=float))].copy()
    data["label"] = data["run_id"].map(groups)
    data = data.dropna(subset=["label", "x"])
    if data.empty:
        return pd.DataFrame(columns=columns)
    parts = []
    for label, group in data.groupby("label", sort=True):
        lo, hi = group["x"].min(), group["x"].max()
        width = (hi - lo) / bins if hi > lo else 1.0
        group = group.assign(bin=np.minimum((group["x"] - lo) // width, bins - 1))
        per_run = group.sort_values("x").groupby(["run_id", "bin"]).agg(x=("x", "last"), value=("value", "last"))
        cell = per_run.groupby("bin")
        out = cell.agg(
            x=("x", "mean"),
            value=("value", "mean"),
            std=("value", "std"),
            runs=("value", "count"),
            min=("value", "min"),
            max=("value", "max"),
        ).reset_index(drop=True)
        spread = out["std"].fillna(0.0)
        if band == "stderr":
            spread = spread / np.sqrt(out["runs"])
        if band == "minmax":
            out["low"], out["high"] = out["min"], out["max"]
        else:
            out["low"], out["high"] = out["value"] - spread, out["value"] + spread
        parts.append(out.assign(label=label))
    return pd.concat(parts, ignore_index=True)[columns]


def relative_to(df: pd.DataFrame, step: int) -> pd.DataFrame:
    """Each layer's values over its value at ``step`` (``df``: layer, step, value, as
    ``RunStore.layers`` returns; the first bucket at or after ``step``, or the last one if the run
    ended before it): growth since that step, e.g. since LAWN's switch, where a constrained layer
    stays at exactly 1."""
    if df.empty:
        return df
    ordered = df.sort_values("step")
    after = ordered[ordered["step"] >= step]
    base = after.groupby("layer")["value"].first() if not after.empty else ordered.groupby("layer")["value"].last()
    return df.assign(value=df["value"] / df["layer"].map(base))


ADAM_FAMILY = ("adam", "adamw", "adamp", "lamb")


def sharpness_vs_threshold(
    sharp: pd.DataFrame, precond: pd.DataFrame, threshold: pd.DataFrame, optimizers: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each run's sharpness beside the stability line that applies to it (frames: run_id, label,
    step, value, from ``RunStore.series``; ``optimizers``: run id -> optimizer name, where known).

    The line ``sharpness_threshold`` is (2 + 2 beta1) / ((1 - beta1) lr) for the Adam family, a
    bound on the *preconditioned* sharpness: those runs show ``sharpness_precond`` against it
    (``shown`` = "P⁻¹H"). Other runs show ``sharpness`` against theirs ("H"). An Adam-family run
    without preconditioned values (an optimizer whose second moments the probe cannot read) shows
    its plain sharpness with no line ("H, no line"). Labels stay the runs' own, so that each run
    keeps its colour. Returns (values, lines) for ``threshold_chart``.
    """
    values, lines = [], []
    with_precond = set(precond["run_id"])
    for run_id in dict.fromkeys([*sharp["run_id"], *precond["run_id"]]):
        rows = precond[precond["run_id"] == run_id] if run_id in with_precond else sharp[sharp["run_id"] == run_id]
        if run_id not in with_precond and str(optimizers.get(run_id, "")).lower() in ADAM_FAMILY:
            values.append(rows.assign(shown="H, no line"))
            continue
        values.append(rows.assign(shown="P⁻¹H" if run_id in with_precond else "H"))
        lines.append(threshold[threshold["run_id"] == run_id])
    columns = ["run_id", "label", "step", "value", "shown"]
    empty = pd.DataFrame(columns=columns)
    return (
        pd.concat(values, ignore_index=True) if values else empty,
        pd.concat(lines, ignore_index=True) if lines else empty,
    )


def default_pair(runs: pd.DataFrame, selected: list[str]) -> tuple[str, str]:
    """The two runs Weight adaptivity sets side by side by default: the first selected LAWN run (an
    Adam-family one if any) and its own baseline (the selected run without LAWN of the same
    optimizer, else of any), so that the heatmaps show what LAWN changes; without a LAWN run, the
    first two selected."""
    config = runs.set_index("run_id")
    lawn = config["lawn"].map(is_true) if "lawn" in config.columns else pd.Series(False, index=config.index)
    optimizer = config["optimizer"].astype(str) if "optimizer" in config.columns else pd.Series("", index=config.index)
    chosen = [r for r in selected if r in config.index]
    # An Adam-family LAWN run first: the page's reading (LAWN restores what Adam loses) is about it.
    first = next((r for r in chosen if lawn[r] and optimizer[r].lower() in ADAM_FAMILY), None)
    first = first or next((r for r in chosen if lawn[r]), None)
    if first is None:
        return selected[0], selected[1] if len(selected) > 1 else selected[0]
    plain = [r for r in chosen if not lawn[r]]
    same = [r for r in plain if optimizer[r] == optimizer[first]]
    return first, (same or plain or [r for r in chosen if r != first] or [first])[0]


def runs_dataset(runs: pd.DataFrame, run_ids: list[str]) -> str:
    """The data set most of these runs trained on ("" when none says): Table 2's default."""
    if "dataset" not in runs.columns:
        return ""
    names = as_text(runs.loc[runs["run_id"].isin(run_ids), "dataset"])
    names = names[names != ""]
    return str(names.value_counts().index[0]) if not names.empty else ""


def mark_winning_trials(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of tuning studies (``study`` and ``trial`` columns, from ``lawn-monitor tune``): the
    trial as text, starred for each study's winner: the store's ``best`` column (the finished run
    with the highest final validation accuracy), never a test accuracy; runs without these
    columns come back unchanged."""
    if "study" not in runs.columns or "trial" not in runs.columns:
        return runs
    won = runs["best"].fillna(False).astype(bool) if "best" in runs.columns else pd.Series(False, index=runs.index)
    best = set(runs.index[won])
    trial = as_text(runs["trial"])
    return runs.assign(trial=[f"{t} ★" if i in best and t else t for i, t in zip(runs.index, trial)])
