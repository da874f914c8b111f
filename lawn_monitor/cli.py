"""The ``lawn-monitor`` command: ``train``, ``sweep``, ``tune``, ``runs``, ``compare``, ``compact``, ``import``,
``export`` and ``dashboard`` (HELP below is what ``lawn-monitor --help`` prints).

``train``, ``sweep`` and ``tune`` come from the trainers (the ``trainers`` extra), which register them as
entry points of the group ``lawn_monitor.commands``: this package never imports its trainers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import warnings
from importlib.metadata import entry_points
from importlib.util import find_spec
from pathlib import Path

import pandas as pd

from . import __version__
from .schema import READ_STATUSES
from .storage import StoreBusyError

HELP = """\
lawn-monitor: training-dynamics diagnostics for PyTorch

    lawn-monitor train --dataset digits --model cnn --optimizer adam --lawn
    lawn-monitor sweep --optimizers sgd,adam --lawn both --seeds 0,1
    lawn-monitor tune --method adam-lawn --trials 20
    lawn-monitor tune --method adam-lawn --trials 20
    lawn-monitor runs --status running
    lawn-monitor compare --metric test/acc --by optimizer,lawn,batch_size
    lawn-monitor compare --table2
    lawn-monitor compact --root s3://bucket/runs
    lawn-monitor import tensorboard tb_logs/
    lawn-monitor export --to tensorboard tb_export/ --layers
    lawn-monitor dashboard --root runs --port 8501

lawn-monitor COMMAND --help shows a command's options; lawn-monitor --version its version.
train, sweep and tune come with the trainers: pip install 'lawn-monitor[trainers]'."""
STOP_SECS = 5.0  # after SIGTERM, how long `dashboard` waits for Streamlit before killing it
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
        if not store.loc.remote and os.path.lexists(store.root):
            os.scandir(store.root).close()  # a root that cannot be listed is no empty store
    except NotADirectoryError:
        print(f"lawn-monitor: error: --root {store.root} is a file: pass the run store's directory", file=sys.stderr)
        return None
    except OSError as exc:
        print(
            f"lawn-monitor: error: cannot read --root {store.root} ({exc.strerror or exc}): "
            f"check its permissions, or pass another --root",
            file=sys.stderr,
        )
        return None
    return store


def _print(df: pd.DataFrame) -> None:
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
        print(df.to_string(index=False))


RUNS_COLUMNS = ["run_id", "status", "dataset", "optimizer", "lawn", "batch_size", "seed", "progress", "test_acc"]


def _blank(fmt: str):
    """A cell formatter that leaves missing values empty."""
    return lambda v: "" if pd.isna(v) else fmt.format(v)


def _runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """``lawn-monitor runs``' table: the columns that tell runs apart, as text; tuning studies add
    which trial each run is and each study's winner, damaged runs their reason."""
    cols = [c for c in RUNS_COLUMNS if c in df.columns]
    if df["study"].notna().any():
        cols[-1:-1] = ["val_acc"]
        cols += ["study", "trial", "best"]
    if df["damage"].notna().any():
        cols.append("damage")
    df = df[cols].copy()
    formats = {
        "progress": lambda p: "" if pd.isna(p) else f"{100 * p:.0f}%",
        "test_acc": _blank("{:.4f}"),
        "val_acc": _blank("{:.4f}"),
        "study": _blank("{}"),
        "trial": _blank("{}"),
        "damage": _blank("{}"),
        "best": lambda b: "best" if b is True or b == 1 else "",
    }
    for col, fmt in formats.items():
        if col in df:
            df[col] = df[col].map(fmt)
    return df


def runs(argv: list[str]) -> int:
    parser = OneLineParser(prog="lawn-monitor runs", description="List the runs in a store.")
    parser.add_argument("--root", help="store root (default: $LAWN_MONITOR_ROOT or ./runs)")
    parser.add_argument("--status", choices=READ_STATUSES, help="only runs with this status")
    args = parser.parse_args(argv)
    store = _store(args.root)
    if store is None:
        return 2
    df = store.runs()
    if df.empty:
        where = store.root if store.loc.exists() else f"{store.root} (no such folder yet)"
        print(f"no runs in {where}: start one with: lawn-monitor train --dataset digits --model cnn")
        return 0
    if args.status:
        counts = df["status"].value_counts()
        df = df[df["status"] == args.status]
        if df.empty:
            have = ", ".join(f"{n} {status}" for status, n in counts.items())
            print(f"no {args.status} runs in {store.root} ({have})")
            return 0
    _print(_runs_table(df))
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
    return _serve(command)


def _serve(command: list[str]) -> int:
    """Run Streamlit as a child process until it ends; its exit status is ours. SIGTERM, SIGINT
    and SIGHUP are passed on to it, and a server still up STOP_SECS later (a page's script
    that does not return, say) is killed: a stopped dashboard never lingers."""
    proc = subprocess.Popen(command)
    asked: list[float] = []

    def forward(signum: int, frame: object) -> None:
        asked.append(time.monotonic())
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while proc.poll() is None:
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if asked and time.monotonic() - asked[0] > STOP_SECS:
                proc.kill()
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


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
    except OSError as exc:  # DIR cannot be created or written
        where = exc.filename or args.dir
        print(
            f"lawn-monitor export: error: cannot write {where} ({exc.strerror or exc}): pass a folder you can write",
            file=sys.stderr,
        )
        return 2
    return 1 if "exists" in outcome.values() else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _command(argv)
    except BrokenPipeError:  # `lawn-monitor --help | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except (OSError, StoreBusyError) as exc:  # storage trouble the command did not expect: one line
        print(f"lawn-monitor: error: {exc}", file=sys.stderr)
        return 1


def _command(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"lawn-monitor {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    warnings.simplefilter("default")
    builtin = {
        "runs": runs,
        "compare": compare,
        "compact": compact,
        "dashboard": dashboard,
        "import": import_,
        "export": export,
    }
    if command in builtin:
        return builtin[command](rest)
    plugin = _plugin(command)
    if plugin is not None:
        return plugin(rest)
    if command in ("train", "sweep", "tune"):
        print(
            f"lawn-monitor: error: {command!r} comes with the trainers: pip install 'lawn-monitor[trainers]'",
            file=sys.stderr,
        )
        return 2
    print(f"lawn-monitor: error: unknown command {command!r}; {USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
