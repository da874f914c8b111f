"""The dashboard's chart builders, checked as Vega-Lite specs (no browser, no Streamlit)."""
from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd
import pytest

from app.charts import band_chart, layer_chart, metric_chart, run_labels, thin, with_se


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
    return pd.DataFrame(spec["datasets"][layer["data"]["name"]])


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
    assert rules["encoding"]["color"]["field"] == lines["encoding"]["color"]["field"] == "label"
    assert data_of(spec, rules)[["label", "step"]].to_dict("records") == [{"label": "adam-lawn", "step": 11}]


@pytest.mark.parametrize("switches", [None, pd.DataFrame(columns=["run_id", "step", "epoch"]),
                                      pd.DataFrame({"run_id": ["other"], "step": [5], "epoch": [0.5]})])
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
    df = pd.DataFrame({
        "layer": ["0.weight"] * 5 + ["2.weight"] * 5,
        "step": list(range(1, 6)) * 2,
        "value": [1.0, 1.1, 1.2, np.inf, 1.3, 2.0, 2.1, 2.2, 2.3, 2.4],
    })
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


def test_run_labels_are_unique():
    runs = pd.DataFrame({"run_id": ["a1", "a2", "b1"], "name": ["adam", "adam", "sgd"]})
    assert run_labels(runs) == {"a1": "adam (a1)", "a2": "adam (a2)", "b1": "sgd"}


def test_band_chart_draws_the_se_band_and_the_unbiased_points():
    estimate = pd.DataFrame({"run_id": "a", "label": "adam", "step": [1, 2, 3], "value": [4.0, 2.0, 1.0],
                             "se": [1.0, 3.0, 0.5]})
    points = pd.DataFrame({"run_id": "a", "label": "adam", "step": [2], "value": [2.5], "se": [0.25]})
    chart = band_chart(estimate, "trace", log_y=True, points=points)
    spec = chart.to_dict()
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]]
    assert marks == ["line", "area", "rule", "point"]
    band = chart.layer[1].data
    # On a log axis the band's low end may not reach zero: 2 - 3 < 0 is drawn at 2 / 10.
    assert band["low"].tolist() == [3.0, 0.2, 0.5] and band["high"].tolist() == [5.0, 5.0, 1.5]
    assert band_chart(estimate.iloc[0:0], "trace", points=points) is not None  # points alone still draw
    assert band_chart(estimate.iloc[0:0], "trace") is None


def test_with_se_joins_by_run_and_step():
    values = pd.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1], "value": [1.0, 2.0, 3.0]})
    se = pd.DataFrame({"run_id": ["a", "b"], "step": [2, 1], "value": [0.1, 0.3]})
    joined = with_se(values, se)
    assert joined["se"].fillna(-1).tolist() == [-1, 0.1, 0.3]
