"""The dashboard's chart builders, checked as Vega-Lite specs (no browser, no Streamlit)."""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd
import pytest

from lawn_monitor.dashboard.charts import (
    band_chart,
    batch_size_chart,
    color_domain,
    group_chart,
    heatmap_chart,
    layer_chart,
    metric_chart,
    thin,
    threshold_chart,
)
from lawn_monitor.dashboard.styles import (
    DASHED,
    FAMILY_COLORS,
    SOLID,
    Palette,
    group_palette,
    method_palette,
    run_labels,
    run_styles,
)
from lawn_monitor.dashboard.tables import (
    aggregate,
    eta_seconds,
    filter_options,
    filter_runs,
    group_labels,
    progress_text,
)
from lawn_monitor.paper import PAPER_TABLE2, batch_label, figure1_frame, method_name, table2, table2_grid


def runs_frame(n_steps: int = 20) -> pd.DataFrame:
    """Two runs' series in the shape the page passes in (run_id, step, value, label)."""
    rows = []
    for run_id, label in [("r1", "adam-lawn"), ("r2", "sgd")]:
        for step in range(1, n_steps + 1):
            rows.append({"run_id": run_id, "label": label, "step": step, "value": 1.0 / step})
    return pd.DataFrame(rows)


def layers_of(spec: dict) -> list[dict]:
    return spec.get("layer", [spec])


def data_of(spec: dict, layer: dict) -> pd.DataFrame:
    """A layer's data set (or the chart's, which Altair hoists to the top when layers share it)."""
    return pd.DataFrame(spec["datasets"][layer.get("data", spec.get("data"))["name"]])


def test_metric_chart_draws_one_line_per_run():
    chart = metric_chart(runs_frame(), "train loss", log_y=True)
    assert isinstance(chart, alt.Chart)
    spec = chart.to_dict()
    assert spec["mark"]["type"] == "line"
    assert spec["encoding"]["color"]["field"] == "label"
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    assert {t["field"] for t in spec["encoding"]["tooltip"]} == {"label", "step", "value"}
    assert set(data_of(spec, spec)["label"]) == {"adam-lawn", "sgd"}


def test_metric_chart_marks_the_lawn_switch_in_the_runs_colour():
    switches = pd.DataFrame({"run_id": ["r1"], "step": [11], "epoch": [1.1]})
    chart = metric_chart(runs_frame(), "test accuracy", switches=switches)
    assert isinstance(chart, alt.LayerChart)
    spec = chart.to_dict()
    lines, rules = layers_of(spec)
    assert rules["mark"]["type"] == "rule" and rules["mark"]["strokeDash"]
    assert rules["encoding"]["stroke"]["field"] == lines["encoding"]["color"]["field"] == "label"
    # The rule takes the run's colour from the same domain and range, without a legend of its own.
    assert rules["encoding"]["stroke"]["scale"] == lines["encoding"]["color"]["scale"]
    assert rules["encoding"]["stroke"]["legend"] is None
    assert data_of(spec, rules)[["label", "step"]].to_dict("records") == [{"label": "adam-lawn", "step": 11}]


@pytest.mark.parametrize(
    "switches",
    [
        None,
        pd.DataFrame(columns=["run_id", "step", "epoch"]),
        pd.DataFrame({"run_id": ["other"], "step": [5], "epoch": [0.5]}),
    ],
)
def test_metric_chart_without_a_switch_of_its_runs_has_no_rule(switches):
    assert isinstance(metric_chart(runs_frame(), "loss", switches=switches), alt.Chart)


def test_non_finite_values_are_dropped_and_counted():
    df = runs_frame()
    df.loc[[0, 1, 2, 3], "value"] = [np.nan, np.inf, -np.inf, 0.0]
    spec = metric_chart(df, "train loss", log_y=True).to_dict()
    json.dumps(spec, allow_nan=False)  # a spec with NaN or inf in it is not valid JSON
    assert len(data_of(spec, spec)) == len(df) - 4
    assert spec["title"]["subtitle"].startswith("4 ")

    # On a linear axis zero is a value like any other.
    spec = metric_chart(df, "train loss", log_y=False).to_dict()
    assert len(data_of(spec, spec)) == len(df) - 3


@pytest.mark.parametrize("values", [[], [np.nan, np.inf]])
def test_nothing_to_draw_gives_none(values):
    df = pd.DataFrame({"run_id": "r1", "label": "a", "step": range(len(values)), "value": values})
    assert metric_chart(df, "loss", log_y=True) is None
    assert layer_chart(df.rename(columns={"run_id": "layer"}), "layers") is None


def test_layer_chart_draws_one_line_per_layer_on_a_log_axis():
    df = pd.DataFrame(
        {
            "layer": ["0.weight"] * 5 + ["2.weight"] * 5,
            "step": list(range(1, 6)) * 2,
            "value": [1.0, 1.1, 1.2, np.inf, 1.3, 2.0, 2.1, 2.2, 2.3, 2.4],
        }
    )
    chart = layer_chart(df, "adam-lawn")
    assert isinstance(chart, alt.Chart)
    spec = chart.to_dict()
    assert spec["encoding"]["color"]["field"] == "layer"
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    assert len(data_of(spec, spec)) == 9

    spec = layer_chart(df, "adam-lawn", switch_step=3).to_dict()
    rule = layers_of(spec)[1]
    assert rule["mark"]["type"] == "rule"
    assert data_of(spec, rule)["step"].tolist() == [3]


def test_thin_caps_points_per_series_and_keeps_the_last():
    df = runs_frame(n_steps=1001)
    thinned = thin(df, by="run_id", max_points=100)
    for _, group in thinned.groupby("run_id"):
        assert len(group) <= 101
        assert group["step"].iloc[-1] == 1001
    assert thin(df, by="run_id", max_points=5000).equals(df)


def test_run_labels_are_short_and_unique():
    runs = pd.DataFrame(
        {
            "run_id": ["20261129-101500-adam-3f2a", "20261129-101700-adam-9c01", "x-sgd-0001"],
            "name": ["adam", "adam", "sgd"],
        }
    )
    assert run_labels(runs) == {
        "20261129-101500-adam-3f2a": "adam ·3f2a",
        "20261129-101700-adam-9c01": "adam ·9c01",
        "x-sgd-0001": "sgd",
    }
    same_tail = pd.DataFrame({"run_id": ["a-0001", "b-0001"], "name": ["adam", "adam"]})
    assert run_labels(same_tail) == {"a-0001": "adam (a-0001)", "b-0001": "adam (b-0001)"}


def test_a_run_colour_comes_from_its_config_and_stays_when_runs_are_added():
    runs = pd.DataFrame(
        {
            "run_id": ["s", "sl", "a0", "al", "a1", "x"],
            "name": ["sgd", "sgd-lawn", "adam-s0", "adam-lawn", "adam-s1", "mine"],
            "optimizer": ["sgd", "sgd", "adam", "adam", "adam", None],
            "lawn": [False, True, False, "True", False, None],
            "created_at": [f"2026-01-01T00:00:0{i}" for i in range(6)],
        }
    )
    styles = run_styles(runs)
    assert styles["s"].color == FAMILY_COLORS["sgd"] and styles["a0"].color == FAMILY_COLORS["adam"]
    assert styles["al"].color == FAMILY_COLORS["adam"] and styles["al"].lawn and not styles["a0"].lawn
    assert styles["a1"].color != styles["a0"].color  # a second seed: the same hue, another shade
    red = lambda c: int(c[1:3], 16) > int(c[5:7], 16)  # noqa: E731
    assert red(styles["a1"].color) and not red(styles["s"].color)
    # Another run added later (or a page showing fewer runs) changes nobody's style.
    later = pd.concat(
        [
            runs,
            pd.DataFrame(
                {
                    "run_id": ["n"],
                    "name": ["sgd"],
                    "optimizer": ["sgd"],
                    "lawn": [False],
                    "created_at": ["2026-01-02T00:00:00"],
                }
            ),
        ],
        ignore_index=True,
    )
    assert all(run_styles(later)[r].color == styles[r].color for r in runs["run_id"])
    assert run_styles(runs.iloc[::-1])["a1"] == styles["a1"]
    palette = Palette.of(styles, ["al", "a0"])
    assert palette.labels == ("adam-lawn", "adam-s0") and palette.dashed == (True, False)
    spec = palette.dash().to_dict()
    assert spec["scale"]["range"] == [DASHED, SOLID]


def test_group_and_method_palettes_follow_the_runs_colours():
    runs = pd.DataFrame(
        {
            "run_id": ["a0", "a1", "s0"],
            "name": ["adam-s0", "adam-s1", "sgd"],
            "optimizer": ["adam", "adam", "sgd"],
            "lawn": [True, True, False],
            "created_at": ["1", "2", "3"],
        }
    )
    styles = run_styles(runs)
    groups = group_palette(styles, {"a0": "optimizer=adam", "a1": "optimizer=adam", "s0": "optimizer=sgd"})
    assert dict(zip(groups.labels, groups.colors)) == {
        "optimizer=adam": styles["a0"].color,
        "optimizer=sgd": FAMILY_COLORS["sgd"],
    }
    assert dict(zip(groups.labels, groups.dashed)) == {"optimizer=adam": True, "optimizer=sgd": False}
    methods = method_palette(["SGD", "Adam", "Adam-LAWN"])
    colors = dict(zip(methods.labels, methods.colors))
    assert colors["Adam"] == FAMILY_COLORS["adam"] and colors["Adam-LAWN"] not in (colors["Adam"], colors["SGD"])


def test_band_chart_draws_the_se_band_and_the_unbiased_points():
    estimate = pd.DataFrame(
        {"run_id": "a", "label": "adam", "step": [1, 2, 3], "value": [4.0, 2.0, 1.0], "se": [1.0, 3.0, 0.5]}
    )
    points = pd.DataFrame({"run_id": "a", "label": "adam", "step": [2], "value": [2.5], "se": [0.25]})
    chart = band_chart(estimate, "trace", log_y=True, points=points)
    spec = chart.to_dict()
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]]
    assert marks == ["area", "line", "rule", "point"]
    band = chart.layer[0].data
    # On a log axis the band's low end may not reach zero: 2 - 3 < 0 is drawn at 2 / 10.
    assert band["low"].tolist() == [3.0, 0.2, 0.5] and band["high"].tolist() == [5.0, 5.0, 1.5]
    assert band_chart(estimate.iloc[0:0], "trace", points=points) is not None  # points alone still draw
    assert band_chart(estimate.iloc[0:0], "trace") is None


def marks(spec: dict) -> list[str]:
    return [m["type"] if isinstance(m, dict) else m for m in (layer["mark"] for layer in layers_of(spec))]


def test_metric_chart_on_another_x_axis():
    df = runs_frame().assign(x=lambda d: d["step"] / 10)
    switches = pd.DataFrame({"run_id": ["r1"], "x": [1.1]})
    spec = metric_chart(df, "loss", switches=switches, x="x", x_title="epoch").to_dict()
    lines, rules = layers_of(spec)
    assert lines["encoding"]["x"]["field"] == "x" and lines["encoding"]["x"]["title"] == "epoch"
    assert data_of(spec, rules)["x"].tolist() == [1.1]
    # Switches without that axis (a time axis has none) draw no rule.
    assert isinstance(metric_chart(df, "loss", switches=switches.rename(columns={"x": "step"}), x="x"), alt.Chart)


def test_layer_chart_draws_the_reference_ratio():
    df = pd.DataFrame({"layer": ["0.weight"] * 3, "step": [1, 2, 3], "value": [1e-2, 1e-3, 1e-4]})
    spec = layer_chart(df, "update ratio", switch_step=2, reference=1e-3).to_dict()
    assert marks(spec) == ["line", "rule", "rule"]
    reference = layers_of(spec)[2]
    assert reference["encoding"]["y"]["field"] == "value"
    assert data_of(spec, reference)["value"].tolist() == [1e-3]


def test_heatmap_spans_each_bucket_keeps_layer_order_and_marks_the_switch():
    df = pd.DataFrame(
        {
            "layer": ["features.0.weight"] * 3 + ["classifier.weight"] * 3,
            "step": [1, 11, 21] * 2,
            "value": [1.0, 2.0, 3.0, 0.5, 0.0, 0.25],  # a zero has no colour on a log scale
        }
    )
    chart = heatmap_chart(df, "weight norm", switch_step=11)
    spec = chart.to_dict()
    cells, rule = layers_of(spec)
    assert cells["mark"]["type"] == "rect"
    assert cells["encoding"]["x2"]["field"] == "step_end"
    assert cells["encoding"]["y"]["sort"] == ["features.0.weight", "classifier.weight"]
    assert cells["encoding"]["color"]["scale"]["type"] == "log"
    data = data_of(spec, cells)
    assert len(data) == 5 and cells["title"]["subtitle"].startswith("1 ")
    assert data.set_index(["layer", "step"]).loc[("features.0.weight", 21), "step_end"] == 31
    assert (data["step_end"] > data["step"]).all()
    assert data_of(spec, rule)["step"].tolist() == [11]
    assert heatmap_chart(df.assign(value=0.0), "nothing") is None
    assert isinstance(heatmap_chart(df, "linear", log_color=False), alt.Chart)


def test_threshold_chart_draws_the_limit_dashed_in_the_runs_colour():
    values = pd.DataFrame({"run_id": "a", "label": "adam", "step": [5, 10], "value": [3.0, 8.0]})
    limit = pd.DataFrame({"run_id": "a", "label": "adam", "step": [5, 10], "value": [20.0, 20.0]})
    spec = threshold_chart(values, limit, "sharpness").to_dict()
    line, dashed = layers_of(spec)
    assert line["mark"]["point"] is True
    assert dashed["mark"]["strokeDash"] and dashed["encoding"]["stroke"]["field"] == "label"
    assert data_of(spec, dashed)["value"].tolist() == [20.0, 20.0]
    assert threshold_chart(values, limit.iloc[0:0], "sharpness") is not None
    only_limit = threshold_chart(values.iloc[0:0], limit, "sharpness").to_dict()
    assert only_limit["title"]["text"] == "sharpness"


def series_of(run_values: dict[str, list[float]], steps=None) -> pd.DataFrame:
    rows = []
    for run_id, values in run_values.items():
        for i, v in enumerate(values):
            rows.append({"run_id": run_id, "x": float(steps[i] if steps else i + 1), "value": v})
    return pd.DataFrame(rows)


def test_aggregate_averages_seeds_with_each_band():
    df = series_of({"s0": [1.0, 2.0, 3.0], "s1": [3.0, 4.0, np.nan], "o": [10.0, 10.0, 10.0]})
    groups = {"s0": "adam", "s1": "adam", "o": "sgd"}
    std = aggregate(df, groups, "std")
    adam = std[std["label"] == "adam"].reset_index(drop=True)
    assert adam["x"].tolist() == [1.0, 2.0, 3.0]
    assert adam["value"].tolist() == [2.0, 3.0, 3.0]
    assert adam["runs"].tolist() == [2, 2, 1]  # NaN left out, not averaged in
    assert adam["high"].iloc[0] == pytest.approx(2.0 + np.sqrt(2.0))
    assert adam["low"].iloc[2] == adam["high"].iloc[2] == 3.0  # one run: no spread
    stderr = aggregate(df, groups, "stderr")
    assert stderr.loc[0, "high"] == pytest.approx(2.0 + np.sqrt(2.0) / np.sqrt(2))
    minmax = aggregate(df, groups, "minmax")
    assert minmax.loc[0, ["low", "high"]].tolist() == [1.0, 3.0]
    assert set(std["label"]) == {"adam", "sgd"}
    with pytest.raises(ValueError, match="band"):
        aggregate(df, groups, "iqr")
    assert aggregate(df.iloc[0:0], groups, "std").empty


def test_aggregate_lines_up_runs_logged_at_different_times():
    # Two seeds on a time axis: never the same x, yet 4 bins give 4 averaged points.
    df = pd.concat(
        [
            series_of({"a": [1.0, 2.0, 3.0, 4.0]}, steps=[0.0, 1.1, 2.1, 3.1]),
            series_of({"b": [3.0, 4.0, 5.0, 6.0]}, steps=[0.2, 1.0, 2.0, 3.0]),
        ]
    )
    agg = aggregate(df, {"a": "g", "b": "g"}, "std", bins=4)
    assert agg["runs"].tolist() == [2, 2, 2, 2]
    assert agg["value"].tolist() == [2.0, 3.0, 4.0, 5.0]


def test_group_chart_draws_mean_and_band():
    agg = pd.DataFrame(
        {"label": "g", "x": [1.0, 2.0], "value": [1.0, 0.5], "low": [-1.0, 0.4], "high": [2.0, 0.6], "runs": [2, 2]}
    )
    chart = group_chart(agg, "loss", log_y=True)
    spec = chart.to_dict()
    assert marks(spec) == ["area", "line"]
    band = chart.data  # line and band share one data set (Altair hoists it to the layer)
    assert band["low"].tolist() == [0.1, 0.4]  # clipped to value / 10 on a log axis
    assert group_chart(agg.iloc[0:0], "loss") is None


def test_group_labels_name_the_shared_config():
    runs = pd.DataFrame({"run_id": ["a", "b"], "optimizer": ["adam", "sgd"], "batch_size": [256.0, 4096.0]})
    assert group_labels(runs, ["optimizer", "batch_size"], {}) == {
        "a": "optimizer=adam, batch_size=256",
        "b": "optimizer=sgd, batch_size=4096",
    }
    assert group_labels(runs, [], {"a": "x", "b": "y"}) == {"a": "x", "b": "y"}


def test_filters_compare_as_text_like_the_url():
    runs = pd.DataFrame(
        {
            "run_id": list("abcd"),
            "status": ["running", "finished", "finished", "failed"],
            "optimizer": ["adam", "adam", "sgd", "sgd"],
            "lawn": [True, False, True, False],
            "batch_size": [256, 256, 4096, 256],
            "seed": [0, 0, 0, 0],
        }
    )
    assert filter_options(runs) == {
        "optimizer": ["adam", "sgd"],
        "lawn": ["False", "True"],
        "batch_size": ["256", "4096"],
    }  # seed has one value: no filter
    assert filter_runs(runs, [], {})["run_id"].tolist() == list("abcd")
    assert filter_runs(runs, ["finished"], {"lawn": ["True"]})["run_id"].tolist() == ["c"]
    assert filter_runs(runs, [], {"batch_size": ["256"], "optimizer": []})["run_id"].tolist() == ["a", "b", "d"]
    assert filter_runs(runs, [], {"dataset": ["cifar10"]}).empty


def test_eta_from_the_pace_so_far():
    info = {
        "step": 100,
        "total_steps": 400,
        "created_at": "2026-01-01T00:00:00+00:00",
        "heartbeat_at": "2026-01-01T00:00:50+00:00",
    }
    assert eta_seconds(info) == 150.0
    assert progress_text("adam", info) == "adam: step 100 / 400 (25%), ETA 2 min 30 s"
    assert eta_seconds({**info, "step": 0}) is None
    assert eta_seconds({**info, "total_steps": None}) is None
    assert eta_seconds({**info, "step": 400}) == 0.0
    assert progress_text("adam", {**info, "step": 400}) == "adam: step 400 / 400 (100%), done"
    assert progress_text("sgd", {"step": 7}) == "sgd: step 7"
    assert progress_text("sgd", {**info, "heartbeat_at": None}).endswith("ETA unknown")


def test_paper_names_and_batch_labels():
    assert method_name("adam", True) == "Adam-LAWN" and method_name("sgd", "False") == "SGD"
    assert method_name("adamp", False) == "AdamP"
    assert [batch_label(b) for b in (256, 4096, 4000, 10240, 16384)] == ["256", "4k", "4k", "10k", "16k"]
    assert PAPER_TABLE2["cifar100"]["Adam-LAWN"]["4k"] == 73.12


def test_table2_sets_our_runs_beside_the_paper():
    summary = pd.DataFrame(
        {
            "dataset": ["cifar10", "cifar10", "cifar10", "digits"],
            "optimizer": ["adam", "adam", "sgd", "adam"],
            "lawn": [True, False, False, True],
            "batch_size": [4096, 256, 256, 32],
            "mean": [0.9370, 0.9350, 0.9400, 0.98],
            "std": [0.001, np.nan, 0.002, 0.0],
            "stderr": [0.0005, np.nan, 0.001, 0.0],
            "count": [4, 1, 2, 3],
            "min": [0.936, 0.935, 0.938, 0.98],
            "max": [0.938, 0.935, 0.942, 0.98],
        }
    )
    table = table2(summary, "cifar10")
    assert table["method"].tolist() == ["SGD", "Adam", "Adam-LAWN"]  # the paper's order
    adam_lawn = table.iloc[2]
    assert adam_lawn["mean"] == pytest.approx(93.70) and adam_lawn["paper"] == 93.74
    assert adam_lawn["delta"] == pytest.approx(-0.04)
    grid = table2_grid(table)
    assert list(grid.columns) == ["256", "4k"]
    assert grid.loc["Adam-LAWN", "4k"] == "93.70 ± 0.10 (n=4) | paper 93.74"
    assert grid.loc["Adam", "256"] == "93.50 (n=1) | paper 93.48"
    assert pd.isna(grid.loc["Adam-LAWN", "256"])
    digits = table2(summary, "digits")
    assert digits["paper"].isna().all() and table2_grid(digits).loc["Adam-LAWN", "32"] == "98.00 ± 0.00 (n=3)"
    assert table2(summary.iloc[0:0], "cifar10").empty

    frame = figure1_frame(table)
    assert sorted(frame["source"].value_counts().items()) == [("ours", 3), ("paper", 3)]
    chart = batch_size_chart(frame, "figure 1")
    spec = chart.to_dict()
    lines, bars = layers_of(spec)
    assert lines["encoding"]["x"]["scale"]["type"] == "log"
    assert lines["encoding"]["strokeDash"]["field"] == "source"
    assert len(data_of(spec, bars)) == 2  # error bars for the rows with a std


def test_a_spike_inside_a_downsampling_bucket_stays_in_the_chart(tmp_path):
    """400 steps into 100 buckets: the spike at step 202 is no bucket's last value, but the chart's
    min-max band carries it, through the real store and the chart builder."""
    import pyarrow as pa

    from lawn_monitor import RunStore
    from lawn_monitor.sink import ParquetSink

    values = [1.0 / (1 + s) for s in range(1, 401)]
    values[201] = 50.0  # step 202
    sink = ParquetSink(tmp_path, "spiky", {"name": "spiky", "config": {}})
    n = len(values)
    sink.write(
        pa.table(
            {
                "run_id": ["spiky"] * n,
                "step": list(range(1, n + 1)),
                "epoch": [0.0] * n,
                "wall_time": [0.0] * n,
                "layer": [""] * n,
                "metric": ["train/loss"] * n,
                "value": values,
            }
        )
    )
    sink.close("finished")
    df = RunStore(tmp_path).series("spiky", "train/loss", points=100, smooth=0.6).assign(label="spiky")
    assert 50.0 not in df["value"].tolist()  # no bucket ends on the spike...
    spec = metric_chart(df, "train loss", log_y=True).to_dict()
    drawn = [data_of(spec, layer) for layer in layers_of(spec)]
    assert any((d.get("max") == 50.0).any() for d in drawn)  # ...but a layer draws its range
    assert marks(spec) == ["area", "line"]  # the raw range (filled, outlined), the smoothed line


def test_smoothed_line_over_the_faint_raw_one_and_percent_axes():
    df = runs_frame().assign(smoothed=lambda d: d["value"] * 0.9)
    spec = metric_chart(df, "train accuracy", percent=True, y_title="train accuracy (%)").to_dict()
    raw, main = layers_of(spec)
    # The raw values: a band from each bucket's min to max, outlined faintly; one value a bucket
    # (no min or max given) makes a band of no height whose outline is the raw line itself.
    assert raw["mark"]["type"] == "area" and raw["mark"]["strokeOpacity"] < 1 and raw["mark"]["fillOpacity"] < 1
    assert (raw["encoding"]["y"]["field"], raw["encoding"]["y2"]["field"]) == ("min", "max")
    drawn = data_of(spec, raw)
    assert drawn["min"].tolist() == drawn["max"].tolist() == drawn["value"].tolist()
    assert main["encoding"]["y"]["field"] == "smoothed" and main["encoding"]["y"]["title"] == "train accuracy (%)"
    assert data_of(spec, main)["value"].max() == pytest.approx(100.0)  # shares drawn as %
    assert "legend" not in raw["encoding"]["stroke"] or raw["encoding"]["stroke"]["legend"] is None
    assert main["encoding"]["color"]["legend"]["symbolType"] == "stroke"  # line swatches


def test_side_by_side_heatmaps_share_one_colour_domain():
    a = pd.DataFrame({"layer": ["w"] * 3, "step": [1, 11, 21], "value": [1.0, 1.5, 2.0]})
    b = pd.DataFrame({"layer": ["w"] * 3, "step": [1, 11, 21], "value": [1.0, 1.0, 1.0]})
    domain = color_domain([a, b], center=1.0)
    assert domain == pytest.approx([0.5, 2.0])  # symmetric around 1 on a log scale
    specs = [heatmap_chart(df, "growth", domain=domain, center=1.0).to_dict() for df in (a, b)]
    scales = [s["encoding"]["color"]["scale"] for s in specs]
    assert scales[0] == scales[1] and scales[0]["domain"] == domain and scales[0]["domainMid"] == 1.0
    assert color_domain([a, b]) == [1.0, 2.0]
    assert color_domain([a.iloc[0:0]]) is None


def test_growth_relative_to_the_switch():
    from lawn_monitor.dashboard.tables import relative_to

    df = pd.DataFrame(
        {"layer": ["w", "w", "w", "b", "b", "b"], "step": [1, 11, 21] * 2, "value": [1.0, 2.0, 2.0, 1.0, 1.5, 3.0]}
    )
    out = relative_to(df, 11)
    assert out["value"].tolist() == [0.5, 1.0, 1.0, 1.0 / 1.5, 1.0, 2.0]
    assert relative_to(df, 99)["value"].tolist()[-1] == 1.0  # ended before: its last value
    assert relative_to(df.iloc[0:0], 5).empty


# --- robust to outliers, and the pages' defaults (issue: a dashboard that stays right after the runs end)


def test_a_heatmap_colour_domain_is_not_set_by_one_column():
    steps = np.arange(0, 2000, 10)
    layers = [f"l{i}" for i in range(10)]
    df = pd.DataFrame(
        [(layer, s, 1e-3 * (1 + i)) for i, layer in enumerate(layers) for s in steps],
        columns=["layer", "step", "value"],
    )
    df.loc[df["step"] == steps[-1], "value"] = 5e3  # the last step at LR 0: one column of huge ratios
    lo, hi = color_domain([df])
    assert lo == pytest.approx(1e-3) and hi == pytest.approx(1e-2)  # the layers' contrast, not 1e-3..5e3


def test_y_axes_ignore_one_outlier_when_asked():
    from lawn_monitor.dashboard.charts import robust_domain

    df = runs_frame(200)
    df.loc[df.index[-1], "value"] = 1e-14  # the final step's update ratio at LR 0
    spec = metric_chart(df, "update ratio", log_y=True, robust=True).to_dict()
    main = next(layer for layer in layers_of(spec) if "color" in layer["encoding"])
    lo, hi = main["encoding"]["y"]["scale"]["domain"]
    assert 1e-3 < lo < 1 / 200 and hi > 1  # spans the runs' values, their start included, not down to 1e-14
    assert main["mark"]["clip"] is True
    plain = metric_chart(df, "update ratio", log_y=True).to_dict()
    assert (
        "domain"
        not in next(layer for layer in layers_of(plain) if "color" in layer["encoding"])["encoding"]["y"]["scale"]
    )
    assert robust_domain(np.linspace(1, 2, 100), log_y=False) is None  # nothing to leave out
    assert robust_domain(1 / np.arange(1, 200), log_y=True) is None  # a loss curve's steep start is no outlier


def test_threshold_line_is_clipped_to_the_estimates_range():
    values = pd.DataFrame({"run_id": "a", "label": "sgd", "step": [5, 10, 15], "value": [3.0, 4.0, 5.0]})
    limit = pd.DataFrame({"run_id": "a", "label": "sgd", "step": [5, 10, 15], "value": [20.0, 200.0, 2e6]})
    spec = threshold_chart(values, limit, "sharpness").to_dict()
    dashed = layers_of(spec)[-1]
    assert dashed["mark"]["clip"] is True
    lo, hi = dashed["encoding"]["y"]["scale"]["domain"]
    assert hi < 200 and lo < 3.0  # the line where it meets the estimates, not its run to 2e6
    only_limit = threshold_chart(values.iloc[0:0], limit, "sharpness").to_dict()
    assert layers_of(only_limit)[-1]["encoding"]["y"]["scale"]["domain"][1] < 2e6


def test_crosshair_and_wall_clock_axis():
    df = runs_frame(5).assign(smoothed=lambda d: d["value"] * 1.1)
    spec = metric_chart(df, "loss", crosshair=True).to_dict()
    hover = layers_of(spec)[-1]
    params = hover.get("params") or spec.get("params")
    assert hover["mark"]["type"] == "rule" and params[0]["select"]["nearest"] is True
    tips = {t["title"]: t for t in hover["encoding"]["tooltip"]}
    assert {"adam-lawn (smoothed)", "adam-lawn (raw)", "sgd (smoothed)", "sgd (raw)"} <= set(tips)
    wide = data_of(spec, hover)
    assert wide[tips["sgd (raw)"]["field"]].tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    wall = df.assign(x=pd.to_datetime(1.7e9 + df["step"], unit="s"))
    spec = metric_chart(wall, "loss", x="x", temporal=True).to_dict()
    assert (
        next(layer for layer in layers_of(spec) if "color" in layer["encoding"])["encoding"]["x"]["type"] == "temporal"
    )


def test_group_palette_by_optimizer_alone_keeps_groups_apart():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "al", "s", "sl"],
            "name": ["adam", "adam-lawn", "sgd", "sgd-lawn"],
            "optimizer": ["adam", "adam", "sgd", "sgd"],
            "lawn": [False, True, False, True],
            "created_at": ["1", "2", "3", "4"],
        }
    )
    groups = group_palette(
        run_styles(runs), {"a": "optimizer=adam", "al": "optimizer=adam", "s": "optimizer=sgd", "sl": "optimizer=sgd"}
    )
    assert dict(zip(groups.labels, groups.colors)) == {
        "optimizer=adam": FAMILY_COLORS["adam"],
        "optimizer=sgd": FAMILY_COLORS["sgd"],
    }
    mixed = group_palette(run_styles(runs), {"a": "g1", "s": "g1", "al": "g2", "sl": "g2"})
    assert len(set(mixed.colors)) == 2


def test_page_defaults_from_the_selected_runs():
    from lawn_monitor.dashboard.tables import default_pair, mark_winning_trials, runs_dataset

    runs = pd.DataFrame(
        {
            "run_id": ["s", "sl", "al", "a", "o"],
            "optimizer": ["sgd", "sgd", "adam", "adam", "sgd"],
            "lawn": [False, True, True, False, False],
            "dataset": ["mnist1d", "mnist1d", "mnist1d", "mnist1d", "aaa"],
        }
    )
    assert default_pair(runs, ["sl", "s", "al", "a"]) == ("al", "a")  # the Adam pair, the page's reading
    assert default_pair(runs, ["sl", "s", "a"]) == ("sl", "s")
    assert default_pair(runs, ["al", "s", "a"]) == ("al", "a")  # Adam-LAWN against Adam, not SGD
    assert default_pair(runs, ["s", "a"]) == ("s", "a")
    assert runs_dataset(runs, ["s", "a", "o"]) == "mnist1d"
    assert mark_winning_trials(runs) is runs  # no studies: unchanged
    study = pd.DataFrame(
        {
            "run_id": list("abc"),
            "study": ["x", "x", "y"],
            "trial": [0, 1, 0],
            "best": [False, True, True],  # RunStore.runs(): the highest final validation accuracy
            "best_test_acc": [0.9, 0.7, 0.1],  # never what chooses: a winner is chosen on validation
        }
    )
    assert mark_winning_trials(study)["trial"].tolist() == ["0", "1 ★", "0 ★"]
