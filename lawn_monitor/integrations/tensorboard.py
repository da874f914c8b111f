"""TensorBoard in and out: import event files as finished runs of the store, export runs as
event files.

    lawn-monitor import tensorboard LOGDIR [--root ROOT] [--name NAME] [--force]
    lawn-monitor export --to tensorboard DIR [--root ROOT] [--layers] [--force] [RUN_ID ...]

Import: every folder under LOGDIR that holds event files (``*tfevents*``) is one run (the
folders ``tensorboard --logdir LOGDIR`` lists as runs). Its scalars (``add_scalar``, old and new
style; tbparse reads them) are written through the normal writer (``ParquetSink``): whole-model
rows (layer ``""``) with the event's step and wall time; ``epoch`` is the latest value of an
``epoch`` tag at or before the step, NaN without one. run.json: status ``finished``, name from the
folder (its path under LOGDIR), config ``{source: tensorboard, logdir, run_dir}``, created and
ended at the first and last event.

Tag names are kept as metric names, except these (case-insensitive), which become the project's:

    loss                                              -> train/loss
    acc, accuracy                                     -> train/acc
    <split><sep><q> or <q><sep><split>, sep / _ -     -> <split>/<q>  (lawn_monitor.names)
    lr, learning_rate, train/lr, lr-<Optimizer>       -> lr
    epoch, train/epoch                                -> epoch
    <per-layer metric>/<layer>, e.g. grad_norm/fc.weight -> that metric at that layer

where the split rule is the project's one naming rule (``lawn_monitor.names``): ``train``
(``training``), ``val`` (``valid``, ``validation``, ``eval``, ``dev``: data held out of
training) or ``test``, and q is ``loss``, ``acc`` (``accuracy``) or ``acc5``: ``Loss/train`` ->
``train/loss``, ``val_acc`` and ``eval/accuracy`` -> ``val/acc``. A name is only mapped where it
is unambiguous: when two tags of a run would map to one name, both keep their own. The last rule
reads back what ``export --layers`` writes. run.json keeps each renamed tag's original name
(``tensorboard_tags``), and export writes it back under that name: a round trip gives back the
tags it was given (``train/learning_rate`` stays ``train/learning_rate``), with every value, also
several at one step.

Importing the same folder again is a no-op: its run id comes from the folder's absolute path
(``tb-<name>-<hash>``), and run.json keeps a fingerprint of its event files (names and sizes:
event files only grow). An unchanged run is skipped; a changed one is skipped with a note to
pass ``force``, which replaces it; an import that died half-way is replaced.

Export writes each run's whole-model scalars (and with ``layers``, per-layer ones as
``metric/layer``) with their steps and wall times as an event file in ``DIR/<run_id>/``.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..metrics import BY_NAME, WHOLE
from ..names import split_metric
from ..runinfo import check_run_info
from ..schema import SCHEMA
from ..sink import ParquetSink, slug
from ..storage import RUN_JSON_LIMIT, Location, now_iso

EVENT_FILES = "*tfevents*"
PLAIN = {
    "loss": "train/loss",
    "acc": "train/acc",
    "accuracy": "train/acc",
    "lr": "lr",
    "learning_rate": "lr",
    "learning-rate": "lr",
    "train/lr": "lr",
    "train/learning_rate": "lr",
    "epoch": "epoch",
    "train/epoch": "epoch",
}
PER_LAYER = {m.name for m in BY_NAME.values() if m.layers != WHOLE}


class TensorBoardError(Exception):
    """A logdir or export that cannot be done; the message says what to do."""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


# --- tag names ---------------------------------------------------------------------------------


def project_name(tag: str) -> tuple[str, str]:
    """The (metric, layer) a tag maps to by the rules above, ignoring other tags of the run."""
    low = tag.lower()
    if low in PLAIN:
        return PLAIN[low], ""
    if re.fullmatch(r"lr-[a-z0-9_]+", low):  # Lightning's LearningRateMonitor, one param group
        return "lr", ""
    split = split_metric(tag)
    if split is not None:
        return split, ""
    metric, _, layer = tag.partition("/")
    if metric in PER_LAYER and layer:
        return metric, layer
    return tag, ""


def tag_names(tags: Iterable[str]) -> dict[str, tuple[str, str]]:
    """tag -> (metric, layer) for one run's tags: the mapped name where no other tag of the run
    maps to the same one, else the tag itself at layer ``""``."""
    mapped = {tag: project_name(tag) for tag in tags}
    counts: dict[tuple[str, str], int] = {}
    for target in mapped.values():
        counts[target] = counts.get(target, 0) + 1
    return {tag: target if counts[target] == 1 else (tag, "") for tag, target in mapped.items()}


# --- reading event files ------------------------------------------------------------------------


def find_runs(logdir: Path) -> dict[Path, list[Path]]:
    """Event files grouped by their folder (one run each), in path order."""
    runs: dict[Path, list[Path]] = {}
    for path in sorted(logdir.rglob(EVENT_FILES)):
        if path.is_file():
            runs.setdefault(path.parent, []).append(path)
    return runs


def read_scalars(files: list[Path]) -> pd.DataFrame:
    """The scalars in these event files: columns tag, step, value, wall_time. Scalars written as
    tensors (``new_style``, TF2's ``tf.summary.scalar``) count; other tensors do not."""
    try:
        from tbparse import SummaryReader
    except ImportError:
        raise TensorBoardError("reading event files needs tbparse: pip install tbparse tensorboard") from None
    frames = []
    for path in files:
        with warnings.catch_warnings():  # tbparse's own use of pandas: not the user's to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            reader = SummaryReader(str(path), extra_columns={"wall_time"}, event_types={"scalars", "tensors"})
            found = (reader.scalars, reader.tensors)
        for df in found:
            if df.empty:
                continue
            scalar = df["value"].map(lambda v: np.ndim(v) == 0 and np.asarray(v).dtype.kind in "biuf")
            frames.append(df.loc[scalar, ["tag", "step", "value", "wall_time"]])
    if not frames:
        return pd.DataFrame(
            {
                "tag": pd.Series(dtype=object),
                "step": pd.Series(dtype="int64"),
                "value": pd.Series(dtype="float64"),
                "wall_time": pd.Series(dtype="float64"),
            }
        )
    df = pd.concat(frames, ignore_index=True)
    return df.astype({"step": "int64", "value": "float64", "wall_time": "float64"})


def fingerprint(files: list[Path]) -> str:
    """Names and sizes of a run's event files (they are only ever appended to)."""
    lines = "\n".join(f"{p.name} {p.stat().st_size}" for p in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def run_id_for(run_dir: Path, name: str) -> str:
    """The same folder always gets the same id (so a second import is recognized)."""
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return f"tb-{slug(name)}-{digest}"


def export_tag(metric: str, layer: str) -> str:
    """The tag export writes for a (metric, layer) when the run has no original tag for it."""
    return metric if not layer else f"{metric}/{layer}"


def renamed_tags(scalars: pd.DataFrame) -> dict[str, str]:
    """Export tag -> original tag, for the tags an import renames (kept in run.json so that
    export gives each its own name back)."""
    names = tag_names(scalars["tag"].unique())
    return {export_tag(*target): tag for tag, target in names.items() if export_tag(*target) != tag}


def to_table(run_id: str, scalars: pd.DataFrame) -> tuple[pa.Table, list[str]]:
    """The run's rows in the store's schema, and its layers in first-seen order."""
    names = tag_names(scalars["tag"].unique())
    metric = scalars["tag"].map(lambda t: names[t][0])
    layer = scalars["tag"].map(lambda t: names[t][1])
    epoch = np.full(len(scalars), math.nan)
    is_epoch = ((metric == "epoch") & (layer == "")).to_numpy()
    if is_epoch.any():
        known = scalars[is_epoch].sort_values(["step", "wall_time"]).drop_duplicates("step", keep="last")
        at = np.searchsorted(known["step"].to_numpy(), scalars["step"].to_numpy(), side="right") - 1
        epoch = np.where(at >= 0, known["value"].to_numpy()[np.maximum(at, 0)], math.nan)
    n = len(scalars)
    table = pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "step": pa.array(scalars["step"].to_numpy(), pa.int64()),
            "epoch": pa.array(epoch, pa.float64()),
            "wall_time": pa.array(scalars["wall_time"].to_numpy(), pa.float64()),
            "layer": pa.array(layer.tolist(), pa.string()),
            "metric": pa.array(metric.tolist(), pa.string()),
            "value": pa.array(scalars["value"].to_numpy(), pa.float64()),
        },
        schema=SCHEMA,
    )
    return table, [x for x in dict.fromkeys(layer) if x]


# --- import -------------------------------------------------------------------------------------


def _remove_run(loc: Location, run_id: str) -> None:
    """Delete a run: run.json first, so that no reader lists a run whose files are going."""
    loc.remove(f"{run_id}/run.json")
    for name, _ in loc.listdir(f"{run_id}/metrics"):
        loc.remove(f"{run_id}/metrics/{name}")


def _read_info(loc: Location, run_id: str) -> dict | None:
    """A run's run.json as a dict, or None where it is missing or damaged (never raises)."""
    try:
        found = check_run_info(loc.read_bytes(f"{run_id}/run.json", limit=RUN_JSON_LIMIT))
    except (OSError, ValueError):
        return None
    return None if found.damage else found.info


def _find_event_runs(logdir: Path) -> dict[Path, list[Path]]:
    """find_runs, raising TensorBoardError when ``logdir`` is no folder or holds no event files."""
    if not logdir.is_dir():
        raise TensorBoardError(f"{logdir} is not a folder: pass the folder you give `tensorboard --logdir`")
    runs = find_runs(logdir)
    if not runs:
        raise TensorBoardError(
            f"no TensorBoard event files (*tfevents*) under {logdir}: pass the folder you give `tensorboard --logdir`"
        )
    return runs


def _write_run(loc: Location, run_id: str, scalars: pd.DataFrame, name: str, config: dict, content: str) -> pa.Table:
    """Write a run's scalars as a finished run (run.json's times: its first and last events); its rows."""
    table, layers = to_table(run_id, scalars)
    last_step = int(scalars["step"].max())
    sink = ParquetSink(
        loc,
        run_id,
        {
            "name": name,
            "created_at": _iso(float(scalars["wall_time"].min())),
            "config": config,
            "env": {},
            "step": last_step,
            "total_steps": last_step,
            "steps_per_epoch": None,
            "layers": layers,
            "fingerprint": content,
            "tensorboard_tags": renamed_tags(scalars),
            "imported_at": now_iso(),
        },
    )
    sink.write(table)
    sink.close("finished")
    sink.info["ended_at"] = _iso(float(scalars["wall_time"].max()))  # when the run ended, not the import
    sink.write_info()
    return table


def _import_run(
    loc: Location,
    run_id: str,
    run_dir: Path,
    files: list[Path],
    name: str,
    config: dict,
    force: bool,
    echo: Callable[[str], None],
) -> str | None:
    """Import one run folder as ``run_id``: its outcome (see import_tensorboard), or None where its
    event files hold no readable scalars."""
    content = fingerprint(files)
    old = _read_info(loc, run_id)
    replacing = old is not None or bool(loc.listdir(f"{run_id}/metrics"))  # run.json unreadable: files stay
    if old is not None and not force and old.get("status") == "finished":
        same = old.get("fingerprint") == content
        echo(
            f"skipped {run_dir}: already imported as {run_id}"
            + ("" if same else " and its event files have changed since; --force replaces it")
        )
        return "unchanged" if same else "changed"
    scalars = read_scalars(files)
    if scalars.empty:
        echo(f"skipped {run_dir}: no readable scalars in its {len(files)} event file(s)")
        return None
    if replacing:
        _remove_run(loc, run_id)
    table = _write_run(loc, run_id, scalars, name, config, content)
    outcome = "replaced" if replacing else "imported"
    echo(
        f"{outcome} {run_dir} as {run_id}: {table.num_rows} values of "
        f"{len(scalars['tag'].unique())} tags, steps {int(scalars['step'].min())}-{int(scalars['step'].max())}"
    )
    return outcome


def import_tensorboard(
    logdir: str | Path, root, name: str | None = None, force: bool = False, echo: Callable[[str], None] = print
) -> dict[str, str]:
    """Import every run under ``logdir`` into the store at ``root``; one line per run to ``echo``.

    Returns run id -> ``imported``, ``replaced``, ``unchanged`` (skipped) or ``changed``
    (skipped: its event files changed since it was imported; ``force`` replaces it).
    Raises TensorBoardError when nothing can be imported.
    """
    logdir = Path(logdir)
    runs = _find_event_runs(logdir)
    loc = Location(root)
    loc.check_root()
    outcome: dict[str, str] = {}
    empty = []
    for run_dir, files in runs.items():
        rel = run_dir.relative_to(logdir).as_posix()
        own = logdir.resolve().name if rel == "." else rel
        run_name = own if name is None else name if len(runs) == 1 else f"{name}/{own}"
        run_id = run_id_for(run_dir, own)
        config = {"source": "tensorboard", "logdir": str(logdir.resolve()), "run_dir": rel}
        done = _import_run(loc, run_id, run_dir, files, run_name, config, force, echo)
        if done is None:
            empty.append(run_dir)
        else:
            outcome[run_id] = done
    if len(empty) == len(runs):
        raise TensorBoardError(
            f"the event files under {logdir} hold no readable scalars (damaged, or only "
            "images/histograms/text): nothing imported"
        )
    return outcome


# --- export -------------------------------------------------------------------------------------


def export_tensorboard(
    store,
    out_dir: str | Path,
    run_ids: list[str] | None = None,
    layers: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Write runs of ``store`` (a RunStore; default all runs) as event files in
    ``out_dir/<run_id>/``. Returns run id -> ``exported``, ``exists`` (skipped: the folder already
    holds event files; ``force`` replaces them) or ``empty`` (no rows to write)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardError("writing event files needs tensorboard: pip install tensorboard") from None
    known = store.run_ids()
    ids = known if not run_ids else list(run_ids)
    missing = [r for r in ids if r not in known]
    if missing:
        raise TensorBoardError(
            f"no run {missing[0]!r} under {store.root}: `lawn-monitor runs --root {store.root}` lists them"
        )
    if not ids:
        raise TensorBoardError(f"no runs under {store.root}: nothing to export (check --root)")
    out_dir = Path(out_dir)
    outcome: dict[str, str] = {}
    for run_id in ids:
        target = out_dir / run_id
        existing = sorted(target.glob(EVENT_FILES)) if target.is_dir() else []
        if existing and not force:
            outcome[run_id] = "exists"
            echo(f"skipped {run_id}: {target} already holds event files; --force replaces them")
            continue
        rows = store.rows(run_id, per_layer=layers)
        if rows.empty:
            outcome[run_id] = "empty"
            echo(f"skipped {run_id}: no rows to export")
            continue
        for path in existing:
            path.unlink()
        tags = np.where(rows["layer"] == "", rows["metric"], rows["metric"] + "/" + rows["layer"])
        original = (_read_info(store.loc, run_id) or {}).get("tensorboard_tags")
        if isinstance(original, dict):  # an imported run: each tag under its own name again
            tags = np.array([original.get(tag, tag) for tag in tags], dtype=object)
        writer = SummaryWriter(log_dir=str(target))
        try:
            for tag, step, wall, value in zip(tags, rows["step"], rows["wall_time"], rows["value"]):
                writer.add_scalar(tag, float(value), int(step), walltime=None if math.isnan(wall) else float(wall))
        finally:
            writer.close()
        outcome[run_id] = "exported"
        echo(f"exported {run_id}: {len(rows)} values of {len(set(tags))} tags to {target}")
    return outcome
