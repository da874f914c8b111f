"""trainers/reproduce: the analysis on small fixed frames, the frame's numbers against the rows
they come from (a store written row by row with ParquetSink, no training), what counts as done,
and a --quick regeneration end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lawn_monitor import RunStore
from lawn_monitor.schema import SCHEMA
from lawn_monitor.sink import ParquetSink
from lawn_monitor_trainers.config import TrainConfig
from lawn_monitor_trainers.reproduce import analysis as an
from lawn_monitor_trainers.reproduce import collect, plan
from lawn_monitor_trainers.stats import welch

STEPS = 200


# --- analysis on fixed frames ---------------------------------------------------------------------


def seeds_frame(accs: dict[str, list[float]], vals: dict[str, list[float]] | None = None) -> pd.DataFrame:
    rows = []
    for method, values in accs.items():
        for i, acc in enumerate(values):
            val = (vals or {}).get(method, values)[i]
            rows.append(
                {
                    "method": method,
                    "seed": i + 1,
                    "name": f"{method}-s{i + 1}",
                    "test_acc": acc,
                    "val_acc": val,
                    "status": "finished",
                    "lawn": "LAWN" in method,
                    "switch_epoch": 2.0 if "LAWN" in method else math.nan,
                    "switched_on_rule": False,
                }
            )
    return pd.DataFrame(rows)


def test_verdict_says_within_noise_exactly_when_the_interval_holds_zero():
    frame = seeds_frame(
        {
            "Adam-LAWN": [0.72, 0.73, 0.71, 0.72, 0.74],
            "SGD-LAWN": [0.70, 0.69, 0.71, 0.70, 0.68],  # clearly below: the claim holds
            "SGD": [0.71, 0.74, 0.70, 0.73, 0.72],  # overlapping: within noise
            "Adam": [0.76, 0.77, 0.75, 0.76, 0.78],  # clearly above Adam-LAWN: contradicted
        }
    )
    verdicts = {(v.a, v.b): v for v in an.claim_verdicts(frame)}
    assert set(verdicts) == {("Adam-LAWN", "SGD-LAWN"), ("Adam-LAWN", "SGD"), ("SGD-LAWN", "SGD"),
                             ("Adam-LAWN", "Adam"), ("Adam", "SGD")}  # fmt: skip
    for v in verdicts.values():
        holds_zero = v.diff.low <= 0 <= v.diff.high
        assert (v.outcome == "within noise") == holds_zero, (v.a, v.b, v.diff)
    assert verdicts[("Adam-LAWN", "SGD-LAWN")].outcome == "holds"
    assert verdicts[("Adam-LAWN", "SGD")].outcome == "within noise"
    assert verdicts[("Adam-LAWN", "Adam")].outcome == "contradicted"
    assert verdicts[("SGD-LAWN", "SGD")].outcome == "contradicted"  # the paper says SGD-LAWN >= SGD
    # in points, and Welch's on the same numbers
    ref = welch([72, 73, 71, 72, 74], [70, 69, 71, 70, 68])
    assert verdicts[("Adam-LAWN", "SGD-LAWN")].diff.diff == pytest.approx(ref.diff)
    assert verdicts[("Adam-LAWN", "SGD-LAWN")].diff.p == pytest.approx(ref.p)
    tally = an.tally(list(verdicts.values()))
    assert verdicts[("Adam", "SGD")].outcome == "contradicted"  # the paper says Adam < SGD
    assert [len(tally[k]) for k in ("holds", "within noise", "contradicted")] == [1, 1, 3]


def test_the_choice_is_made_on_validation_never_on_test():
    frame = seeds_frame(
        {"A": [0.90, 0.91, 0.92], "B": [0.60, 0.61, 0.62]},  # A wins on test, B on validation
        vals={"A": [0.50, 0.51, 0.52], "B": [0.80, 0.81, 0.79]},
    )
    frame["group"] = "g"
    frame = frame.rename(columns={"method": "variant"})
    groups = an.best_on_validation(an.group_means(frame, ["group", "variant"]), "group")
    assert groups.set_index("variant")["best"].to_dict() == {"A": False, "B": True}
    # the test column does not move the choice: swap test accuracies, the same row wins
    swapped = frame.assign(test_acc=frame["test_acc"][::-1].to_numpy())
    again = an.best_on_validation(an.group_means(swapped, ["group", "variant"]), "group")
    assert again.set_index("variant")["best"].to_dict() == {"A": False, "B": True}
    lead = an.against_best(frame, groups, "group", "variant")[("g", "A")]
    assert lead.diff == pytest.approx(80.0 - 51.0) and not lead.within_noise
    m = groups.set_index("variant").loc["B", "val"]
    assert (m.mean, m.n) == (pytest.approx(80.0), 3)


def test_low_and_fallen_runs_are_named():
    frame = seeds_frame({"SGD": [0.70, 0.71, 0.50]})
    frame["stage"] = "seeds"
    frame["best_test_acc"] = [0.70, 0.95, 0.52]
    assert an.low_seeds(frame, ["stage", "method"]) == [("SGD-s3", pytest.approx(50.0), pytest.approx(71.0))]
    assert an.fallen(frame) == [("SGD-s2", pytest.approx(71.0), pytest.approx(95.0))]


def test_study_table_counts_states_and_finds_the_best_trial():
    trials = pd.DataFrame(
        {
            "method": ["adam"] * 4,
            "number": [0, 1, 2, 3],
            "state": ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"],
            "value": [0.61, 0.66, np.nan, np.nan],
        }
    )
    row = an.study_table(trials).iloc[0]
    assert (row["complete"], row["pruned"], row["failed"], row["best_trial"]) == (2, 1, 1, 1)
    assert row["best_value"] == pytest.approx(66.0)


# --- the plan -------------------------------------------------------------------------------------


def fake_best(root) -> dict[str, TrainConfig]:
    """What best_configs returns, without Optuna: each method's config at some setting."""
    s = plan.setup()
    out = {}
    for method in s.methods:
        lawn = method.endswith("-lawn")
        cfg = plan.base_config(s.main, str(root), optimizer=method.split("-")[0],
                               lawn=lawn, lr=0.01, free_epochs=4.0 if lawn else 1.0)  # fmt: skip
        out[method] = cfg
    return out


def test_plans_cover_every_method_and_rule_and_are_distinct(tmp_path):
    s, best = plan.setup(), fake_best(tmp_path)
    seeds = plan.plan_seeds(s, best)
    assert len(seeds) == len(s.methods) * len(s.seeds) >= 30 and min(s.seeds) > 0  # not the trials' seed 0
    assert all(p.cfg.probes.curvature and p.cfg.probes.budget == plan.CURVATURE_BUDGET for p in seeds)
    onset = plan.plan_onset(s, best)
    variants = {p.labels["variant"] for p in onset}
    assert len(variants) == len(s.fixed_free) + len(s.onset_rules)
    assert max(s.fixed_free) > 10  # past the old cap
    assert {p.labels["method"] for p in onset} == {"SGD-LAWN", "Adam-LAWN"}
    assert {p.cfg.free_epochs for p in onset} == {*s.fixed_free, "auto"}
    reach = plan.plan_reach(s, best, str(tmp_path))
    assert {(p.labels["model"], p.cfg.lawn_params) for p in reach} == {
        (m, params) for m in ("MLP", "BN CNN") for params in s.reach_params
    }
    assert {p.cfg.model for p in reach if p.labels["model"] == "BN CNN"} == {"cnn_bn"}
    names = [p.cfg.name for p in (*seeds, *onset, *reach)]
    assert len(set(names)) == len(names)


def test_a_run_counts_as_done_only_with_the_same_configuration(tmp_path):
    cfg = plan.plan_seeds(plan.setup(), fake_best(tmp_path))[0].cfg
    record = dataclasses.asdict(dataclasses.replace(cfg, threads=4, root="elsewhere"))
    assert plan.same_config(record, cfg)  # where and how it ran may differ
    assert not plan.same_config(dataclasses.asdict(dataclasses.replace(cfg, lr=cfg.lr * 2)), cfg)
    # a key added to the trainer after the run was recorded: the run ran as its default does
    older = {k: v for k, v in record.items() if k != "lawn_lr_scale"}
    older["probes"] = {k: v for k, v in record["probes"].items() if k != "budget"}
    assert plan.same_config(older, dataclasses.replace(cfg, probes=dataclasses.replace(cfg.probes, budget=0.4)))
    assert not plan.same_config(older, dataclasses.replace(cfg, lawn_lr_scale=2.0))


# --- the frame against the rows ------------------------------------------------------------------


def write_run(root, cfg: TrainConfig, rng, flat_from: int | None, acc: float, status="finished") -> dict:
    """An ended run of ``cfg`` with made-up curves, written row by row; returns them by metric."""
    steps = np.arange(1, STEPS + 1)
    flat = rng.uniform(0.0, 0.45, STEPS)
    if flat_from is not None:
        flat[flat_from - 1] = 0.51
        flat[flat_from:] = rng.uniform(0.3, 1.0, STEPS - flat_from)
    curves = {
        "flat_frac": flat,
        "logit_norm": 5 + steps * 0.1 + rng.normal(0, 1, STEPS),
        "weight_growth": 1 + steps * 0.01,
        "update_ratio_per_lr": rng.uniform(0.1, 0.2, STEPS),
        "train/loss": rng.uniform(0, 1, STEPS),
    }
    curves["update_ratio_per_lr"][-20:] = np.nan  # undefined where the LR has decayed to ~0
    rows = [(m, s, float(v)) for m, values in curves.items() for s, v in zip(steps, values)]
    rows += [("test/acc", s, a) for s, a in ((100, 0.9), (STEPS, acc))]
    rows += [("val/acc", s, a) for s, a in ((100, 0.5), (STEPS, acc - 0.01))]
    rows += [("flat_frac", 7, 0.9)]  # a per-layer row of the same name must not count
    run_id = f"run-{cfg.name}"
    info = {"name": cfg.name, "config": dataclasses.asdict(cfg), "total_steps": STEPS, "steps_per_epoch": 10}
    if cfg.lawn:
        info["lawn_switch"] = {"step": 31, "rule": "fixed", "reason": "free_steps 30"}
    sink = ParquetSink(root, run_id, info)
    n = len(rows)
    table = {
        "run_id": [run_id] * n,
        "step": [int(r[1]) for r in rows],
        "epoch": [r[1] / 10 for r in rows],
        "wall_time": [1e9 + r[1] for r in rows],
        "layer": [""] * (n - 1) + ["fc.weight"],
        "metric": [r[0] for r in rows],
        "value": [r[2] for r in rows],
    }
    sink.write(pa.table(table, schema=SCHEMA))
    sink.close(status)
    return curves


def test_frame_numbers_match_the_rows(tmp_path):
    root = tmp_path / "store"
    planned = plan.plan_seeds(plan.setup(), fake_best(root))
    rng = np.random.default_rng(0)
    by = {p.cfg.name: p for p in planned}
    adam, lawn, sgd = by["repro-seeds-adam-s1"], by["repro-seeds-adam-lawn-s1"], by["repro-seeds-sgd-s1"]
    curves = {
        adam.cfg.name: write_run(root, adam.cfg, rng, 40, 0.70),
        lawn.cfg.name: write_run(root, lawn.cfg, rng, None, 0.75),
    }
    write_run(root, dataclasses.replace(sgd.cfg, lr=0.5), rng, 10, 0.1)  # another config: not this plan's
    write_run(root, by["repro-seeds-sgd-s2"].cfg, rng, 10, 0.1, status="failed")  # not ended: trained again
    store = RunStore(root)
    assert set(plan.ended_runs(store, planned)) == set(curves)
    frame = collect.run_frame(store, planned).set_index("name")
    last = STEPS - int(np.ceil(STEPS * collect.END_SHARE))
    for name, c in curves.items():
        row = frame.loc[name]
        over = np.flatnonzero(c["flat_frac"] > 0.5)
        assert np.isnan(row["onset"]) if len(over) == 0 else row["onset"] == over[0] + 1
        assert row["logit_norm"] == pytest.approx(c["logit_norm"][last:].mean())
        assert row["train_loss"] == pytest.approx(c["train/loss"][last:].mean())
        # over the last 5% of the steps at which it is defined: up to step 180, from step 172
        defined = STEPS - 20
        ratio = c["update_ratio_per_lr"][defined - int(np.ceil(defined * collect.END_SHARE)) : defined]
        assert row["update_ratio_per_lr"] == pytest.approx(ratio.mean())
    assert frame.loc[adam.cfg.name, ["test_acc", "val_acc", "best_test_acc"]].tolist() == pytest.approx(
        [0.70, 0.69, 0.90]
    )
    # LAWN's switch at step 31 (epoch 3): the logit norm over the last fifth of the free phase
    # (steps 25-30), and the end's over that
    before = curves[lawn.cfg.name]["logit_norm"][24:30].mean()
    assert frame.loc[lawn.cfg.name, "logit_at_switch"] == pytest.approx(before)
    assert frame.loc[lawn.cfg.name, "switch_epoch"] == 3.0
    assert frame.loc[lawn.cfg.name, "logit_growth"] == pytest.approx(
        curves[lawn.cfg.name]["logit_norm"][last:].mean() / before
    )
    assert np.isnan(frame.loc[adam.cfg.name, "logit_at_switch"])


# --- the whole regeneration, tiny ----------------------------------------------------------------


@pytest.mark.slow
def test_quick_regeneration_end_to_end_and_resumes(tmp_path, capsys):
    from lawn_monitor_trainers.reproduce import main

    root, out = str(tmp_path / "store"), tmp_path / "page.md"
    assert main(["--root", root, "--quick", "--out", str(out), "--parallel", "2"]) == 0
    page = out.read_text()
    for heading in ("## The paper's claims, judged", "## The mechanism, per method", "## When to switch",
                    "## What LAWN constrains", "## What was cut to fit"):  # fmt: skip
        assert heading in page
    assert "Every planned run has ended" in page
    # the page's accuracy for SGD is the mean over its seed runs, read straight from the store
    store = RunStore(root)
    runs = store.runs()
    ids = list(runs.loc[runs["name"].str.startswith("repro-seeds-sgd-s"), "run_id"])
    acc = store.sql(
        "SELECT arg_max(value, step) AS v FROM metrics WHERE metric = 'test/acc' AND layer = '' GROUP BY run_id",
        run_ids=ids,
    )["v"]
    assert len(ids) == 2 and "| SGD | " in page and f"{100 * acc.mean():.2f} ± " in page
    # a second run trains nothing and writes the same tables
    capsys.readouterr()
    assert main(["--root", root, "--quick", "--out", str(out), "--parallel", "2"]) == 0
    said = capsys.readouterr().out
    assert "0 to run" in said and "to run" in said and "[1/" not in said
    assert out.read_text().split("## The paper")[1] == page.split("## The paper")[1]
