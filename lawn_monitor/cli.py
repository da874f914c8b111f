"""The ``lawn-monitor`` command: ``train``, ``sweep``, ``tune``, ``runs``, ``compare``, ``compact``, ``import``,
``export`` and ``dashboard``.

    lawn-monitor train --dataset digits --model cnn --optimizer adam --lawn
    lawn-monitor sweep --optimizers sgd,adam --lawn both --seeds 0,1
    lawn-monitor tune --method adam-lawn --trials 20
    lawn-monitor runs --status running
    lawn-monitor compare --metric test/acc --by optimizer,lawn,batch_size
    lawn-monitor compare --table2
    lawn-monitor compact --root s3://bucket/runs
    lawn-monitor import tensorboard tb_logs/
    lawn-monitor export --to tensorboard tb_export/ --layers
    lawn-monitor dashboard --root runs --port 8501

``train``, ``sweep`` and ``tune`` come from the trainers (the ``trainers`` extra), which register them as
entry points of the group ``lawn_monitor.commands``: this package never imports its trainers.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path

import pandas as pd

from .schema import READ_STATUSES

USAGE = (
    "usage: lawn-monitor {train,sweep,tune,runs,compare,compact,import,export,dashboard} ... "
    "(lawn-monitor COMMAND --help for its options)"
)
PLUGINS = "lawn_monitor.commands"  # entry-point group of commands other packages add (the trainers' train, sweep)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong and where to look), exit 2. The
    trainers' commands use it too."""

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
    parser = OneLineParser(prog="lawn-monitor runs", description="List the runs in a store.")
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--status", help=f"only runs with this status ({', '.join(READ_STATUSES)})")
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    df = store.runs(status=args.status)
    if df.empty:
        print(f"no runs in {store.root}: start one with `lawn-monitor train --dataset digits --model cnn`")
        return 0
    cols = [
        c
        for c in ["run_id", "status", "dataset", "optimizer", "lawn", "batch_size", "seed", "progress", "test_acc"]
        if c in df.columns
    ]
    if df["study"].notna().any():  # tuning studies: which trial each run is, and each study's winner
        cols[-1:-1] = ["val_acc"]
        cols += ["study", "trial", "best"]
    if df["damage"].notna().any():
        cols.append("damage")
    df = df[cols].copy()
    if "progress" in df:
        df["progress"] = df["progress"].map(lambda p: "" if pd.isna(p) else f"{100 * p:.0f}%")
    for acc in ("test_acc", "val_acc"):
        if acc in df:
            df[acc] = df[acc].map(lambda a: "" if pd.isna(a) else f"{a:.4f}")
    if "study" in df:
        df["study"] = df["study"].fillna("")
        df["trial"] = df["trial"].map(lambda t: "" if pd.isna(t) else str(t))
        df["best"] = df["best"].map(lambda b: "best" if b else "")
    if "damage" in df:
        df["damage"] = df["damage"].fillna("")
    _print(df)
    return 0


def compare(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="lawn-monitor compare",
        description="Group finished runs by config keys: mean, std, count of a metric's final or best value.",
    )
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--metric", default="test/acc")
    parser.add_argument("--by", default="optimizer,lawn,batch_size", help="comma-separated config keys")
    parser.add_argument("--reduce", choices=("final", "best", "min"), default="final")
    parser.add_argument(
        "--table2",
        action="store_true",
        help="the paper's Table 2 layout (test accuracy by method and batch size, per dataset, "
        "with the paper's numbers beside ours), as markdown",
    )
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    if args.table2:
        from .paper import TABLE_BY, table2_text

        print(table2_text(store.summary("test/acc", by=TABLE_BY, reduce=args.reduce)))
        return 0
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
    parser = OneLineParser(
        prog="lawn-monitor compact",
        description="Merge each ended run's Parquet files into one sorted file (faster queries). "
        "A run whose lock a live process holds (its writer, a resume, another compact) "
        "is left alone; a live writer compacts as it goes.",
    )
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    from .compact import compact_store

    runs = store.runs()
    # A damaged run's state is unknown (its writer may be live): left as it is.
    ended = runs.loc[~runs["status"].isin(["running", "damaged"]), "run_id"].tolist() if not runs.empty else []
    merged, skipped = compact_store(store.loc, ended)
    files = sum(merged.values())
    for reason in skipped.values():
        print(f"skipped: {reason}")
    print(
        f"compacted {sum(1 for n in merged.values() if n)} of {len(ended)} ended runs ({files} files merged); "
        f"left {len(runs) - len(ended) + len(skipped)} runs to the processes writing them"
    )
    return 0


def dashboard(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="lawn-monitor dashboard",
        description="Serve the dashboard (Streamlit) on this machine. It has no login: it listens on "
        "127.0.0.1 unless --host says otherwise. Other arguments go to `streamlit run`.",
    )
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="ROOT",
        help="another store root the sidebar offers (repeatable); a link can name no other",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes it to the network, with no login"
    )
    parser.add_argument("--port", type=int, default=8501)
    args, streamlit_args = parser.parse_known_args(argv)
    for needed in ("streamlit", "altair"):
        if find_spec(needed) is None:
            print(
                f"lawn-monitor dashboard: error: {needed} is missing: pip install 'lawn-monitor[dashboard]'",
                file=sys.stderr,
            )
            return 2
    if args.root:
        os.environ["LAWN_MONITOR_ROOT"] = args.root
    if args.allow_root:
        os.environ["LAWN_MONITOR_ALLOWED_ROOTS"] = ",".join(args.allow_root)
    script = Path(__file__).resolve().parent / "dashboard" / "streamlit_app.py"  # run by path, not imported
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--browser.gatherUsageStats",
        "false",
        # A failing page shows a short message; the traceback, with its server paths, goes to the log.
        "--client.showErrorDetails",
        "none",
        *streamlit_args,
    ]
    os.execv(sys.executable, command)  # Streamlit in this process: Ctrl-C and exit status are its own


def _plugin(command: str):
    """The ``main(argv) -> int`` another installed package registered for ``command``, or None."""
    for ep in entry_points(group=PLUGINS, name=command):
        try:
            return ep.load()
        except ImportError as e:
            sys.exit(f"lawn-monitor {command}: error: {e.name or e} is missing: pip install 'lawn-monitor[trainers]'")
    return None


def import_(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="lawn-monitor import",
        description="Import another tracker's logs as finished runs. Every folder under LOGDIR that "
        "holds TensorBoard event files becomes one run; importing it again skips it.",
    )
    parser.add_argument("source", choices=("tensorboard",), help="the format of LOGDIR")
    parser.add_argument("logdir", metavar="LOGDIR", help="the folder you give `tensorboard --logdir`")
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--name", help="run name (with several runs under LOGDIR: NAME/<folder>); default: the folder")
    parser.add_argument("--force", action="store_true", help="replace runs imported before")
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    from .integrations.tensorboard import TensorBoardError, import_tensorboard

    try:
        outcome = import_tensorboard(args.logdir, store.loc.url, name=args.name, force=args.force)
    except TensorBoardError as exc:
        print(f"lawn-monitor import: error: {exc}", file=sys.stderr)
        return 2
    return 1 if "changed" in outcome.values() else 0


def export(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="lawn-monitor export",
        description="Write runs as another tracker's logs: TensorBoard event files in DIR/<run_id>/, "
        "whole-model scalars with their steps and wall times.",
    )
    parser.add_argument("--to", required=True, choices=("tensorboard",), help="the format to write")
    parser.add_argument("dir", metavar="DIR", help="output folder (point `tensorboard --logdir` at it)")
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to export (default: all)")
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--layers", action="store_true", help="also per-layer scalars, as metric/layer tags")
    parser.add_argument("--force", action="store_true", help="replace event files exported before")
    args = parser.parse_intermixed_args(argv)  # run ids may follow --root
    store = _store(args.root)
    if store is None:
        return 2
    from .integrations.tensorboard import TensorBoardError, export_tensorboard

    try:
        outcome = export_tensorboard(store, args.dir, args.run_ids, layers=args.layers, force=args.force)
    except TensorBoardError as exc:
        print(f"lawn-monitor export: error: {exc}", file=sys.stderr)
        return 2
    return 1 if "exists" in outcome.values() else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    warnings.simplefilter("default")
    if command == "runs":
        return runs(rest)
    if command == "compare":
        return compare(rest)
    if command == "compact":
        return compact(rest)
    if command == "dashboard":
        return dashboard(rest)
    plugin = _plugin(command)
    if plugin is not None:
        return plugin(rest)
    if command in ("train", "sweep", "tune"):
        print(
            f"lawn-monitor: error: {command!r} comes with the trainers: pip install 'lawn-monitor[trainers]'",
            file=sys.stderr,
        )
        return 2
    if command == "import":
        return import_(rest)
    if command == "export":
        return export(rest)
    print(f"lawn-monitor: error: unknown command {command!r}; {USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
