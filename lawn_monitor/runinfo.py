"""What a ``run.json`` may hold, and a reader that works around a damaged one.

The sink writes run.json whole, so damage comes from elsewhere: a hand edit, a copy cut short, a
disk that filled, another program's file of the same name. :func:`check_run_info` reads the raw
bytes and returns the fields that are usable, the problems found, and, when the file cannot say
what the run is, why it is ``damaged``:

* the file is not UTF-8, empty, not JSON, or not a JSON object;
* a field the store cannot do without has the wrong type: ``status`` (which runs are live,
  finished, comparable) or ``config`` (how runs group into experiments).

Any other field of the wrong type is left out, as if the run had not written it (a
``heartbeat_at`` that is a number, a ``layers`` that is not a list of names), and named in the
problems; the run keeps its status. Fields this list does not know are kept as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .schema import STATUSES


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _status(value: Any) -> bool:
    return isinstance(value, str) and value in STATUSES


# Each known field: the check its value must pass (None is always allowed: "not recorded"), and
# the words for the problem when it does not.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "run_id": (_text, "text"),
    "name": (_text, "text"),
    "status": (_status, f"one of {', '.join(STATUSES)}"),
    "created_at": (_time, "an ISO time"),
    "heartbeat_at": (_time, "an ISO time"),
    "ended_at": (_time, "an ISO time"),
    "step": (_count, "a whole number >= 0"),
    "total_steps": (_count, "a whole number >= 0"),
    "steps_per_epoch": (_count, "a whole number >= 0"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "env": (lambda v: isinstance(v, dict), "an object"),
    "layers": (_names, "a list of layer names"),
    "test_acc": (_number, "a number"),
    "best_test_acc": (_number, "a number"),
    "test_acc_step": (_count, "a whole number >= 0"),
    "val_acc": (_number, "a number"),
    "best_val_acc": (_number, "a number"),
    "val_acc_step": (_count, "a whole number >= 0"),
    "study": (_text, "text"),  # a tuning study's name (lawn-monitor tune)
    "trial": (_count, "a whole number >= 0"),  # the trial's number in that study
    "schema_version": (_count, "a whole number >= 0"),
    "host": (_text, "text"),
    "pid": (_count, "a whole number >= 0"),
    "error": (_text, "text"),
    "activity": (_text, "text"),
    "resumed": (lambda v: isinstance(v, list), "a list"),
    "lawn_switch": (lambda v: isinstance(v, dict), "an object"),
}
# Without a usable value of these the store cannot place the run: it is listed as ``damaged``.
VITAL = ("status", "config")


@dataclass
class RunInfo:
    """A run.json as read: its usable fields, the problems found, and why the run is damaged
    (None when it is not)."""

    info: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    damage: str | None = None


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_run_info(raw: bytes) -> RunInfo:
    """Read a run.json's bytes: never raises, whatever they hold."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return RunInfo(damage="run.json is not UTF-8 text")
    if not text.strip():
        return RunInfo(damage="run.json is empty")
    try:
        data = json.loads(text)
    except ValueError as exc:
        return RunInfo(damage=f"run.json is not JSON ({exc})")
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        return RunInfo(damage=f"run.json holds {kind}, not an object")
    out = RunInfo()
    for key, value in data.items():
        check = FIELDS.get(key)
        if value is None or check is None or check[0](value):
            out.info[key] = value
        else:
            out.problems.append(f"{key} = {_show(value)} is not {check[1]}")
    vital = [p for p in out.problems if p.split(" ", 1)[0] in VITAL]
    if vital:
        out.damage = "run.json: " + "; ".join(vital)
    return out
