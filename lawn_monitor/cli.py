"""The ``lawn-monitor`` command: ``train``, ``sweep``, ``runs``, ``compare`` and ``compact``.

    lawn-monitor train --dataset digits --model cnn --optimizer adam --lawn
    lawn-monitor sweep --optimizers sgd,adam --lawn both --seeds 0,1
    lawn-monitor runs --status running
    lawn-monitor compare --metric test/acc --by optimizer,lawn,batch_size
    lawn-monitor compact --root s3://bucket/runs
"""
from __future__ import annotations

import argparse
import sys
import warnings

import pandas as pd

USAGE = "usage: lawn-monitor {train,sweep,runs,compare,compact} ... (lawn-monitor COMMAND --help for its options)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _store(root: str | None):
    """The store at ``root``, or None (after one line on stderr) when root is not a directory."""
    from .store import RunStore

    store = RunStore(root)
    try:
        store.loc.check_root()
    except NotADirectoryError:
        print(f"lawn-monitor: error: --root {store.root} is a file: pass the run store's directory", file=sys.stderr)
        return None
    return store


def _print(df: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
        print(df.to_string(index=False))


def runs(argv: list[str]) -> int:
    parser = _Parser(prog="lawn-monitor runs", description="List the runs in a store.")
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--status", help="only runs with this status (running, finished, failed, diverged, interrupted, stale)")
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    df = store.runs(status=args.status)
    if df.empty:
        print(f"no runs in {store.root}: start one with `lawn-monitor train --dataset digits --model cnn`")
        return 0
    cols = [c for c in ["run_id", "status", "dataset", "optimizer", "lawn", "batch_size", "seed", "progress", "test_acc"] if c in df.columns]
    if df["damage"].notna().any():
        cols.append("damage")
    df = df[cols].copy()
    if "progress" in df:
        df["progress"] = df["progress"].map(lambda p: "" if pd.isna(p) else f"{100 * p:.0f}%")
    if "test_acc" in df:
        df["test_acc"] = df["test_acc"].map(lambda a: "" if pd.isna(a) else f"{a:.4f}")
    if "damage" in df:
        df["damage"] = df["damage"].fillna("")
    _print(df)
    return 0


def compare(argv: list[str]) -> int:
    parser = _Parser(prog="lawn-monitor compare",
                     description="Group finished runs by config keys: mean, std, count of a metric's final or best value.")
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--metric", default="test/acc")
    parser.add_argument("--by", default="optimizer,lawn,batch_size", help="comma-separated config keys")
    parser.add_argument("--reduce", choices=("final", "best", "min"), default="final")
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    by = [k.strip() for k in args.by.split(",") if k.strip()]  # "--by ," is no key: one group
    table = store.summary(args.metric, by=by, reduce=args.reduce)
    if table.empty:
        from .store import RUN_COLUMNS

        finished = store.runs(status="finished")
        keys = sorted(c for c in finished.columns if c not in RUN_COLUMNS and c not in ("test_acc", "best_test_acc"))
        unknown = [k for k in by if k not in keys]
        if unknown and keys:
            print(f"no finished run has config key {', '.join(map(repr, unknown))}: --by takes {', '.join(keys)}")
        else:
            print("no finished runs with those config keys and that metric")
        return 0
    _print(table)
    return 0


def compact(argv: list[str]) -> int:
    parser = _Parser(prog="lawn-monitor compact",
                     description="Merge each ended run's Parquet files into one sorted file (faster queries). "
                                 "Runs still being written are left to their own writer, which compacts as it goes.")
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    from .compact import compact_store

    runs = store.runs()
    # A damaged run's state is unknown (its writer may be live): left as it is.
    ended = runs.loc[~runs["status"].isin(["running", "damaged"]), "run_id"].tolist() if not runs.empty else []
    merged = compact_store(store.loc, ended)
    files = sum(merged.values())
    print(f"compacted {sum(1 for n in merged.values() if n)} of {len(ended)} ended runs ({files} files merged); "
          f"left {len(runs) - len(ended)} running runs to their writers")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    warnings.simplefilter("default")
    if command == "train":
        from trainers.train import main as train_main

        return train_main(rest)
    if command == "sweep":
        from trainers.sweep import main as sweep_main

        return sweep_main(rest)
    if command == "runs":
        return runs(rest)
    if command == "compare":
        return compare(rest)
    if command == "compact":
        return compact(rest)
    print(f"lawn-monitor: error: unknown command {command!r}; {USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
