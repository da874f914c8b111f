"""Print a sweep's results as the paper's Table 2 lays them out: a markdown table of final test
accuracy, mean +/- std over seeds, one row per method and one column per data set x batch size.

    python -m trainers.report --root runs/repro

The numbers come from ``RunStore.summary`` (finished runs only); nothing is typed in by hand.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from lawn_monitor import RunStore

METHODS = [("sgd", False, "SGD"), ("sgd", True, "SGD-LAWN"), ("adam", False, "Adam"), ("adam", True, "Adam-LAWN")]


BY = ["dataset", "optimizer", "lawn", "batch_size"]
STATS = {"mean", "std", "stderr", "count", "min", "max", "seeds"}


def table(store: RunStore, metric: str = "test/acc", reduce: str = "final") -> str:
    summary = store.summary(metric, by=BY, reduce=reduce)
    if summary.empty:
        return "(no finished runs)"
    summary["lawn"] = summary["lawn"].astype(bool)
    # Keys that split a cell (runs that differ in more than the seed are never averaged) get
    # a row per value: "Adam (epochs=30)".
    split = [c for c in summary.columns if c not in BY and c not in STATS]
    summary["variant"] = [", ".join(f"{k}={row[k]}" for k in split) for _, row in summary.iterrows()]
    columns = sorted({(d, int(b)) for d, b in zip(summary["dataset"], summary["batch_size"])})
    header = "| method | " + " | ".join(f"{d} {b}" for d, b in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for optimizer, lawn, label in METHODS:
        mine = summary[(summary["optimizer"] == optimizer) & (summary["lawn"] == lawn)]
        for variant in sorted(set(mine["variant"])) or [""]:
            cells = []
            for dataset, batch in columns:
                row = mine[(mine["dataset"] == dataset) & (mine["batch_size"] == batch) & (mine["variant"] == variant)]
                if row.empty:
                    cells.append("-")
                    continue
                r = row.iloc[0]
                std = 0.0 if pd.isna(r["std"]) else r["std"]
                cells.append(f"{100 * r['mean']:.2f} ± {100 * std:.2f} (n={int(r['count'])})")
            lines.append(f"| {label}{f' ({variant})' if variant else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--metric", default="test/acc")
    parser.add_argument("--reduce", choices=("final", "best"), default="final")
    args = parser.parse_args(argv)
    print(table(RunStore(args.root), args.metric, args.reduce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
