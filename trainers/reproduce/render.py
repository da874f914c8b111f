"""The page: the analysis's results formatted into rows and sentences, poured into
``template.md`` (Jinja2). The prose lives in the template; every number comes from here."""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from lawn_monitor import RunStore
from lawn_monitor.metrics import FLAT_LOSS

from ..stats import bootstrap_diff
from . import analysis as an
from .collect import END_SHARE, FLAT, recorded, run_frame, studies_frame
from .plan import CURVATURE_BUDGET, DISPLAY, Planned, Setup, best_configs, load_studies, plan_stage
from .provenance import same_code, versions

TEMPLATE = Path(__file__).with_name("template.md")
COMMAND = "python -m trainers.reproduce --root runs/repro --parallel 2"


def g(value, digits: int = 3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def p_text(p: float) -> str:
    return "-" if not math.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


def flags_text(values: dict) -> str:
    return " ".join(
        f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
        for k, v in values.items()
    )


def verdict_row(v: an.Verdict, boot: tuple[float, float] | None = None) -> dict:
    expects = {1: f"{v.a} > {v.b}", -1: f"{v.a} < {v.b}", 0: "-"}[v.sign]
    return {
        "pair": f"{v.a} − {v.b}",
        "expects": expects,
        "diff": v.diff.text(),
        "boot": "-" if boot is None or not math.isfinite(boot[0]) else f"[{boot[0]:+.2f}, {boot[1]:+.2f}]",
        "p": p_text(v.diff.p),
        "outcome": v.outcome,
        "n": f"{v.diff.n_a}, {v.diff.n_b}",
    }


def claim_rows(seeds: pd.DataFrame) -> tuple[list[dict], dict[str, list[str]]]:
    """The verdict rows on test accuracy, and the pairs by outcome (for the plain sentences)."""
    verdicts = an.claim_verdicts(seeds)
    rows = []
    for v in verdicts:
        x = seeds.loc[seeds["method"] == v.a, "test_acc"] * 100
        y = seeds.loc[seeds["method"] == v.b, "test_acc"] * 100
        rows.append(verdict_row(v, bootstrap_diff(list(x), list(y))))
    by = {k: [f"{v.a} against {v.b}" for v in vs] for k, vs in an.tally(verdicts).items()}
    return rows, by


def method_rows(groups: pd.DataFrame) -> list[dict]:
    return [
        {
            "method": r["method"],
            "val": r["val"].text(),
            "test": r["test"].text(),
            "n": r["n"],
            "diverged": r["diverged"],
        }
        for _, r in groups.iterrows()
    ]


def onset_text(row: pd.Series, sustained: bool = False) -> str:
    step, count = (row["sustained"], row["sustained_n"]) if sustained else (row["onset"], row["flattened"])
    if count == 0:
        return "never"
    return f"{step:.0f}" + ("" if count == row["n"] else f" ({count} of {row['n']} seeds)")


def mechanism_rows(groups: pd.DataFrame) -> list[dict]:
    return [
        {
            "method": r["method"],
            "test": r["test"].text(),
            "steps": g(r["total_steps"], 6),
            "onset": onset_text(r),
            "sustained": onset_text(r, sustained=True),
            **{m: g(r[m], 2 if m == "flat_frac" else 3) for m in an.MECHANISM},
        }
        for _, r in groups.iterrows()
    ]


def switch_text(row: pd.Series) -> str:
    if not math.isfinite(row["switch_epoch"]):
        return "-"
    rule = f"; on the rule in {row['on_rule']} of {row['n']}" if not str(row["variant"]).startswith("fixed") else ""
    return f"{row['switch_epoch']:.1f}{rule}"


def compare_rows(frame: pd.DataFrame, within: str, variant: str, extra) -> list[dict]:
    """Rows of a comparison chosen on validation: per group and variant, the accuracies, whether it
    is the group's best on validation, and the best's lead over it (Welch) where it is not."""
    if frame.empty:
        return []
    groups = an.best_on_validation(an.group_means(frame, [within, variant]), within)
    lead = an.against_best(frame, groups, within, variant)
    rows = []
    for _, r in groups.iterrows():
        d = lead.get((r[within], r[variant]))
        rows.append(
            {
                "group": r[within],
                "variant": r[variant],
                "val": r["val"].text(),
                "test": r["test"].text(),
                "best": "**best on validation**" if r["best"] else lead_text(d),
                **extra(r),
            }
        )
    return rows


def lead_text(d) -> str:
    if d is None:
        return "-"
    if not math.isfinite(d.low):
        return f"{d.diff:+.2f} (no interval: too few seeds)"
    return f"{d.text()} ({'within noise' if d.within_noise else 'outside noise'})"


def onset_rows(onset: pd.DataFrame) -> list[dict]:
    return compare_rows(onset, "method", "variant", lambda r: {"switch": switch_text(r)})


def reach_rows(reach: pd.DataFrame) -> list[dict]:
    if reach.empty:
        return []
    reach = reach.assign(group=reach["model"] + " " + reach["method"])
    return compare_rows(
        reach,
        "group",
        "variant",
        lambda r: {
            "at_switch": g(r["logit_at_switch"]),
            "at_end": g(r["logit_norm"]),
            "growth": g(r["logit_growth"]),
        },
    )


def winners(rows: list[dict]) -> list[str]:
    return [f"{r['group']}: {r['variant']}" for r in rows if r["best"].startswith("**")]


def params_text(params: dict) -> str:
    shown = []
    for key, value in params.items():
        if key == "weight_decay_on":
            continue
        shown.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(shown) or "-"


def study_rows(trials: pd.DataFrame) -> list[dict]:
    if trials.empty:
        return []
    table = an.study_table(trials)
    rows = []
    for _, r in table.iterrows():
        mine = trials[(trials["method"] == r["method"]) & (trials["number"] == r["best_trial"])]
        rows.append(
            {
                "method": DISPLAY.get(r["method"], r["method"]),
                "trials": f"{r['complete']} complete"
                + (f", {r['pruned']} pruned" if r["pruned"] else "")
                + (f", {r['failed']} failed" if r["failed"] else ""),
                "best": f"{r['best_value']:.2f}",
                "trial": r["best_trial"],
                "params": params_text(mine.iloc[0]["params"]) if not mine.empty else "-",
                "minutes": g(trials.loc[trials["method"] == r["method"], "seconds"].sum() / 60, 2),
            }
        )
    return rows


def stage_times(frame: pd.DataFrame, trials: pd.DataFrame) -> tuple[list[str], float]:
    """Per stage: runs, wall seconds from the first start to the last end, seconds of run time;
    and the whole span, from the first trial's start to the last run's end."""
    parts, starts, ends = [], [], []
    if not trials.empty and trials["start"].notna().any():
        start, end = trials["start"].min(), trials["end"].max()
        parts.append(
            f"tune: {len(trials)} trials, {(end - start).total_seconds():.0f} s wall, "
            f"{trials['seconds'].sum():.0f} s of run time"
        )
        starts.append(start.tz_localize(None) if start.tzinfo else start)
        ends.append(end.tz_localize(None) if end.tzinfo else end)
    for stage, runs in frame.groupby("stage", sort=False) if not frame.empty else []:
        start = runs["created_at"].min().tz_convert(None)
        end = runs["ended_at"].max().tz_convert(None)
        parts.append(
            f"{stage}: {len(runs)} runs, {(end - start).total_seconds():.0f} s wall, "
            f"{runs['seconds'].sum():.0f} s of run time"
        )
        starts.append(start)
        ends.append(end)
    span = (max(ends) - min(starts)).total_seconds() if starts else math.nan
    return parts, span


def missing_lines(planned: list[Planned], frame: pd.DataFrame, best: dict, s: Setup) -> list[str]:
    have = set(frame["name"]) if not frame.empty else set()
    lines = []
    untuned = [DISPLAY.get(m, m) for m in s.methods if m not in best]
    if untuned:
        lines.append(
            f"- No tuned setting yet (no completed trial) for {', '.join(untuned)}: their seeds, "
            "onset and reach runs are not even planned."
        )
    by_stage: dict[str, list[str]] = {}
    for p in planned:
        if p.cfg.name not in have:
            by_stage.setdefault(p.stage, []).append(p.cfg.name or "?")
    for stage, names in by_stage.items():
        lines.append(f"- {stage}: {len(names)} planned runs have not ended: {', '.join(names)}")
    return lines or ["Every planned run has ended (finished or diverged)."]


def collect(root: str, s: Setup) -> dict:
    """Everything the page shows, read from the store and the studies."""
    store = RunStore(root)
    best = best_configs(s, root) if Path(root).exists() else {}
    planned = [p for stage in ("seeds", "onset", "reach") for p in plan_stage(stage, s, root, best)]
    frame = run_frame(store, planned) if Path(root).exists() else pd.DataFrame()
    trials = studies_frame(load_studies(s, root))
    ids = [*(frame["run_id"] if not frame.empty else []), *trials["run_id"].dropna()]
    return {
        "best": best,
        "planned": planned,
        "frame": frame,
        "trials": trials,
        "commits": recorded(store, ids, "git_commit"),
        "torches": recorded(store, ids, "torch"),
    }


def _stage(frame: pd.DataFrame, stage: str) -> pd.DataFrame:
    return frame[frame["stage"] == stage] if not frame.empty else frame


def context(root: str, s: Setup) -> dict:
    data = collect(root, s)
    frame, trials = data["frame"], data["trials"]
    seeds, onset, reach = (_stage(frame, k) for k in ("seeds", "onset", "reach"))
    groups = an.group_means(seeds, ["method"]) if not seeds.empty else pd.DataFrame()
    order = {name: i for i, name in enumerate(DISPLAY.values())}
    if not groups.empty:
        groups = groups.sort_values("method", key=lambda m: m.map(order), kind="stable")
    claims, by_outcome = claim_rows(seeds) if not seeds.empty else ([], {})
    parts, span = stage_times(frame, trials)
    commits = sorted(data["commits"])
    onset_table, reach_table = onset_rows(onset), reach_rows(reach)
    return {
        "s": s,
        "command": COMMAND + (" --quick" if s.quick else ""),
        "main_flags": flags_text(s.main),
        "curvature_budget": f"{CURVATURE_BUDGET:g}",
        "flat": f"{FLAT:g}",
        "flat_loss": f"{FLAT_LOSS:g}",
        "end_share": f"{END_SHARE:.0%}",
        "versions": versions(),
        "torches": ", ".join(sorted(data["torches"])) or "-",
        "commits": ", ".join(c[:7] for c in commits) or "-",
        "same_code": same_code(commits) if commits else "",
        "stage_times": parts,
        "span_minutes": g(span / 60, 3),
        "studies": study_rows(trials),
        "methods": method_rows(groups) if not groups.empty else [],
        "claims": claims,
        "by_outcome": by_outcome,
        "mechanism": mechanism_rows(groups) if not groups.empty else [],
        "mechanism_claims": [(c, verdict_row(v)) for c, v in an.mechanism_verdicts(seeds)] if not seeds.empty else [],
        "low": an.low_seeds(frame, ["stage", "method", "model", "variant"]) if not frame.empty else [],
        "fallen": an.fallen(frame) if not frame.empty else [],
        "onset": onset_table,
        "onset_winners": winners(onset_table),
        "reach": reach_table,
        "reach_winners": winners(reach_table),
        "missing": missing_lines(data["planned"], frame, data["best"], s),
        "fixed_free": ", ".join(f"{f:g}" for f in s.fixed_free),
        "rules": [label for label, _ in s.onset_rules],
        "space": search_space(s),
        "data": data_text(s, seeds),
        "cnn_flags": flags_text(s.reach_cnn),
        "mlp_methods": ", ".join(DISPLAY.get(m, m) for m in s.reach_mlp_methods),
        "cnn_methods": ", ".join(DISPLAY.get(m, m) for m in s.reach_cnn_methods),
    }


def write_doc(root: str, out: Path, s: Setup) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    page = env.get_template(TEMPLATE.name).render(**context(root, s))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"reproduce: wrote {out}", flush=True)
    return page


DATA_ABOUT = {
    "mnist1d": "MNIST-1D, generated offline by the `mnist1d` package (1-D signals, 10 classes)",
    "digits": "scikit-learn's digits (real 8x8 scans, 10 classes)",
    "mnist": "real MNIST (28x28, 10 classes)",
}


def data_text(s: Setup, seeds: pd.DataFrame) -> str:
    """The main data set and its split, as the runs recorded it."""
    about = DATA_ABOUT.get(s.main["dataset"], s.main["dataset"])
    if seeds.empty or seeds["num_train"].isna().all():
        return about
    train, val = int(seeds["num_train"].dropna().iloc[0]), int(seeds["num_val"].dropna().iloc[0])
    return f"{about}: {train:,} training samples, and a validation split of {val:,} held out of the training set"


def search_space(s: Setup) -> list[dict]:
    """Per method, what its study searches (from trainers.tune)."""
    from .. import tune

    rows = []
    for method, spec in tune.METHODS.items():
        decay = (
            "0 (none)" if spec.weight_decay is None else f"0 or {spec.weight_decay[0]:g} to {spec.weight_decay[1]:g}"
        )
        lawn = "-"
        if spec.lawn:
            free = ", ".join(f"{f:g}" if not isinstance(f, str) else f for f in tune.free_choices(s.main["epochs"]))
            lawn = f"free phase {free}; LR after the switch × {tune.LAWN_LR_SCALE[0]:g} to {tune.LAWN_LR_SCALE[1]:g}"
        rows.append(
            {
                "method": DISPLAY.get(method, method),
                "about": spec.about,
                "lr": f"{spec.lr[0]:g} to {spec.lr[1]:g}",
                "decay": decay,
                "warmup": f"0 to {tune.WARMUP_SHARE * s.main['epochs']:g}",
                "lawn": lawn,
            }
        )
    return rows
