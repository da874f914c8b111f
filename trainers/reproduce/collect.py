"""From the store to frames: one row per planned run that ended, with what the analysis needs
(validation and test accuracy, the switch, the onset of flattening, end-of-run measurements,
the logit norm at the switch). Every number on the page comes from ``RunStore`` through here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lawn_monitor import RunStore

from .plan import ENDED, Planned, ended_runs

FLAT = 0.5  # flattening has set in once more than half of a training batch has loss under FLAT_LOSS
END_SHARE = 0.05  # "at the end": the mean over the last 5% of a run's steps (one batch is noisy)
PER_STEP = ("flat_frac", "logit_norm", "weight_growth", "update_ratio_per_lr", "train/loss")
AT_LAST = ("test/acc", "val/acc", "gn_trace")  # evaluated now and then: their last value


def run_rows(store: RunStore, planned: list[Planned]) -> pd.DataFrame:
    """One row per planned run with an ended run (``plan.ENDED``) of its configuration: its labels,
    config, switch and timing, from run.json."""
    ids = ended_runs(store, planned)
    rows = []
    for p in planned:
        run_id = ids.get(p.cfg.name)
        if run_id is None:
            continue
        info = store.run_info(run_id) or {}
        switch = info.get("lawn_switch") or {}
        per_epoch = info.get("steps_per_epoch") or math.nan
        rows.append(
            {
                "stage": p.stage,
                **p.labels,
                "name": p.cfg.name,
                "run_id": run_id,
                "status": info.get("status"),
                "lawn": bool(p.cfg.lawn),
                "seed": p.cfg.seed,
                "total_steps": info.get("total_steps"),
                "steps_per_epoch": per_epoch,
                "switch_step": switch.get("step", math.nan),
                "switch_epoch": (switch.get("step", math.nan) - 1) / per_epoch,
                "switched_on_rule": switch.get("rule") == "auto" and "max_steps" not in str(switch.get("reason", "")),
                "created_at": pd.Timestamp(info["created_at"]) if info.get("created_at") else pd.NaT,
                "ended_at": pd.Timestamp(info["ended_at"]) if info.get("ended_at") else pd.NaT,
                "git_commit": str((info.get("env") or {}).get("git_commit", "?")),
                "torch": str((info.get("env") or {}).get("torch", "?")),
                "num_train": (info.get("config") or {}).get("num_train"),
                "num_val": (info.get("config") or {}).get("num_val"),
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["seconds"] = (frame["ended_at"] - frame["created_at"]).dt.total_seconds()
    return frame


def run_frame(store: RunStore, planned: list[Planned]) -> pd.DataFrame:
    """``run_rows`` with the measurements: ``val_acc``, ``test_acc`` (final), ``best_test_acc``,
    ``onset`` (first step with flat_frac > FLAT), ``sustained`` (first step where its mean over
    the epoch ending there is > FLAT), the PER_STEP metrics' means over the last END_SHARE of the
    steps (``train/loss`` as ``train_loss``), ``gn_trace`` (last), and around LAWN's switch the
    logit norm's mean over the epoch before it (``logit_at_switch``) and the end's over that
    (``logit_growth``)."""
    frame = run_rows(store, planned)
    if frame.empty:
        return frame
    ids = list(frame["run_id"])
    wide = pd.concat([_ends(store, ids), _lasts(store, ids)]).pivot_table(
        index="run_id", columns="metric", values="value", aggfunc="first"
    )
    frame = frame.merge(_onsets(store, ids), on="run_id", how="left")
    frame = frame.merge(wide, left_on="run_id", right_index=True, how="left")
    for metric in (*PER_STEP, *AT_LAST, "best_test_acc"):
        if metric not in frame.columns:
            frame[metric] = np.nan
    frame["sustained"] = frame["run_id"].map(_sustained(store, frame))
    frame["logit_at_switch"] = frame["run_id"].map(_logit_at_switch(store, frame))
    frame["logit_growth"] = frame["logit_norm"] / frame["logit_at_switch"]
    return frame.rename(columns={"test/acc": "test_acc", "val/acc": "val_acc", "train/loss": "train_loss"})


def _onsets(store: RunStore, ids: list[str]) -> pd.DataFrame:
    found = store.sql(
        "SELECT run_id, min(step) AS onset FROM metrics WHERE metric = 'flat_frac' AND layer = '' "
        "AND value > ? GROUP BY run_id",
        [FLAT],
        run_ids=ids,
    )
    return found if not found.empty else pd.DataFrame({"run_id": pd.Series(dtype=str), "onset": []})


def _ends(store: RunStore, ids: list[str]) -> pd.DataFrame:
    """Each PER_STEP metric's mean over the last END_SHARE of the steps at which it is defined
    (finite): update_ratio_per_lr is NaN where the LR is a vanishing share of its peak, as it
    is at the end of a cosine schedule, so its "end" is where the LR last counted."""
    return store.sql(
        """WITH last AS (
               SELECT run_id, metric, max(step) AS last FROM metrics
               WHERE layer = '' AND metric IN (SELECT unnest(?)) AND isfinite(value) GROUP BY run_id, metric)
           SELECT run_id, metric, avg(value) AS value FROM metrics JOIN last USING (run_id, metric)
           WHERE layer = '' AND isfinite(value) AND step > last - greatest(1, ceil(last * ?))
           GROUP BY run_id, metric""",
        [list(PER_STEP), END_SHARE],
        run_ids=ids,
    )


def _lasts(store: RunStore, ids: list[str]) -> pd.DataFrame:
    last = store.sql(
        "SELECT run_id, metric, arg_max(value, (step, wall_time)) AS value FROM metrics "
        "WHERE layer = '' AND metric IN (SELECT unnest(?)) GROUP BY run_id, metric",
        [list(AT_LAST)],
        run_ids=ids,
    )
    best = store.sql(
        "SELECT run_id, 'best_test_acc' AS metric, max(value) AS value FROM metrics "
        "WHERE metric = 'test/acc' AND layer = '' GROUP BY run_id",
        run_ids=ids,
    )
    return pd.concat([last, best])


def _series(store: RunStore, ids: list[str], metric: str) -> pd.DataFrame:
    return store.sql(
        "SELECT run_id, step, value FROM metrics WHERE metric = ? AND layer = '' ORDER BY run_id, step",
        [metric],
        run_ids=ids,
    )


def _sustained(store: RunStore, frame: pd.DataFrame) -> dict[str, float]:
    """Run id -> the first step at which flat_frac's mean over the epoch ending there exceeds FLAT
    (NaN if never): the onset without the luck of one batch."""
    per_epoch = dict(zip(frame["run_id"], frame["steps_per_epoch"]))
    found = {}
    for run_id, rows in _series(store, list(frame["run_id"]), "flat_frac").groupby("run_id"):
        window = max(1, int(np.nan_to_num(per_epoch.get(run_id), nan=1)))
        mean = rows["value"].rolling(window, min_periods=window).mean()
        over = rows["step"][mean > FLAT]
        found[run_id] = float(over.iloc[0]) if len(over) else math.nan
    return found


def _logit_at_switch(store: RunStore, frame: pd.DataFrame) -> dict[str, float]:
    """Run id -> the mean logit norm over the last fifth of LAWN's free phase, at most its last
    epoch (NaN without a switch): the logits' size when the norms are frozen, without the first
    steps' small logits in a short free phase."""
    lawn = frame[frame["switch_step"].notna()]
    if lawn.empty:
        return {}
    switch = dict(zip(lawn["run_id"], lawn["switch_step"]))
    per_epoch = dict(zip(lawn["run_id"], lawn["steps_per_epoch"]))
    found = {}
    for run_id, rows in _series(store, list(lawn["run_id"]), "logit_norm").groupby("run_id"):
        s = switch[run_id]
        window = max(1, min(per_epoch[run_id], (s - 1) // 5))
        before = rows.loc[(rows["step"] < s) & (rows["step"] >= s - window), "value"]
        found[run_id] = float(before.mean()) if len(before) else math.nan
    return found


def studies_frame(studies: dict[str, object]) -> pd.DataFrame:
    """One row per trial of each method's Optuna study: method, number, state, value (validation
    accuracy as a share), duration in seconds and its parameters (``params``)."""
    rows = []
    for method, study in studies.items():
        for t in study.trials:  # type: ignore[attr-defined]
            duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else math.nan
            rows.append(
                {
                    "method": method,
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value if t.value is not None else math.nan,
                    "seconds": duration,
                    "params": dict(t.params),
                    "start": pd.Timestamp(t.datetime_start) if t.datetime_start else pd.NaT,
                    "end": pd.Timestamp(t.datetime_complete) if t.datetime_complete else pd.NaT,
                    "run_id": t.user_attrs.get("run_id"),
                }
            )
    columns = ["method", "number", "state", "value", "seconds", "params", "start", "end", "run_id"]
    return pd.DataFrame(rows, columns=columns)


def recorded(store: RunStore, run_ids: list[str], key: str) -> set[str]:
    """The values of ``env[key]`` (git_commit, torch) that these runs recorded."""
    found = set()
    for run_id in run_ids:
        env = (store.run_info(run_id) or {}).get("env") or {}
        found.add(str(env.get(key, "?")))
    return found


__all__ = ["ENDED", "FLAT", "END_SHARE", "run_frame", "run_rows", "studies_frame"]
