"""trainers/reproduce.py: the page's mechanism numbers against the rows they come from, on a store
written row by row with ParquetSink (no training), and which planned runs count as done."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from lawn_monitor import RunStore
from lawn_monitor.schema import SCHEMA
from lawn_monitor.sink import ParquetSink
from lawn_monitor_trainers import reproduce

STEPS = 200


def write_run(
    root, planned: reproduce.Planned, rng, flat_from: int | None, acc: float, status="finished", **config_changes
) -> dict[str, np.ndarray]:
    """A finished run of a planned configuration, with made-up curves; returns them by metric."""
    cfg = dataclasses.replace(planned.cfg, **config_changes)
    steps = np.arange(1, STEPS + 1)
    flat = rng.uniform(0.0, 0.45, STEPS)
    if flat_from is not None:
        flat[flat_from - 1] = 0.51  # first over 0.5 here, then noisy above and below
        flat[flat_from:] = rng.uniform(0.3, 1.0, STEPS - flat_from)
    curves = {
        "flat_frac": flat,
        "logit_norm": 5 + steps * 0.1 + rng.normal(0, 1, STEPS),
        "weight_growth": 1 + steps * 0.01,
        "update_ratio_per_lr": rng.uniform(0.1, 0.2, STEPS),
        "train/loss": rng.uniform(0, 1, STEPS),
    }
    rows = [(m, s, float(v)) for m, values in curves.items() for s, v in zip(steps, values)]
    gn_steps = np.array([1, 2, 4, 8, 50, 120, 190])
    curves["gn_trace"] = rng.uniform(1, 10, len(gn_steps))
    rows += [("gn_trace", s, float(v)) for s, v in zip(gn_steps, curves["gn_trace"])]
    rows += [("test/acc", s, a) for s, a in ((100, 0.5), (STEPS, acc))]
    rows += [("flat_frac", 7, 0.9)]  # a per-layer row of the same name must not count
    run_id = f"run-{cfg.name}-{len(list(root.iterdir())) if root.exists() else 0}"
    info = {"name": cfg.name, "config": dataclasses.asdict(cfg), "total_steps": STEPS, "steps_per_epoch": 10}
    if cfg.lawn:
        info["lawn_switch"] = {"step": 31, "rule": "fixed", "reason": "free_steps 30"}
    sink = ParquetSink(root, run_id, info)
    n = len(rows)
    sink.write(
        pa.table(
            {
                "run_id": [run_id] * n,
                "step": [int(r[1]) for r in rows],
                "epoch": [r[1] / 10 for r in rows],
                "wall_time": [1e9 + r[1] for r in rows],
                "layer": [""] * (n - 1) + ["fc.weight"],
                "metric": [r[0] for r in rows],
                "value": [r[2] for r in rows],
            },
            schema=SCHEMA,
        )
    )
    sink.close(status)
    curves["gn_steps"] = gn_steps
    return curves


def by_name(planned, name):
    return next(p for p in planned if p.cfg.name == name)


def test_mechanism_numbers_match_the_rows(tmp_path):
    root = tmp_path / "store"
    planned = reproduce.plan("sweep", str(root))
    rng = np.random.default_rng(0)
    adam = [by_name(planned, f"cpu-digits-adam-b32-s{s}") for s in (0, 1)]
    sgd = by_name(planned, "cpu-digits-sgd-b32-s0")
    curves = {
        p.cfg.name: write_run(root, p, rng, flat_from=f, acc=a)
        for p, f, a in ((adam[0], 40, 0.90), (adam[1], 60, 0.92), (sgd, None, 0.95))
    }
    # Not the planned configuration (another LR) and not finished: neither counts.
    write_run(root, by_name(planned, "cpu-digits-sgd-b256-s0"), rng, flat_from=10, acc=0.1, lr=0.5)
    write_run(root, by_name(planned, "cpu-digits-adam-b256-s0"), rng, flat_from=10, acc=0.1, status="failed")

    store = RunStore(root)
    frame = reproduce.run_frame(store, planned).set_index("name")
    assert sorted(frame.index) == sorted(curves)
    last = STEPS - int(np.ceil(STEPS * reproduce.END_SHARE))  # the mean runs over the steps after this one
    for name, c in curves.items():
        row = frame.loc[name]
        over = np.flatnonzero(c["flat_frac"] > 0.5)
        assert np.isnan(row["onset"]) if len(over) == 0 else row["onset"] == over[0] + 1, name
        for metric in reproduce.PER_STEP:
            assert row[metric] == pytest.approx(c[metric][last:].mean()), (name, metric)
        assert row["gn_trace"] == pytest.approx(c["gn_trace"][-1])
        epoch_mean = np.convolve(c["flat_frac"], np.ones(10) / 10, mode="valid")  # steps_per_epoch = 10
        late = np.flatnonzero(epoch_mean > 0.5)
        assert np.isnan(row["sustained"]) if len(late) == 0 else row["sustained"] == late[0] + 10, name
    # The same numbers straight from RunStore: the onset is the first step over 0.5.
    direct = store.sql(
        "SELECT run_id, min(step) AS s FROM metrics WHERE metric = 'flat_frac' AND layer = '' "
        "AND value > 0.5 GROUP BY run_id",
        run_ids=list(frame["run_id"]),
    )
    assert dict(zip(direct["run_id"], direct["s"])) == {
        r: frame.loc[n, "onset"] for n, r in frame["run_id"].items() if np.isfinite(frame.loc[n, "onset"])
    }

    cell = reproduce.cells(frame.reset_index(), ["dataset", "batch_size", "method"]).set_index("method")
    assert cell.loc["Adam", "onset"] == 50 and cell.loc["Adam", "flattened"] == 2
    assert cell.loc["Adam", "acc"] == pytest.approx(91.0) and cell.loc["SGD", "flattened"] == 0
    assert cell.loc["Adam", "flat_frac"] == pytest.approx(
        np.mean([curves[p.cfg.name]["flat_frac"][last:].mean() for p in adam])
    )

    page = reproduce.write_doc(str(root), tmp_path / "reproduction.md")
    assert "| digits | 32 | Adam | 91.00 ± 1.41 (n=2) | 200 | 50 |" in page
    assert "| digits | 32 | SGD | 95.00 (n=1) | 200 | never |" in page
    assert "digits 32: Adam step 50, SGD never" in page and "Adam flattens first in 1 of 1 cells" in page
    assert "cpu-digits-sgd-b256-s0 (finished)" in page  # a finished run of another config is still missing
    assert "cpu-digits-adam-b256-s0 (failed)" in page
    assert (tmp_path / "reproduction.md").read_text() == page


def test_plans_are_resumable_and_share_the_recipes_own_free_phase(tmp_path):
    sweep = {p.cfg.name for p in reproduce.plan("sweep", str(tmp_path))}
    auto = reproduce.plan("auto", str(tmp_path))
    assert len(sweep) == 72 and len(auto) == 60
    own = [p for p in auto if p.cfg.name in sweep]
    assert len(own) == 12 and all(p.labels["free"] == 3.0 for p in own)
    assert {p.cfg.free_epochs for p in auto} == {"auto", 1.0, 3.0, 5.0, 10.0}
    search = reproduce.plan("search", str(tmp_path))
    assert len({p.cfg.name for p in search}) == len(search) == 4 * 3 * len(reproduce.SEARCH)
    no_decay = {s.key for s in reproduce.SEARCH if s.flags.get("weight_decay") == 0}
    assert all(p.cfg.weight_decay == 0 for p in search if p.labels["setting"] in no_decay)
    assert {p.cfg.optimizer: p.cfg.weight_decay for p in search if p.labels["setting"] not in no_decay} == {
        "sgd": 5e-4,
        "adam": 0.0,
    }  # the trainer's defaults, as the page says
    cfg = auto[0].cfg
    assert reproduce.same_config(dataclasses.asdict(dataclasses.replace(cfg, threads=1, root="elsewhere")), cfg)
    assert not reproduce.same_config(dataclasses.asdict(dataclasses.replace(cfg, lr=cfg.lr * 2)), cfg)


def test_search_summary_says_where_adam_flattens_first_and_what_lawn_does():
    import pandas as pd

    key = reproduce.SEARCH[0].key
    rows = []
    for method, onset, acc in (("SGD", np.nan, 0.76), ("Adam", 900, 0.70), ("Adam-LAWN", 950, 0.73)):
        for _seed in (0, 1):
            rows.append(
                {
                    "setting": key,
                    "method": method,
                    "onset": onset,
                    "sustained": onset,
                    "test/acc": acc,
                    "status": "finished",
                    "total_steps": 1000,
                    "switch_step": np.nan,
                    "steps_per_epoch": 10,
                    **{m: 0.0 for m in (*reproduce.PER_STEP, "gn_trace")},
                }
            )
    text = reproduce.search_summary(pd.DataFrame(rows))
    assert text == (
        f"Adam flattens before SGD in 1 of 1 settings tried ({key}); by the epoch mean of the flat "
        f"fraction, in 1 ({key}). Where Adam flattens first: in {key} Adam is 6.00 points below SGD and "
        f"Adam-LAWN closes 50% of that gap (73.00 against 76.00)."
    )
