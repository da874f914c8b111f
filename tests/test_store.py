"""RunStore queries over a store written by the real sink."""

import json
import warnings
from datetime import UTC, datetime, timedelta

import pytest

from lawn_monitor import RunStore
from tests.helpers import write_run


@pytest.fixture
def store(tmp_path):
    ids = {
        "a": write_run(
            tmp_path,
            "adam-lawn",
            {"optimizer": "adam", "lawn": True, "batch_size": 64, "seed": 0},
            [1.0, 0.5, 0.25, 0.125, 0.0625],
            accs=[0.5, 0.9],
            lawn_switch=3,
        ),
        "b": write_run(
            tmp_path,
            "adam-lawn",
            {"optimizer": "adam", "lawn": True, "batch_size": 64, "seed": 1},
            [1.0, 0.6, 0.3],
            accs=[0.8],
        ),
        "c": write_run(
            tmp_path,
            "sgd",
            {"optimizer": "sgd", "lawn": False, "batch_size": 64, "seed": 0},
            [2.0, 1.0],
            accs=[0.7, 0.6],
        ),
    }
    return RunStore(tmp_path), ids


def test_runs_lists_every_run_with_config_and_accuracy(store):
    s, ids = store
    df = s.runs().set_index("run_id")
    assert set(df.index) == set(ids.values())
    a = df.loc[ids["a"]]
    assert a["status"] == "finished" and a["optimizer"] == "adam" and bool(a["lawn"]) is True
    assert a["progress"] == 1.0 and a["test_acc"] == pytest.approx(0.9) and a["best_test_acc"] == pytest.approx(0.9)
    c = df.loc[ids["c"]]
    assert c["test_acc"] == pytest.approx(0.6) and c["best_test_acc"] == pytest.approx(0.7)
    assert set(s.runs(optimizer="adam")["run_id"]) == {ids["a"], ids["b"]}
    assert s.runs(optimizer="no such").empty
    assert s.runs(status="running").empty


def test_series_layers_metrics_and_switch(store):
    s, ids = store
    df = s.series([ids["a"], ids["c"]], "train/loss")
    assert df.columns.tolist() == ["run_id", "step", "epoch", "wall_time", "x", "value", "min", "max", "smoothed"]
    assert df[df.run_id == ids["a"]]["value"].tolist() == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert df[df.run_id == ids["a"]]["step"].tolist() == [1, 2, 3, 4, 5]
    layers = s.layers(ids["a"], "weight_norm")
    assert set(layers["layer"]) == {"weight", "bias"} and len(layers) == 10
    assert "train/loss" in s.metrics(ids["a"]) and "weight_norm" in s.metrics(ids["a"])
    switch = s.switch_steps(list(ids.values()))
    assert switch["run_id"].tolist() == [ids["a"]] and switch["step"].tolist() == [3]


def test_summary_groups_over_seeds(store):
    s, ids = store
    table = s.summary("test/acc", by=["optimizer", "lawn"]).set_index("optimizer")
    assert table.loc["adam", "count"] == 2
    assert table.loc["adam", "mean"] == pytest.approx((0.9 + 0.8) / 2)
    assert table.loc["sgd", "mean"] == pytest.approx(0.6)
    best = s.summary("test/acc", by=["optimizer"], reduce="best").set_index("optimizer")
    assert best.loc["sgd", "mean"] == pytest.approx(0.7)


def test_sql_metacharacters_are_data(store):
    s, ids = store
    assert s.series([ids["a"]], "train/loss' OR '1'='1").empty
    assert s.series(["x'); DROP TABLE t; --"], "train/loss").empty
    assert s.runs(optimizer="adam' OR 1=1 --").empty
    assert s.layers(ids["a"], "weight_norm' OR layer <> '").empty


def test_broken_files_are_skipped_with_a_warning(store):
    s, ids = store
    metrics = s.root / ids["a"] / "metrics"
    (metrics / "zero.parquet").write_bytes(b"")
    (metrics / "garbage.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")  # magic right, body wrong
    good = next(p for p in sorted(metrics.glob("compact-*.parquet")))  # closed runs are compacted
    (metrics / "truncated.parquet").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (metrics / ".part-999.parquet.tmp").write_bytes(b"half a file")
    (s.root / "broken-run").mkdir()
    (s.root / "broken-run" / "run.json").write_text("{not json")
    fresh = RunStore(s.root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = fresh.series([ids["a"]], "train/loss")
        runs = fresh.runs()
    assert df["value"].tolist() == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert set(runs["run_id"]) == {*ids.values(), "broken-run"}  # listed, marked damaged
    assert runs.set_index("run_id").loc["broken-run", "status"] == "damaged"
    text = " ".join(str(w.message) for w in caught)
    for name in ("zero.parquet", "garbage.parquet", "truncated.parquet", "broken-run"):
        assert name in text


def test_silent_running_run_shows_as_stale(tmp_path):
    run_id = write_run(tmp_path, "crashed", {"optimizer": "adam"}, [1.0], status="finished")
    path = tmp_path / run_id / "run.json"
    info = json.loads(path.read_text())
    info["status"] = "running"
    info["heartbeat_at"] = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    path.write_text(json.dumps(info))
    assert RunStore(tmp_path).runs()["status"].tolist() == ["stale"]
    assert RunStore(tmp_path, stale_after=3600).runs()["status"].tolist() == ["running"]


def test_empty_and_missing_store(tmp_path):
    for root in (tmp_path, tmp_path / "missing"):
        s = RunStore(root)
        assert s.runs().empty and s.series(["x"], "train/loss").empty and s.layers("x", "weight_norm").empty
        assert s.summary().empty
