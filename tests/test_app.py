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
from conftest import train_tiny_run
from streamlit.testing.v1 import AppTest
from torch import nn

from lawn_monitor import Monitor, RunStore

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
PAGES = ["runs", "live", "flattening", "adaptivity", "compare"]
TRACE_TITLE = "Hessian trace: GN proxy ± 1 SE, Hutchinson (◆)"


def run_app(root: Path, page: str = "runs", params: dict | None = None, state: dict | None = None) -> AppTest:
    """Open ``page`` with ``?root=`` and ``params`` in the URL; fail on any exception on the page."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["root"] = str(root)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    if page != "runs":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, list[pd.DataFrame]]:
    """Each chart's title and the datasets it carries (the main one first)."""
    found = {}
    for i, element in enumerate(at.get("vega_lite_chart")):
        spec = json.loads(element.proto.spec)
        first = spec.get("layer", [spec])[0]
        title = first.get("title", spec.get("title", {})).get("text", f"untitled {i}")
        found.setdefault(title, [])
        found[title].append([pa.ipc.open_stream(ds.data.data).read_pandas() for ds in element.proto.datasets])
    return {title: sets[0] if len(sets) == 1 else sets for title, sets in found.items()}


def texts(at: AppTest) -> str:
    return "\n".join(e.value for kind in ("markdown", "caption", "info", "title", "subheader") for e in at.get(kind)
                     if isinstance(e.value, str))


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
    assert sorted(table["name"]) == ["adam-lawn-s0", "adam-lawn-s1", "sgd-s0"]
    assert set(table["status"]) == {"finished"}
    assert {"dataset", "optimizer", "lawn", "batch_size", "seed", "progress", "test_acc", "best_test_acc"} <= set(table)
    assert table["progress"].tolist() == [1.0, 1.0, 1.0]
    assert (table["best_test_acc"] >= table["test_acc"]).all()
    assert at.get("download_button")  # the table as CSV


def test_runs_page_filters_from_the_url(sweep_store):
    at = run_app(sweep_store, params={"optimizer": "sgd"})
    assert at.dataframe[0].value["name"].tolist() == ["sgd-s0"]
    at = run_app(sweep_store, params={"status": "running"})
    assert at.dataframe[0].value.empty


def test_selecting_rows_puts_the_runs_in_the_url_for_every_page(sweep_store, ids):
    at = run_app(sweep_store)
    table = at.dataframe[0].value
    row = int(table.index[table["run_id"] == ids["sgd-0"]][0])
    at.session_state["runs_table"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    assert at.query_params["runs"] == ids["sgd-0"]
    at.switch_page("views/flattening.py").run()
    assert set(charts(at)["train loss"][0]["label"]) == {"sgd-s0"}


# --- Live -------------------------------------------------------------------------------------

def test_live_page_shows_ended_runs_with_their_switch(sweep_store, ids):
    at = run_app(sweep_store, "live", params={"runs": f"{ids['adam-lawn-0']},{ids['sgd-0']}"})
    assert "No run is training now" in at.info[0].value
    found = charts(at)
    assert {"train loss", "test accuracy", "learning rate", "gradient norm (whole model)", TRACE_TITLE} == set(found)
    loss, switch = found["train loss"]
    assert set(loss["label"]) == {"adam-lawn-s0", "sgd-s0"} and loss["step"].max() == 30
    assert switch[["label", "step"]].to_dict("records") == [{"label": "adam-lawn-s0", "step": 11}]
    proxy, _, band, hutchinson = found[TRACE_TITLE]  # lines, switch rules, band, points (+ their bars)
    assert proxy["step"].tolist()[:3] == [1, 2, 3]  # dense early
    assert (band["low"] < band["value"]).all() and (band["high"] > band["value"]).all()
    assert set(hutchinson["step"]) == {1, 5, 30} and hutchinson["se"].notna().all()
    assert set(found["test accuracy"][0]["step"]) == {10, 20, 30}
    assert sorted(p.text for p in at.get("progress")) == ["adam-lawn-s0: step 30 / 30 (100%), done",
                                                          "sgd-s0: step 30 / 30 (100%), done"]


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
    assert charts(at)["train loss"][0]["step"].max() == 3
    train(4)
    at.run()  # what the 2 s fragment timer does in the browser
    assert [p.text for p in at.get("progress")][0].startswith("live: step 7 / 10 (70%)")
    assert charts(at)["train loss"][0]["step"].max() == 7
    monitor.close()
    at.run()
    assert not at.exception
    assert "No run is training now" in at.info[0].value


# --- Loss flattening --------------------------------------------------------------------------

def test_flattening_page_overlays_the_signals(sweep_store, ids):
    at = run_app(sweep_store, "flattening", params={"runs": f"{ids['adam-lawn-0']},{ids['sgd-0']}"})
    found = charts(at)
    assert {"train loss", "gradient norm (whole model)", TRACE_TITLE, "sharpness vs. stability threshold (dashed)",
            "logit norm (mean L2)", "max softmax probability", "flat fraction (loss < 1e-3)"} == set(found)
    for title in ("train loss", "logit norm (mean L2)", "max softmax probability"):
        assert set(found[title][0]["label"]) == {"adam-lawn-s0", "sgd-s0"}, title
    sharp = found["sharpness vs. stability threshold (dashed)"]
    assert len(sharp) == 3  # points and lines, the switch rule, the dashed threshold
    # Each run against its own line: Adam's preconditioned sharpness, SGD's plain one.
    assert set(sharp[2]["label"]) == {"adam-lawn-s0 (P⁻¹H)", "sgd-s0"} and (sharp[2]["value"] > 0).all()
    prob = found["max softmax probability"][0]["value"]
    assert ((prob > 0) & (prob <= 1)).all()
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
    at.checkbox[0].uncheck().run()
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["layer"][0]["encoding"]["y"]["scale"]["type"] == "linear"
    assert at.query_params["log"] == "False"


# --- Weight adaptivity ------------------------------------------------------------------------

def test_adaptivity_page_puts_two_runs_side_by_side(sweep_store, ids):
    at = run_app(sweep_store, "adaptivity", params={"a": ids["adam-lawn-0"], "b": ids["sgd-0"]})
    assert [s.value for s in at.selectbox] == [ids["adam-lawn-0"], ids["sgd-0"]]
    specs = [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]
    assert len(specs) == 10  # 4 heatmaps x 2 runs, then update-ratio lines x 2 runs
    heat = specs[0]["layer"][0]
    assert heat["mark"]["type"] == "rect"
    assert heat["encoding"]["y"]["sort"] == ["0.weight", "0.bias", "2.weight", "2.bias"]  # model order
    assert specs[0]["layer"][1]["mark"]["type"] == "rule"  # the Adam-LAWN run's switch
    assert specs[1]["mark"]["type"] == "rect"  # SGD: no switch
    ratio = specs[8]
    assert [layer["mark"]["type"] for layer in ratio["layer"]] == ["line", "rule", "rule"]
    datasets = at.get("vega_lite_chart")[8].proto.datasets
    reference = pa.ipc.open_stream(datasets[-1].data.data).read_pandas()
    assert reference["value"].tolist() == [1e-3]


# --- Compare ----------------------------------------------------------------------------------

def test_compare_smooths_and_averages_seeds(sweep_store, ids):
    every = ",".join(ids.values())
    at = run_app(sweep_store, "compare", params={"runs": every, "metric": "train/loss", "smooth": "0.6",
                                                 "group": "optimizer,lawn", "band": "stderr"})
    title = "train/loss (smoothed 0.6), mean and mean ± standard error per group"
    group = charts(at)[title][0]
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
    at = run_app(sweep_store, "compare", params={"runs": f"{ids['adam-lawn-0']},{ids['sgd-0']}", "x": "epoch"})
    lines, switch = charts(at)["test/acc"][:2]
    assert set(lines["label"]) == {"adam-lawn-s0", "sgd-s0"}
    assert set(lines["x"]) == {10.0, 20.0, 30.0}  # one step per epoch in the tiny runs
    assert switch["x"].tolist() == [11.0]
    assert at.selectbox[0].value == "test/acc"


def test_compare_one_layer_of_a_per_layer_metric(sweep_store, ids):
    run_ids = [ids["adam-lawn-0"], ids["sgd-0"]]
    at = run_app(sweep_store, "compare", params={"runs": ",".join(run_ids), "metric": "update_ratio",
                                                 "layer": "2.weight"})
    assert at.selectbox[1].options == ["(whole model)", "0.weight", "0.bias", "2.weight", "2.bias"]
    lines = charts(at)["update_ratio of 2.weight"][0]
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
    assert len(at.get("download_button")) == 2  # the plotted data and Table 2


def test_view_state_survives_moving_between_pages(sweep_store):
    at = run_app(sweep_store, "compare")
    at.selectbox[0].set_value("grad_norm").run()
    assert at.query_params["metric"] == "grad_norm"
    at.query_params.clear()  # Streamlit's page links drop the query string
    at.switch_page("views/runs.py").run()
    assert at.query_params["metric"] == "grad_norm" and at.query_params["root"] == str(sweep_store)
    at.switch_page("views/compare.py").run()
    assert at.selectbox[0].value == "grad_norm"


# --- stores that are empty, missing or damaged ------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("make_dir", [False, True])
def test_empty_or_missing_store_says_how_to_start(tmp_path, page, make_dir):
    root = tmp_path / "runs"
    if make_dir:
        root.mkdir()
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["root"] = str(root)
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
    if page == "runs":
        assert len(at.dataframe[0].value) == 3  # the run with the cut run.json is left out
    if page == "flattening":
        assert set(charts(at)["train loss"][0]["label"]) == {"adam-lawn-s0", "adam-lawn-s1", "sgd-s0"}


def test_root_from_the_environment_and_a_cleared_box(sweep_store, monkeypatch):
    monkeypatch.setenv("LAWN_MONITOR_ROOT", str(sweep_store))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert len(at.dataframe[0].value) == 3 and "root" not in at.query_params
    at.text_input[0].set_value("  ").run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 3


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only add overhead
    yield
    torch.set_num_threads(threads)


def test_table2_follows_runs_that_finish_later(tmp_path, one_thread):
    root = tmp_path / "runs"
    train_tiny_run(root, "sgd-s0", "sgd", lawn=False, seed=0)
    at = run_app(root, "compare")
    assert at.dataframe[0].value.index.tolist() == ["SGD"]
    train_tiny_run(root, "adam-lawn-s0", "adam", lawn=True, seed=0)
    time.sleep(2.1)  # past the runs list's cache; the summary's cache keys on the finished runs
    at.run()
    assert at.dataframe[0].value.index.tolist() == ["SGD", "Adam-LAWN"]
