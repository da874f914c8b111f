"""RunStore's chart queries: downsampling that keeps spikes, x axes, TensorBoard's EMA, layer
buckets, the Table-2 summary, and the `compact` command. Stores are written by the real sink."""

import math
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lawn_monitor import RunStore, compact
from lawn_monitor.sink import ParquetSink
from lawn_monitor.store import ema


def write(root, run_id, rows, config=None, flush=500, compact=True, status="finished", layers=None):
    """rows: list of (step, layer, metric, value); written through the sink in flushes."""
    info = {"name": run_id, "config": config or {}, "layers": layers or []}
    sink = ParquetSink(root, run_id, info, compact=compact)
    for i in range(0, len(rows), flush):
        chunk = rows[i : i + flush]
        sink.write(
            pa.table(
                {
                    "run_id": [run_id] * len(chunk),
                    "step": [r[0] for r in chunk],
                    "epoch": [r[0] / 100 for r in chunk],
                    "wall_time": [1e9 + r[0] for r in chunk],
                    "layer": [r[1] for r in chunk],
                    "metric": [r[2] for r in chunk],
                    "value": [r[3] for r in chunk],
                }
            )
        )
    if status != "running":
        sink.close(status)
    return sink


def tensorboard_ema(values, weight):
    """TensorBoard's smoothing loop, transcribed from its description (vz_line_chart)."""
    last, n, out = 0.0, 0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out.append(last / (1 - weight**n) if weight != 1 else last)
    return out


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.6, 0.9, 0.99])
def test_ema_is_tensorboards_and_passes_nan_and_inf_through(weight):
    rng = np.random.default_rng(0)
    values = list(rng.normal(size=200))
    values[5], values[50], values[51] = float("nan"), float("inf"), float("-inf")
    ours = ema(pd.Series(values), weight).tolist()
    ref = tensorboard_ema(values, weight)
    assert np.allclose(ours, ref, equal_nan=True)
    assert math.isnan(ours[5]) and ours[50] == float("inf") and ours[51] == float("-inf")
    with pytest.raises(ValueError):
        ema(pd.Series(values), 1.5)


def test_series_downsamples_keeping_last_min_and_max(tmp_path):
    n = 10_000
    values = [1.0] * n
    values[4321] = 1000.0  # one spike
    values[777] = float("nan")
    write(tmp_path, "r", [(s, "", "train/loss", values[s]) for s in range(n)])
    store = RunStore(tmp_path)
    df = store.series("r", "train/loss", points=100)
    assert len(df) == 100
    assert df["max"].max() == 1000.0 and (df["min"] == 1.0).all()  # NaN left out of min/max
    assert df["step"].iloc[-1] == n - 1 and df["value"].iloc[-1] == 1.0  # last value per bucket
    assert df["step"].is_monotonic_increasing
    full = store.series("r", "train/loss", points=None)
    assert len(full) == n and full["value"].isna().sum() == 1
    assert len(store.series("r", "train/loss", points=100_000)) == n  # fewer steps than points


def test_series_x_axes_and_smoothing(tmp_path):
    write(tmp_path, "r", [(s, "", "train/loss", float(s % 7)) for s in range(1, 301)])
    store = RunStore(tmp_path)
    by_step = store.series("r", "train/loss")
    assert by_step["x"].tolist() == by_step["step"].tolist()
    assert store.series("r", "train/loss", x="epoch")["x"].tolist() == pytest.approx([s / 100 for s in range(1, 301)])
    created = pd.Timestamp(store.run_info("r")["created_at"]).timestamp()
    by_time = store.series("r", "train/loss", x="time")
    assert by_time["x"].tolist() == pytest.approx((by_time["wall_time"] - created).tolist())
    smooth = store.series("r", "train/loss", smooth=0.9)
    assert smooth["smoothed"].tolist() == pytest.approx(tensorboard_ema(smooth["value"].tolist(), 0.9))
    assert smooth["smoothed"].std() < smooth["value"].std()
    with pytest.raises(ValueError):
        store.series("r", "train/loss", x="wall")


def test_each_run_is_downsampled_on_its_own_steps(tmp_path):
    write(tmp_path, "long", [(s, "", "lr", 1.0) for s in range(5000)])
    write(tmp_path, "short", [(s, "", "lr", 1.0) for s in range(50)])
    df = RunStore(tmp_path).series(["long", "short"], "lr", points=20)
    sizes = df.groupby("run_id").size()
    assert sizes["long"] == 20 and 10 < sizes["short"] <= 20  # whole-step buckets: ceil(50 / 20) = 3 steps


def test_layers_buckets_in_model_order(tmp_path):
    layers = ["features.0.weight", "features.10.weight", "features.2.weight", "classifier.weight"]
    rows = [(s, layer, "update_ratio", s * 10.0 + i) for s in range(1000) for i, layer in enumerate(layers)]
    write(tmp_path, "r", rows, flush=len(layers) * 10, layers=layers[:3])  # the Monitor lists them all
    store = RunStore(tmp_path)
    long = store.layers("r", "update_ratio", points=50)
    assert list(dict.fromkeys(long["layer"])) == layers  # the model's order, then unlisted ones
    assert long.groupby("layer").size().tolist() == [50] * 4
    first = long[long.layer == "features.0.weight"]
    assert first["step"].tolist() == list(range(0, 1000, 20))
    assert first["value"].tolist() == [(s + 19) * 10.0 for s in range(0, 1000, 20)]  # last in bucket
    assert store.layer_names(["r"], "update_ratio") == layers
    assert store.layer_names(["r"], "no such metric") == []
    matrix = store.layer_matrix("r", "update_ratio", points=50)
    assert matrix.shape == (4, 50) and list(matrix.index) == layers


def test_summary_is_table_two_with_stderr_and_filters(tmp_path):
    accs = {("adam", True): [0.93, 0.94, 0.95], ("adam", False): [0.90, 0.92], ("sgd", False): [0.94]}
    for (opt, lawn), values in accs.items():
        for seed, acc in enumerate(values):
            write(
                tmp_path,
                f"{opt}-{lawn}-{seed}",
                [(1, "", "test/acc", 0.5), (2, "", "test/acc", acc)],
                config={"optimizer": opt, "lawn": lawn, "batch_size": 256, "seed": seed, "dataset": "digits"},
            )
    write(
        tmp_path,
        "crashed",
        [(1, "", "test/acc", 0.1)],
        config={"optimizer": "adam", "lawn": True, "batch_size": 256, "dataset": "digits"},
        status="failed",
    )
    store = RunStore(tmp_path)
    table = store.summary("test/acc", by=["optimizer", "lawn"]).set_index(["optimizer", "lawn"])
    row = table.loc[("adam", True)]
    assert row["count"] == 3 and row["mean"] == pytest.approx(0.94)
    assert row["std"] == pytest.approx(0.01) and row["stderr"] == pytest.approx(0.01 / np.sqrt(3))
    assert row["min"] == pytest.approx(0.93) and row["max"] == pytest.approx(0.95)
    assert table.loc[("sgd", False), "count"] == 1 and np.isnan(table.loc[("sgd", False), "std"])
    assert len(store.summary("test/acc", by=["optimizer"], lawn=True)) == 1  # config filter
    # by optimizer alone, LAWN still splits Adam (never averaged with and without it); with every
    # status, the failed run (no seed in its config) counts as a seed of its own.
    pooled = store.summary("test/acc", by=["optimizer"], status=None).set_index(["optimizer", "lawn"])
    assert pooled["count"].to_dict() == {("adam", False): 2, ("adam", True): 4, ("sgd", False): 1}
    assert pooled.loc[("adam", True), "seeds"] == "0,1,2"
    assert store.summary("test/acc", by=["optimizer", "lawn"], reduce="min")["max"].tolist() == [0.5, 0.5, 0.5]
    assert store.summary("test/acc", by=["no_such_key"]).empty
    assert store.runs(status=["failed"])["run_id"].tolist() == ["crashed"]


def test_table2_never_pools_runs_that_differ_beyond_the_seed_and_counts_a_seed_once(tmp_path):
    """The issue's case: after a rerun, runs of 12 and 30 epochs were averaged as if seeds, and seed 0
    counted twice. Configs as the trainer records them; the store and Table 2 as the dashboard reads them."""
    from lawn_monitor.paper import TABLE_BY, split_keys, table2, table2_grid

    base = {
        "dataset": "digits",
        "model": "cnn",
        "batch_size": 32,
        "epochs": 30,
        "free_epochs": 5.0,
        "device": "cpu",
        "workers": 4,
        "threads": 0,
        "curvature_budget": 0.02,
        "progress": True,
    }
    methods = {
        "sgd": {"optimizer": "sgd", "lawn": False, "lr": 0.1},
        "adam-lawn": {"optimizer": "adam", "lawn": True, "lr": 0.003},
    }

    def run(run_id, method, seed, acc, **changes):
        config = {**base, **methods[method], "seed": seed, "name": f"{method}-s{seed}", **changes}
        write(tmp_path, run_id, [(1, "", "test/acc", 0.1), (2, "", "test/acc", acc)], config=config)
        time.sleep(0.01)  # created_at (ms) orders the runs as written

    for seed, acc in enumerate([0.90, 0.92, 0.94]):
        run(f"a-adam-lawn-s{seed}", "adam-lawn", seed, acc)
        run(f"a-sgd-s{seed}", "sgd", seed, acc - 0.1)
    run("b-adam-lawn-s0-rerun", "adam-lawn", 0, 0.96)  # seed 0 again: replaces the first run of it
    # Seed 1 again where only keys that do not change what is computed differ: the same experiment.
    run(
        "b-adam-lawn-s1-gpu",
        "adam-lawn",
        1,
        0.98,
        device="cuda",
        workers=0,
        threads=1,
        curvature_budget=0.1,
        progress=False,
    )
    run("c-adam-lawn-12ep-s0", "adam-lawn", 0, 0.80, epochs=12)  # another experiment
    run("c-adam-lawn-12ep-s1", "adam-lawn", 1, 0.82, epochs=12)
    run("d-sgd-failed", "sgd", 3, 0.0)
    (tmp_path / "d-sgd-failed" / "run.json").write_text(
        (tmp_path / "d-sgd-failed" / "run.json").read_text().replace('"finished"', '"failed"')
    )

    summary = RunStore(tmp_path).summary("test/acc", by=["dataset", "optimizer", "lawn", "batch_size"])
    assert list(summary.columns[:5]) == ["dataset", "optimizer", "lawn", "batch_size", "epochs"]  # what splits
    cells = summary.set_index(["optimizer", "epochs"])
    adam30 = cells.loc[("adam", 30)]
    assert adam30["count"] == 3 and adam30["seeds"] == "0,1,2"  # seeds 0 and 1 once each, their latest runs
    assert adam30["mean"] == pytest.approx((0.96 + 0.98 + 0.94) / 3)
    assert cells.loc[("adam", 12), "count"] == 2 and cells.loc[("adam", 12), "mean"] == pytest.approx(0.81)
    assert cells.loc[("sgd", 30), "count"] == 3 and cells.loc[("sgd", 30), "mean"] == pytest.approx(0.82)
    assert len(summary) == 3  # lr differs between the methods but never within one: it splits nothing

    assert split_keys(summary, "digits") == ["epochs"]
    table = table2(summary, "digits")
    assert table["method"].tolist() == ["SGD · epochs=30", "Adam-LAWN · epochs=12", "Adam-LAWN · epochs=30"]
    assert table["count"].tolist() == [3, 2, 3]
    grid = table2_grid(table)
    assert grid.loc["Adam-LAWN · epochs=30", "32"].startswith("96.00 ± 2.00 (n=3)")
    from lawn_monitor.paper import table2_text

    report = table2_text(summary)  # what `lawn-monitor compare --table2` prints
    assert "| Adam-LAWN · epochs=12 | 81.00 ± 1.41 (n=2) |" in report and "| SGD · epochs=30 |" in report
    cli = subprocess.run(
        [sys.executable, "-m", "lawn_monitor.cli", "compare", "--table2", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert cli.strip() == table2_text(RunStore(tmp_path).summary("test/acc", by=TABLE_BY)).strip()
    # Nothing splits when every run is one experiment: the plain method names.
    plain = RunStore(tmp_path).summary("test/acc", by=["dataset", "optimizer", "lawn", "batch_size"], epochs=30)
    assert "epochs" not in plain.columns and table2(plain, "digits")["method"].tolist() == ["SGD", "Adam-LAWN"]


def test_runs_saved_with_flat_and_with_nested_probe_settings_pool(tmp_path):
    """The trainer saves its probe settings nested under "probes"; runs from before saved them
    flat. Neither layout splits an experiment: the Monitor leaves the training untouched."""
    import dataclasses

    from lawn_monitor.probes import ProbeConfig

    base = {"dataset": "digits", "optimizer": "adam", "lawn": True, "batch_size": 64, "epochs": 4, "probe_size": 32}
    flat = {"probe_every": 1, "curvature": True, "gn_points": 32, "curvature_budget": 0.4}
    write(tmp_path, "old-s0", [(1, "", "test/acc", 0.90)], config={**base, **flat, "seed": 0})
    time.sleep(0.01)
    for seed, budget in ((1, 0.4), (2, 0.1)):
        nested = {"probes": dataclasses.asdict(ProbeConfig(budget=budget, seed=seed)), "probe_size": 16}
        write(tmp_path, f"new-s{seed}", [(1, "", "test/acc", 0.92)], config={**base, **nested, "seed": seed})
    summary = RunStore(tmp_path).summary("test/acc", by=["optimizer", "lawn", "batch_size"])
    assert len(summary) == 1 and summary["count"].tolist() == [3] and summary["seeds"].tolist() == ["0,1,2"]


def test_sql_metacharacters_in_every_filter_are_data(tmp_path):
    evil = "x' OR '1'='1'; DROP TABLE t; --"
    write(tmp_path, "r", [(1, "", "train/loss", 1.0), (1, evil, evil, 2.0)], config={"optimizer": evil})
    store = RunStore(tmp_path)
    assert store.series("r", evil, layer=evil)["value"].tolist() == [2.0]  # stored and found as data
    assert store.series("r", "train/loss' OR '1'='1")["value"].empty
    assert store.runs(optimizer=evil)["run_id"].tolist() == ["r"]
    assert store.summary(evil, by=["optimizer"]).empty  # no layer-"" rows of that metric
    assert store.summary("train/loss", by=["optimizer"], optimizer=evil)["optimizer"].tolist() == [evil]
    assert store.layers("r", evil)["layer"].tolist() == [evil]


def test_compact_command_merges_a_store_and_keeps_every_row(tmp_path):
    for i in range(3):
        write(tmp_path, f"r{i}", [(s, "", "train/loss", float(s)) for s in range(300)], flush=10, compact=False)
    write(
        tmp_path,
        "live",
        [(s, "", "train/loss", float(s)) for s in range(30)],
        flush=10,
        compact=False,
        status="running",
    )
    before = RunStore(tmp_path).series(["r0", "r1", "r2", "live"], "train/loss", points=None)
    assert len(list((tmp_path / "r0" / "metrics").glob("*.parquet"))) == 30
    out = subprocess.run(
        [sys.executable, "-m", "lawn_monitor.cli", "compact", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "compacted 3 of 3 ended runs (90 files merged)" in out
    for i in range(3):
        assert len(list((tmp_path / f"r{i}" / "metrics").glob("*.parquet"))) == 1
    assert len(list((tmp_path / "live" / "metrics").glob("*.parquet"))) == 3  # its writer compacts it
    after = RunStore(tmp_path).series(["r0", "r1", "r2", "live"], "train/loss", points=None)
    pd.testing.assert_frame_equal(before, after)


def test_cached_per_run_results_follow_new_rows(tmp_path):
    sink = write(tmp_path, "live", [(1, "", "test/acc", 0.5)], config={"optimizer": "adam"}, status="running")
    write(tmp_path, "done", [(1, "", "test/acc", 0.7)], config={"optimizer": "adam"})
    store = RunStore(tmp_path)
    assert store.runs().set_index("run_id")["test_acc"].to_dict() == {"live": 0.5, "done": 0.7}
    assert store.summary(by=["optimizer"], status=None)["mean"].tolist() == [pytest.approx(0.6)]
    sink.write(
        pa.table(
            {
                "run_id": ["live"],
                "step": [2],
                "epoch": [0.02],
                "wall_time": [1e9 + 2],
                "layer": [""],
                "metric": ["test/acc"],
                "value": [0.9],
            }
        )
    )
    sink.close("finished")
    runs = store.runs().set_index("run_id")
    assert runs["test_acc"].to_dict() == {"live": 0.9, "done": 0.7} and runs.loc["live", "best_test_acc"] == 0.9
    assert store.summary(by=["optimizer"])["mean"].tolist() == [pytest.approx(0.8)]


def test_series_reads_an_ended_run_once_and_a_live_one_as_it_grows(tmp_path):
    sink = write(tmp_path, "live", [(s, "", "train/loss", 1.0 / s) for s in range(1, 11)], status="running")
    write(tmp_path, "done", [(s, "", "train/loss", 2.0 / s) for s in range(1, 11)])
    store = RunStore(tmp_path)
    queried = []
    query = store._query
    store._query = lambda sql, params, run_ids, columns, files=None: (
        queried.append(list(run_ids)),
        query(sql, params, run_ids, columns, files),
    )[1]
    first = store.series(["live", "done"], "train/loss")
    assert queried == [["done", "live"]] and len(first) == 20
    assert store.series(["done", "live"], "train/loss").equals(first)  # nothing changed: no query
    assert queried == [["done", "live"]]
    sink.write(
        pa.table(
            {
                "run_id": ["live"],
                "step": [11],
                "epoch": [0.11],
                "wall_time": [1e9 + 11],
                "layer": [""],
                "metric": ["train/loss"],
                "value": [0.05],
            }
        )
    )
    grown = store.series(["live", "done"], "train/loss")
    assert queried[-1] == ["live"]  # only the run whose files changed is read again
    assert grown.loc[grown["run_id"] == "live", "step"].max() == 11 and len(grown) == 21
    assert store.series(["live"], "train/loss", smooth=0.5)["smoothed"].iloc[-1] != 0.05  # smoothing is per call
    sink.close("finished")


def test_sync_fsyncs_parts_including_ones_compaction_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(compact, "GRACE", -1.0)  # merged parts are removed at the next pass, not 30 s later
    sink = write(tmp_path, "r", [(s, "", "lr", 1.0) for s in range(40)], flush=1, status="running")
    sink._stop_compactor()  # let the merges of these 40 one-row parts finish
    assert len(sink._unsynced) == 40 and len(list((tmp_path / "r" / "metrics").glob("*.parquet"))) < 40
    sink.sync()
    assert sink._unsynced == []
    sink.close("finished")
    assert RunStore(tmp_path).series("r", "lr", points=None)["step"].tolist() == list(range(40))


def test_runs_list_takes_accuracy_from_run_json_and_falls_back_to_the_files(tmp_path):
    import json

    write(tmp_path, "new", [(1, "", "test/acc", 0.8), (2, "", "test/acc", 0.7), (2, "l", "test/acc", 0.1)])
    write(tmp_path, "old", [(1, "", "test/acc", 0.6), (2, "", "test/acc", 0.9)])
    info = json.loads((tmp_path / "new" / "run.json").read_text())
    assert (info["test_acc"], info["best_test_acc"], info["test_acc_step"]) == (0.7, 0.8, 2)
    old = tmp_path / "old" / "run.json"  # as an older version wrote it: no accuracy in run.json
    legacy = {k: v for k, v in json.loads(old.read_text()).items() if "test_acc" not in k}
    old.write_text(json.dumps(legacy))
    for path in (tmp_path / "new" / "metrics").glob("*.parquet"):
        path.unlink()  # so "new" can only be answered from run.json
    runs = RunStore(tmp_path).runs().set_index("run_id")
    assert runs.loc["new", "test_acc"] == 0.7 and runs.loc["new", "best_test_acc"] == 0.8
    assert runs.loc["old", "test_acc"] == 0.9 and runs.loc["old", "best_test_acc"] == 0.9


def test_results_as_arrow_and_polars_equal_pandas(tmp_path):
    """RunStore(output="arrow" | "polars") returns the same rows as pandas, and config values of
    mixed types across runs (a number in one run.json, text in another) do not break the conversion."""
    pl = pytest.importorskip("polars")
    for seed, lr in ((0, 0.1), (1, "auto")):
        rows = [(s, "", "train/loss", 1.0 / s) for s in range(1, 41)] + [
            (s, "fc", "weight_norm", float(s)) for s in range(1, 41)
        ]
        rows.append((40, "", "test/acc", 0.5 + seed / 10))
        write(tmp_path, f"r{seed}", rows, config={"optimizer": "sgd", "seed": seed, "lr": lr})
    frames = {fmt: RunStore(tmp_path, output=fmt) for fmt in ("pandas", "arrow", "polars")}
    calls = {
        "runs": lambda s: s.runs(),
        "series": lambda s: s.series(["r0", "r1"], "train/loss", points=10),
        "layers": lambda s: s.layers("r0", "weight_norm"),
        "summary": lambda s: s.summary("test/acc", by=["optimizer", "lr"]),
    }
    for name, call in calls.items():
        expected = call(frames["pandas"])
        as_arrow, as_polars = call(frames["arrow"]), call(frames["polars"])
        assert isinstance(as_arrow, pa.Table) and isinstance(as_polars, pl.DataFrame), name
        assert as_arrow.column_names == list(expected.columns) == as_polars.columns, name
        assert as_arrow.num_rows == len(expected) == as_polars.height, name
        for column in ("value", "mean", "step"):
            if column in expected:
                assert as_arrow[column].to_pylist() == expected[column].tolist() == as_polars[column].to_list()
    with pytest.raises(ValueError, match="output must be one of"):
        RunStore(tmp_path, output="excel")


def test_sql_reads_every_row_once_with_runs_as_a_table(tmp_path):
    """RunStore.sql over the `metrics` and `runs` views: parameters, a join on config, and a live
    run whose parts are being compacted counted once (the live-file rule)."""
    write(tmp_path, "done", [(s, "", "train/loss", float(s)) for s in range(1, 101)], config={"optimizer": "adam"})
    live = write(
        tmp_path,
        "live",
        [(s, "", "train/loss", float(s)) for s in range(1, 61)],
        flush=7,
        config={"optimizer": "sgd"},
        status="running",
    )
    live.sync()  # some parts merged, some not: each row must still count once
    store = RunStore(tmp_path)
    counts = store.sql(
        "SELECT r.optimizer, count(*) AS n, count(DISTINCT m.step) AS steps FROM metrics m "
        "JOIN runs r USING (run_id) WHERE m.metric = ? GROUP BY 1 ORDER BY 1",
        ["train/loss"],
    )
    assert counts.to_dict("records") == [
        {"optimizer": "adam", "n": 100, "steps": 100},
        {"optimizer": "sgd", "n": 60, "steps": 60},
    ]
    only = store.sql("SELECT DISTINCT run_id FROM metrics", run_ids=["live"])
    assert only["run_id"].tolist() == ["live"]
    live.close("finished")
    assert RunStore(tmp_path / "empty").sql("SELECT count(*) AS n FROM metrics")["n"].tolist() == [0]


def test_series_with_se_brings_the_standard_error_by_step(tmp_path):
    """gn_trace and its SE are written as two metrics; series(..., with_se=True) joins them by
    run and step, NaN where an estimate has no SE, and keeps it through downsampling."""
    rows = []
    for step in range(1, 201, 5):
        rows.append((step, "", "gn_trace", float(step)))
        if step != 6:
            rows.append((step, "", "gn_trace_se", step / 10))
    write(tmp_path, "r", rows)
    full = RunStore(tmp_path).series("r", "gn_trace", points=None, with_se=True)
    assert full["step"].tolist() == list(range(1, 201, 5))
    assert np.allclose(full["se"].fillna(-1), [-1 if s == 6 else s / 10 for s in range(1, 201, 5)])
    few = RunStore(tmp_path).series("r", "gn_trace", points=8, with_se=True)
    assert np.allclose(few["se"], few["step"] / 10)  # each bucket's last step, its own SE
    assert "se" not in RunStore(tmp_path).series("r", "gn_trace").columns
