"""The paper's published accuracies, and our runs' summary set beside them (the Table-2 view).

The one copy of the paper's numbers: the recipe generator (trainers/recipes/make_recipes.py),
the dashboard's Compare page and ``lawn-monitor compare --table2`` read them from here. Pure
functions over ``RunStore.summary`` frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .runinfo import is_true
from .store import SUMMARY_COLUMNS

# Table 2 of the paper (test accuracy %, VGG-19 on CIFAR, ResNet-50 on ImageNet), keyed by our
# dataset names, the paper's method names and its batch-size labels ("4k" = about 4,000).
PAPER_TABLE2: dict[str, dict[str, dict[str, float]]] = {
    "cifar10": {
        "SGD": {"256": 93.99, "4k": 93.48, "10k": 92.99},
        "SGD-LAWN": {"256": 93.96, "4k": 93.50, "10k": 93.43},
        "Adam": {"256": 93.48, "4k": 92.93, "10k": 92.63},
        "Adam-LAWN": {"256": 93.91, "4k": 93.74, "10k": 93.84},
        "AdamP": {"256": 93.75, "10k": 93.76},  # Table 1
    },
    "cifar100": {
        "SGD": {"256": 73.49, "4k": 71.68, "10k": 71.07},
        "SGD-LAWN": {"256": 73.67, "4k": 72.71, "10k": 71.80},
        "Adam": {"256": 70.84, "4k": 68.91, "10k": 68.61},
        "Adam-LAWN": {"256": 72.99, "4k": 73.12, "10k": 72.97},
        "AdamP": {"256": 72.87, "10k": 71.93},  # Table 1
    },
    "imagenet": {
        "SGD": {"256": 76.00, "16k": 74.48},
        "SGD-LAWN": {"256": 76.12, "16k": 75.56},
        "Adam": {"256": 71.16, "16k": 70.60},
        "Adam-LAWN": {"256": 76.18, "16k": 76.07},
    },
}


METHOD_ORDER = ["SGD", "SGD-LAWN", "Adam", "Adam-LAWN", "AdamW", "AdamW-LAWN", "AdamP", "AdamP-LAWN"]
TABLE_BY = ["dataset", "optimizer", "lawn", "batch_size"]  # a cell of Table 2 (with the method's LAWN flag)
_OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adamp": "AdamP"}


def method_name(optimizer, lawn) -> str:
    """The paper's name for an optimizer with or without LAWN: ``("adam", True) -> "Adam-LAWN"``."""
    base = _OPTIMIZER_NAMES.get(str(optimizer).lower(), str(optimizer))
    return f"{base}-LAWN" if is_true(lawn) else base


def batch_label(batch_size) -> str:
    """The paper's label for a batch size: 256 stays "256", 4096 and 4000 are "4k", 10240 is "10k"."""
    size = int(batch_size)
    return str(size) if size < 1000 else f"{round(size / 1000)}k"


def paper_accuracy(dataset, method: str, batch_size) -> float:
    """The paper's accuracy (%) for this cell, NaN where it has none."""
    return PAPER_TABLE2.get(str(dataset).lower(), {}).get(method, {}).get(batch_label(batch_size), float("nan"))


def _dataset_rows(summary: pd.DataFrame, dataset: str | None) -> pd.DataFrame:
    df = summary.copy()
    if "dataset" not in df.columns:
        df["dataset"] = ""
    if dataset is not None:
        df = df[df["dataset"].astype(str) == str(dataset)]
    return df


def split_keys(summary: pd.DataFrame, dataset: str | None = None) -> list[str]:
    """The config keys that split Table 2's cells for this dataset: ``RunStore.summary`` never
    averages runs that differ in more than the seed, and gives such a key its own column; here
    are those with more than one value within one (method, batch size) cell of ``dataset``."""
    df = _dataset_rows(summary, dataset)
    extra = [c for c in df.columns if c not in TABLE_BY and c not in SUMMARY_COLUMNS]
    if df.empty or not extra:
        return []
    text = df[[*TABLE_BY, *extra]].astype(str)
    counts = text.groupby(TABLE_BY)[extra].nunique().max()
    return [k for k in extra if counts[k] > 1]


def _value_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unset"  # a key some runs' configs do not have
    return f"{value:g}" if isinstance(value, float) else str(value)


def table2(summary: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """Our final accuracies per method and batch size (mean, std, stderr over seeds, in %) with the
    paper's number beside each, where it reports one for this dataset.

    ``summary`` is ``RunStore.summary("test/acc", by=["dataset", "optimizer", "lawn", "batch_size"])``
    (accuracies as fractions); ``dataset`` picks one dataset's rows (None: all). Runs of one
    method and batch size that differ in more than the seed (``split_keys``) stay apart: the
    method is named with them (``Adam · epochs=30``), so each row is one experiment.
    """
    columns = [
        "dataset",
        "method",
        "variant",
        "batch_size",
        "mean",
        "std",
        "stderr",
        "count",
        "seeds",
        "paper",
        "delta",
    ]
    if summary.empty:
        return pd.DataFrame(columns=columns)
    df = _dataset_rows(summary, dataset)
    if df.empty:
        return pd.DataFrame(columns=columns)
    split = split_keys(summary, dataset)
    base = [method_name(o, lawn) for o, lawn in zip(df["optimizer"], df["lawn"])]
    df["variant"] = [", ".join(f"{k}={_value_text(row[k])}" for k in split) for _, row in df.iterrows()]
    df["method"] = [b + (f" · {v}" if v else "") for b, v in zip(base, df["variant"])]
    if "seeds" not in df.columns:
        df["seeds"] = ""
    for col in ("mean", "std", "stderr", "min", "max"):
        df[col] = df[col].astype(float) * 100.0
    df["paper"] = [paper_accuracy(d, m, b) for d, m, b in zip(df["dataset"], base, df["batch_size"])]
    df["delta"] = df["mean"] - df["paper"]
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    df["_rank"] = pd.Series(base, index=df.index).map(rank).fillna(len(rank))
    df = df.sort_values(["dataset", "_rank", "method", "batch_size"], kind="stable")
    return df[columns].reset_index(drop=True)


def table2_grid(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's layout: one row per method, one column per batch size, cells like
    ``93.52 ± 0.11 (n=3) | paper 93.48``."""
    if table.empty:
        return pd.DataFrame()
    cells = []
    rows: Iterable[Any] = table.itertuples()  # attributes named after the columns, unknown to the stubs
    for row in rows:
        ours = f"{row.mean:.2f}" + (f" ± {row.std:.2f}" if np.isfinite(row.std) else "") + f" (n={int(row.count)})"
        paper = "" if np.isnan(row.paper) else f" | paper {row.paper:.2f}"
        cells.append(
            {
                "method": row.method,
                "batch size": batch_label(row.batch_size),
                "_size": int(row.batch_size),
                "cell": ours + paper,
            }
        )
    long = pd.DataFrame(cells)
    order = list(dict.fromkeys(long.sort_values("_size", kind="stable")["batch size"]))
    grid = long.pivot_table(index="method", columns="batch size", values="cell", aggfunc="first", sort=False)
    return grid.reindex(columns=order).rename_axis(columns=None)


def figure1_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy against batch size per method, ours and the paper's stacked (the paper's Figure 1):
    method, batch_size, accuracy, std, source ("ours" / "paper")."""
    ours = table.assign(accuracy=table["mean"], source="ours")[["method", "batch_size", "accuracy", "std", "source"]]
    paper = table.dropna(subset=["paper"]).assign(accuracy=lambda d: d["paper"], std=np.nan, source="paper")
    frame = pd.concat([ours, paper[["method", "batch_size", "accuracy", "std", "source"]]], ignore_index=True)
    frame["batch_size"] = frame["batch_size"].astype(int)
    return frame


def table2_text(summary: pd.DataFrame) -> str:
    """Table 2 as markdown, one table per dataset: a row per method (and per split, see ``table2``),
    a column per batch size, cells ``ours ± std (n) | paper``. ``summary`` as for ``table2``."""
    if summary.empty:
        return "(no finished runs)"
    datasets = sorted({str(d) for d in summary["dataset"]}) if "dataset" in summary.columns else [None]
    parts = []
    for dataset in datasets:
        grid = table2_grid(table2(summary, dataset))
        if grid.empty:
            continue
        lines = [
            f"{dataset or 'all runs'}: final test accuracy %, mean ± std over seeds (n) | the paper's",
            "",
            "| method | " + " | ".join(grid.columns) + " |",
            "|---|" + "---|" * len(grid.columns),
        ]
        for method, row in grid.iterrows():
            lines.append(f"| {method} | " + " | ".join("-" if pd.isna(c) else c for c in row) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "(no finished runs)"
