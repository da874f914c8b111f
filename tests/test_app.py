"""The dashboard end to end through Streamlit's AppTest, every page, on stores written by real runs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from lawn_monitor import Monitor, RunStore
from lawn_monitor.metrics import FLAT_LOSS
from tests.helpers import APP, run_app, train_tiny_run

PAGES = ["runs", "live", "flattening", "adaptivity", "compare"]
TRACE_TITLE = "Hessian trace: GN proxy ± 1 SE, Hutchinson (◆)"


@pytest.fixture(autouse=True)
def restore_roots(monkeypatch):
    """run_app serves its root (the dashboard reads only roots it was started with): each test's
    changes to those variables are undone after it."""
    monkeypatch.delenv("LAWN_MONITOR_ROOT", raising=False)
    monkeypatch.delenv("LAWN_MONITOR_ALLOWED_ROOTS", raising=False)


def charts(at: AppTest) -> dict[str, list[tuple[dict, pd.DataFrame]]]:
    """Each chart's title and its layers in drawing order: (layer spec, the data it draws)."""
    found = {}
    for i, element in enumerate(at.get("vega_lite_chart")):
        spec = json.loads(element.proto.spec)
        named = {ds.name: pa.ipc.open_stream(ds.data.data).read_pandas() for ds in element.proto.datasets}
        layers = spec.get("layer", [spec])
        title = spec.get("title", layers[0].get("title", {})).get("text", f"untitled {i}")
        found[title] = [
            (layer, named.get((layer.get("data") or spec.get("data") or {}).get("name"))) for layer in layers
        ]
    return found


def mark(layer: dict) -> str:
    return layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]


def main_line(layers) -> pd.DataFrame:
    """The data of a chart's main layer: the one that carries the run legend (``color``)."""
    return next(df for layer, df in layers if "color" in layer.get("encoding", {}))


def of_mark(layers, kind: str) -> list[pd.DataFrame]:
    return [df for layer, df in layers if mark(layer) == kind]


def texts(at: AppTest) -> str:
    return "\n".join(
        e.value
        for kind in ("markdown", "caption", "info", "title", "subheader")
        for e in at.get(kind)
        if isinstance(e.value, str)
    )


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> Path:
    """Three finished 30-step runs: Adam-LAWN over two seeds (switch after 10 steps) and plain SGD."""
    root = tmp_path_factory.mktemp("sweep") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only add overhead
    try:
        train_tiny_run(root, "adam-lawn-s0", "adam", lawn=True, seed=0)
        train_tiny_run(root, "adam-lawn-s1", "adam", lawn=True, seed=1)
        train_tiny_run(root, "sgd-s0", "sgd", lawn=False, seed=0)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def ids(sweep_store) -> dict[str, str]:
    runs = RunStore(sweep_store).runs()
    return {name.replace("-s", "-"): run_id for name, run_id in zip(runs["name"], runs["run_id"])}


# --- Runs -------------------------------------------------------------------------------------


def test_runs_page_lists_every_run(sweep_store):
    at = run_app(sweep_store)
    table = at.dataframe[0].value
    assert sorted(table["label"]) == ["adam-lawn-s0", "adam-lawn-s1", "sgd-s0"]
    assert set(table["status"]) == {"finished"}
    assert {"dataset", "optimizer", "lawn", "batch_size", "seed", "progress", "test_acc", "best_test_acc"} <= set(table)
    assert table["progress"].tolist() == [1.0, 1.0, 1.0]
    assert (table["best_test_acc"] >= table["test_acc"]).all()
    assert at.get("download_button")  # the table as CSV


def test_runs_page_filters_from_the_url(sweep_store):
    at = run_app(sweep_store, params={"optimizer": "sgd"})
    assert at.dataframe[0].value["label"].tolist() == ["sgd-s0"]
    at = run_app(sweep_store, params={"status": "running"})
    assert at.dataframe[0].value.empty


def tick(at: AppTest, run_ids: list[str]) -> None:
    """Tick these runs' rows in the Runs table, as a click would (the table's key changes with its
    rows and the selection, so it is looked up each time)."""
    [table] = [e for e in at.dataframe if e.proto.id and "runs_table." in (e.key or e.proto.id)]
    rows = [i for i, run_id in enumerate(table.value["run_id"]) if run_id in run_ids]
    at.session_state[table.key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    at.run()


def test_ticked_rows_select_the_runs_every_page_shows(sweep_store, ids):
    at = run_app(sweep_store)
    tick(at, [ids["sgd-0"]])
    assert at.session_state["runs"] == [ids["sgd-0"]]
    assert at.multiselect(key="runs").value == [ids["sgd-0"]]  # the sidebar's picker follows
    at.switch_page("views/flattening.py").run()
    assert set(main_line(charts(at)["train loss"])["label"]) == {"sgd-s0"}


def test_a_filter_never_moves_or_drops_the_selection(sweep_store, ids):
    """Tick two Adam runs, filter them out (optimizer = sgd): the SGD row is not ticked, the other
    pages still show the Adam runs, and the page says two selected runs are hidden. Ticking the
    SGD row then adds it; the hidden two stay selected."""
    at = run_app(sweep_store)
    adam = [ids["adam-lawn-0"], ids["adam-lawn-1"]]
    tick(at, adam)
    at.multiselect(key="optimizer").set_value(["sgd"]).run()
    table = next(e for e in at.dataframe if "runs_table." in (e.key or ""))
    assert table.value["label"].tolist() == ["sgd-s0"]
    assert table.proto.selection_mode and not _ticked(table)
    assert "2 selected runs hidden by the filter" in texts(at)
    assert sorted(at.session_state["runs"]) == sorted(adam)
    tick(at, [ids["sgd-0"]])
    assert sorted(at.session_state["runs"]) == sorted(adam + [ids["sgd-0"]])
    at.switch_page("views/compare.py").run()
    caption = next(c.value for c in at.caption if c.value.startswith("Runs:"))
    assert set(caption[len("Runs: ") : caption.index(" (choose")].split(", ")) == {
        "adam-lawn-s0",
        "adam-lawn-s1",
        "sgd-s0",
    }


def _ticked(table) -> list[int]:
    """The rows a table shows ticked: its default selection (the page sets it from the run ids)."""
    default = json.loads(table.proto.selection_default or "{}") if hasattr(table.proto, "selection_default") else {}
    return (default.get("selection") or {}).get("rows", [])


# --- Live -------------------------------------------------------------------------------------


def test_live_page_shows_ended_runs_with_their_switch(sweep_store, ids):
    at = run_app(sweep_store, "live", params={"runs": ["adam-lawn-s0", "sgd-s0"]})
    assert "No run is training now" in at.info[0].value
    found = charts(at)
    assert {"train loss", "test accuracy", "learning rate", "gradient norm (whole model)", TRACE_TITLE} == set(found)
    loss = main_line(found["train loss"])
    [switch] = of_mark(found["train loss"], "rule")
    assert set(loss["label"]) == {"adam-lawn-s0", "sgd-s0"} and loss["step"].max() == 30
    assert switch[["label", "step"]].to_dict("records") == [{"label": "adam-lawn-s0", "step": 11}]
    band, proxy, _, _, hutchinson = [df for _, df in found[TRACE_TITLE]]  # band, line, switch, SE bars, points
    assert proxy["step"].tolist()[:3] == [1, 2, 3]  # dense early
    assert (band["low"] < band["value"]).all() and (band["high"] > band["value"]).all()
    assert set(hutchinson["step"]) == {1, 5, 30} and hutchinson["se"].notna().all()
    assert set(main_line(found["test accuracy"])["step"]) == {10, 20, 30}
    assert main_line(found["test accuracy"])["value"].max() > 1  # accuracy in %
    assert sorted(p.text for p in at.get("progress")) == [
        "adam-lawn-s0: step 30 / 30 (100%), done",
        "sgd-s0: step 30 / 30 (100%), done",
    ]


@pytest.mark.filterwarnings("ignore:Monitor. no probe_batch")
def test_live_page_follows_a_running_run(tmp_path):
    root = tmp_path / "runs"
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=root, name="live", config={"optimizer": "sgd", "lawn": False}, total_steps=10)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))

    def train(steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            monitor.step(loss=loss.detach(), logits=logits.detach(), targets=y)
        monitor.flush()  # still open: status running

    train(3)
    at = run_app(root, "live")
    assert "No run is training now" not in texts(at)
    assert [p.text for p in at.get("progress")][0].startswith("live: step 3 / 10 (30%), ETA ")
    assert main_line(charts(at)["train loss"])["step"].max() == 3
    train(4)
    at.run()  # what the 2 s fragment timer does in the browser
    assert [p.text for p in at.get("progress")][0].startswith("live: step 7 / 10 (70%)")
    assert main_line(charts(at)["train loss"])["step"].max() == 7
    monitor.close()
    at.run()
    assert not at.exception
    assert "No run is training now" in at.info[0].value


@pytest.mark.filterwarnings("ignore:Monitor. no probe_batch")
def test_live_draws_ended_selected_runs_faintly_and_analysis_pages_refresh_by_panel(tmp_path):
    root = tmp_path / "runs"
    baseline = train_tiny_run(root, "adam", "adam", lawn=False, steps=20)
    model = nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    monitor = Monitor(
        model, opt, root=root, name="adam-lawn-live", config={"optimizer": "adam", "lawn": True}, total_steps=10
    )
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        monitor.step(loss=loss.detach())
    monitor.flush()
    at = run_app(root, "live", params={"runs": ["adam", "adam-lawn-live"]})
    assert [p.text.split(":")[0] for p in at.get("progress")] == ["adam-lawn-live"]  # only the live one
    assert "Faint: selected runs that have ended" in texts(at)
    layers = charts(at)["train loss"]
    main = next(layer for layer, _ in layers if "color" in layer["encoding"])
    faint = dict(zip(main["encoding"]["opacity"]["scale"]["domain"], main["encoding"]["opacity"]["scale"]["range"]))
    assert faint == {"adam": 0.35, "adam-lawn-live": 1.0}
    assert set(main_line(layers)["label"]) == {"adam", "adam-lawn-live"}
    # Analysis pages redraw their charts by panel while a selected run trains, never the whole app
    # on a timer: no page-wide refresh toggle, and the page draws the live run's data.
    at.switch_page("views/flattening.py").run()
    assert not at.exception and not [c for c in at.checkbox if c.key == "refresh"]
    assert "adam-lawn-live" in set(main_line(charts(at)["train loss"])["label"])
    monitor.close()
    at.run()
    assert not at.exception
    assert baseline


# --- Loss flattening --------------------------------------------------------------------------


def test_flattening_page_overlays_the_signals(sweep_store, ids):
    at = run_app(sweep_store, "flattening", params={"runs": ["adam-lawn-s0", "sgd-s0"]})
    found = charts(at)
    assert {
        "train loss",
        "gradient norm (whole model)",
        TRACE_TITLE,
        "sharpness vs. stability threshold (dotted)",
        "logit norm (mean L2)",
        "weight norm (whole model)",
        "max softmax probability",
        f"flattened samples (loss < {FLAT_LOSS:g})",
    } == set(found)
    for title in ("train loss", "logit norm (mean L2)", "max softmax probability", "weight norm (whole model)"):
        assert set(main_line(found[title])["label"]) == {"adam-lawn-s0", "sgd-s0"}, title
    sharp = found["sharpness vs. stability threshold (dotted)"]
    assert [mark(layer) for layer, _ in sharp] == ["line", "rule", "line"]  # points+lines, switch, threshold
    values, threshold = sharp[0][1], sharp[2][1]
    assert set(threshold["label"]) == {"adam-lawn-s0", "sgd-s0"} and (threshold["value"] > 0).all()
    # Each run against its own line: Adam's preconditioned sharpness, SGD's plain one; labels (and
    # so colours) stay the runs' own.
    assert values.groupby("label")["shown"].first().to_dict() == {"adam-lawn-s0": "P⁻¹H", "sgd-s0": "H"}
    prob = main_line(found["max softmax probability"])["value"]
    assert ((prob > 0) & (prob <= 1)).all()
    flat = main_line(found[f"flattened samples (loss < {FLAT_LOSS:g})"])
    assert flat["value"].max() <= 100 and sharp[0][0]["encoding"]["y"]["title"] == "top eigenvalue (P⁻¹H / H)"
    # Default smoothing: the smoothed line over the faint raw values (an outlined min-max band).
    raw, line, _ = found["train loss"]
    assert mark(raw[0]) == "area" and raw[0]["mark"]["strokeOpacity"] < 1
    assert line[0]["encoding"]["y"]["field"] == "smoothed"
    assert line[0]["encoding"]["y"]["scale"]["type"] == "log"
    at.checkbox(key="log").uncheck().run()
    assert charts(at)["train loss"][1][0]["encoding"]["y"]["scale"]["type"] == "linear"
    at.slider(key="smooth").set_value(0.0).run()  # smoothing off: one line per run, no faint copy
    assert [mark(layer) for layer, _ in charts(at)["train loss"]] == ["line", "rule"]


def test_the_crosshair_on_every_chart_is_a_sidebar_switch(sweep_store):
    """Off by default on the pages of small multiples (it costs the browser time per chart); on,
    every line chart gets the hover rule with every run's value, smoothed and raw."""

    def hover_rules(found, title):
        return [df for layer, df in found[title] if mark(layer) == "rule" and "opacity" in layer["encoding"]]

    params = {"runs": ["adam-lawn-s0", "sgd-s0"]}
    at = run_app(sweep_store, "flattening", params=params)
    assert not hover_rules(charts(at), "train loss")
    at = run_app(sweep_store, "flattening", params={**params, "crosshair": "true"})
    assert not at.exception and at.checkbox(key="crosshair").value
    (wide,) = hover_rules(charts(at), "train loss")
    assert len(wide.columns) == 1 + 2 * 2  # the step, then each run's smoothed and raw value
    at = run_app(sweep_store, "live", params={**params, "crosshair": "true"})
    assert hover_rules(charts(at), "learning rate")


# --- Weight adaptivity ------------------------------------------------------------------------


def test_adaptivity_page_tells_growth_from_freeze(sweep_store, ids):
    at = run_app(sweep_store, "adaptivity", params={"a": "adam-lawn-s0", "b": "sgd-s0"})
    assert [s.value for s in at.selectbox][:2] == [ids["adam-lawn-0"], ids["sgd-0"]]
    found = charts(at)
    every = {"adam-lawn-s0", "adam-lawn-s1", "sgd-s0"}  # nothing chosen on the Runs page: the newest runs
    for title in (
        "weight norm (whole model)",
        "weight growth (whole model)",
        "update ratio, raw (whole model)",
        "learning rate, log scale (why the raw ratio falls)",
    ):
        assert set(main_line(found[title])["label"]) == every, title
    growth = main_line(found["weight growth (whole model)"])
    assert growth.sort_values("step").groupby("label")["value"].first().round(6).eq(1.0).all()
    specs = [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]
    heat = [
        s for s in specs if s.get("layer", [s])[0]["mark"]["type"] == "rect" or s.get("mark", {}).get("type") == "rect"
    ]
    assert len(heat) == 4  # weight growth and update ratio per unit LR, two runs each
    cells = heat[0]["layer"][0]
    assert cells["encoding"]["y"]["sort"] == ["0.weight", "0.bias", "2.weight", "2.bias"]  # model order
    assert heat[0]["layer"][1]["mark"]["type"] == "rule"  # the Adam-LAWN run's switch
    assert heat[1]["mark"]["type"] == "rect"  # SGD: no switch
    scale = lambda spec: spec.get("layer", [spec])[0]["encoding"]["color"]["scale"]  # noqa: E731
    assert scale(heat[0]) == scale(heat[1]) and scale(heat[0])["domainMid"] == 1.0  # one domain, centred at 1
    assert scale(heat[2]) == scale(heat[3])
    at.checkbox(key="more").check().run()  # four more pairs, drawn only when asked
    specs = [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]
    assert sum(s.get("layer", [s])[0]["mark"]["type"] == "rect" for s in specs) == 12


# --- Compare ----------------------------------------------------------------------------------


def test_compare_smooths_and_averages_seeds(sweep_store, ids):
    at = run_app(
        sweep_store,
        "compare",
        params={
            "runs": ["adam-lawn-s0", "adam-lawn-s1", "sgd-s0"],
            "metric": "train/loss",
            "smooth": "0.6",
            "group": ["optimizer", "lawn"],
            "band": "stderr",
        },
    )
    title = "train/loss (smoothed 0.6), mean and mean ± standard error per group"
    group = main_line(charts(at)[title])
    assert set(group["label"]) == {"optimizer=adam, lawn=True", "optimizer=sgd, lawn=False"}
    # Against the store: the mean over the two Adam-LAWN seeds of their smoothed loss.
    store = RunStore(sweep_store)
    both = store.series([ids["adam-lawn-0"], ids["adam-lawn-1"]], "train/loss", smooth=0.6)
    expected = both.groupby("step")["smoothed"].agg(["mean", "std"])
    adam = group[group["label"] == "optimizer=adam, lawn=True"].set_index("x")
    assert adam["runs"].eq(2).all()
    np.testing.assert_allclose(adam["value"], expected["mean"].loc[adam.index], rtol=1e-9)
    np.testing.assert_allclose(adam["high"] - adam["value"], expected["std"].loc[adam.index] / np.sqrt(2), rtol=1e-9)


def test_compare_one_line_per_run_over_epoch(sweep_store, ids):
    at = run_app(sweep_store, "compare", params={"runs": ["adam-lawn-s0", "sgd-s0"], "x": "epoch"})
    layers = charts(at)["test/acc"]
    lines = main_line(layers)
    [switch] = [df for layer, df in layers if mark(layer) == "rule" and "stroke" in layer["encoding"]]
    assert set(lines["label"]) == {"adam-lawn-s0", "sgd-s0"}
    assert set(lines["x"]) == {10.0, 20.0, 30.0}  # one step per epoch in the tiny runs
    assert switch["x"].tolist() == [11.0]
    assert at.selectbox[0].value == "test/acc"


def test_compare_one_layer_of_a_per_layer_metric(sweep_store, ids):
    run_ids = [ids["adam-lawn-0"], ids["sgd-0"]]
    at = run_app(
        sweep_store,
        "compare",
        params={"runs": ["adam-lawn-s0", "sgd-s0"], "metric": "update_ratio", "layer": "2.weight", "smooth": "0"},
    )
    assert at.selectbox[1].options == ["(whole model)", "0.weight", "0.bias", "2.weight", "2.bias"]
    lines = main_line(charts(at)["update_ratio of 2.weight"])
    expected = RunStore(sweep_store).series(run_ids, "update_ratio", "2.weight")
    assert len(lines) == len(expected) and np.allclose(sorted(lines["value"]), sorted(expected["value"]))
    at.selectbox[0].set_value("test/acc").run()  # a metric without layers: back to the whole model
    assert not at.exception
    assert at.selectbox[1].value == "" and "test/acc" in charts(at)


def test_compare_table2_from_finished_runs(sweep_store):
    at = run_app(sweep_store, "compare")
    grid = at.dataframe[0].value
    assert list(grid.columns) == ["64"]
    assert grid.index.tolist() == ["SGD", "Adam-LAWN"]
    assert "(n=2)" in grid.loc["Adam-LAWN", "64"] and "paper" not in grid.loc["Adam-LAWN", "64"]
    assert "Figure 1: test accuracy against batch size" in charts(at)
    assert len(at.get("download_button")) == 4  # the chart as SVG and PNG, the plotted data and Table 2


def test_view_state_survives_moving_between_pages(sweep_store):
    at = run_app(sweep_store, "compare")
    at.selectbox(key="metric").set_value("grad_norm").run()
    at.switch_page("views/runs.py").run()
    at.switch_page("views/compare.py").run()
    assert at.selectbox(key="metric").value == "grad_norm"


# --- stores that are empty, missing or damaged ------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("make_dir", [False, True])
def test_empty_or_missing_store_says_how_to_start(tmp_path, monkeypatch, page, make_dir):
    root = tmp_path / "runs"
    if make_dir:
        root.mkdir()
    monkeypatch.setenv("LAWN_MONITOR_ROOT", str(root))  # set for this test only: later tests use ./runs
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page != "runs":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception
    assert not at.dataframe and not at.get("vega_lite_chart")
    assert "lawn-monitor train" in at.info[0].value and str(root) in at.info[0].value


@pytest.fixture(scope="module")
def damaged_store(sweep_store, tmp_path_factory) -> Path:
    """The sweep with broken files beside the good ones: empty, garbage and corrupt Parquet parts,
    and a run folder whose run.json is cut short."""
    root = tmp_path_factory.mktemp("damaged") / "runs"
    shutil.copytree(sweep_store, root)
    metrics = root / RunStore(root).run_ids()[0] / "metrics"
    (metrics / "part-999990-empty.parquet").write_bytes(b"")
    (metrics / "part-999991-garbage.parquet").write_bytes(b"not a parquet file at all")
    (metrics / "part-999992-corrupt.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")  # passes the magic check
    broken = root / "20260101-000000-broken-0000"
    (broken / "metrics").mkdir(parents=True)
    (broken / "run.json").write_text('{"run_id": "20260101-000000-bro')
    return root


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.filterwarnings("ignore:skipping")  # the store warns once per file (tests/test_store.py checks it)
def test_corrupt_files_never_break_a_page(damaged_store, page):
    at = run_app(damaged_store, page)
    assert at.get("vega_lite_chart") or at.dataframe
    if page == "runs":  # the run with the cut run.json is listed, marked damaged
        table = at.dataframe[0].value.set_index("run_id")
        assert len(table) == 4 and table.loc["20260101-000000-broken-0000", "status"] == "damaged"
    if page == "flattening":
        assert set(main_line(charts(at)["train loss"])["label"]) == {"adam-lawn-s0", "adam-lawn-s1", "sgd-s0"}


def test_root_from_the_environment_and_the_served_roots(sweep_store, tmp_path, monkeypatch):
    """The default store is $LAWN_MONITOR_ROOT; the sidebar offers it and the allowed roots, and
    picking one there shows its runs."""
    other = tmp_path / "other"
    train_tiny_run(other, "elsewhere", "sgd", lawn=False, steps=10)
    monkeypatch.setenv("LAWN_MONITOR_ROOT", str(sweep_store))
    monkeypatch.setenv("LAWN_MONITOR_ALLOWED_ROOTS", str(other))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert len(at.dataframe[0].value) == 3 and "root" not in at.query_params
    assert at.sidebar.selectbox[0].options == [str(sweep_store), str(other)]
    at.sidebar.selectbox[0].set_value(str(other)).run()
    assert not at.exception
    assert list(at.dataframe[0].value["label"]) == ["elsewhere"]


@pytest.mark.slow
def test_table2_follows_runs_that_finish_later(tmp_path, one_thread):
    root = tmp_path / "runs"
    train_tiny_run(root, "sgd-s0", "sgd", lawn=False, seed=0)
    at = run_app(root, "compare")
    assert at.dataframe[0].value.index.tolist() == ["SGD"]
    train_tiny_run(root, "adam-lawn-s0", "adam", lawn=True, seed=0)
    time.sleep(2.1)  # past the runs list's cache; the summary's cache keys on the finished runs
    at.run()
    assert at.dataframe[0].value.index.tolist() == ["SGD", "Adam-LAWN"]


def test_compare_describes_each_metric_and_starts_each_on_its_own_scale(sweep_store):
    at = run_app(sweep_store, "compare", params={"metric": "test/acc"})
    described = at.table[0].value
    assert described.loc["update_ratio_per_lr", "what it shows"].startswith("update ratio / learning rate")
    assert set(described.index) == set(at.selectbox(key="metric").options)  # every metric in the list
    assert "top-1 accuracy" in texts(at)
    assert at.checkbox(key="log").value is False  # accuracy: linear
    at.checkbox(key="log").check().run()
    at.selectbox(key="metric").set_value("grad_norm").run()
    assert at.checkbox(key="log").value is True  # its own default: log
    at.checkbox(key="log").uncheck().run()
    at.selectbox(key="metric").set_value("max_prob").run()
    assert at.checkbox(key="log").value is False
    layers = charts(at)[next(t for t in charts(at) if t.startswith("max_prob"))]
    main = next(layer for layer, _ in layers if "color" in layer["encoding"])
    assert main["encoding"]["y"]["title"] == "max softmax probability"
