"""The dashboard end to end through Streamlit's AppTest, on stores written by real runs."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from lawn_monitor import Monitor, RunStore

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")


def run_app(root: Path | None = None, query_root: Path | None = None, selected: list[int] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if query_root is not None:
        at.query_params["root"] = str(query_root)
    if selected is not None:
        at.session_state["runs"] = {"selection": {"rows": selected, "columns": [], "cells": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, list[pd.DataFrame]]:
    """Each chart's title and the datasets it carries (the main one first)."""
    found = {}
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        first = spec.get("layer", [spec])[0]
        found[first["title"]["text"]] = [
            pa.ipc.open_stream(ds.data.data).read_pandas() for ds in element.proto.datasets
        ]
    return found


@pytest.fixture
def root_env(monkeypatch):
    def use(root: Path) -> Path:
        monkeypatch.setenv("LAWN_MONITOR_ROOT", str(root))
        return root
    return use


def test_shows_runs_and_their_charts(tiny_store, root_env):
    root_env(tiny_store)
    at = run_app()
    assert not at.info
    table = at.dataframe[0].value
    assert sorted(table["name"]) == ["adam-lawn", "sgd"]
    assert {"status", "optimizer", "lawn", "batch_size", "progress", "test_acc"} <= set(table.columns)

    found = charts(at)
    trace_title = "Hessian trace: Gauss-Newton proxy (band: +/- 1 SE), Hutchinson (diamonds)"
    assert {"train loss", "test accuracy", "gradient norm (whole model)", trace_title, "adam-lawn", "sgd"} == set(found)
    proxy, _, band, hutchinson = found[trace_title]  # lines, switch rules, band, points (+ their bars)
    assert set(proxy["label"]) == {"adam-lawn", "sgd"} and proxy["step"].tolist()[:3] == [5, 10, 15]
    assert (band["low"] < band["value"]).all() and (band["high"] > band["value"]).all()
    assert set(hutchinson["step"]) == {1, 5, 30} and hutchinson["se"].notna().all()
    loss, switch = found["train loss"]
    assert set(loss["label"]) == {"adam-lawn", "sgd"}
    assert loss["step"].max() == 30
    # Only the LAWN run switched, after its 10 free steps.
    assert switch[["label", "step"]].to_dict("records") == [{"label": "adam-lawn", "step": 11}]
    assert set(found["test accuracy"][0]["step"]) == {10, 20, 30}
    assert found["adam-lawn"][0]["layer"].nunique() == 4  # two linear layers: weights and biases


def test_selected_runs_only(tiny_store, root_env):
    root_env(tiny_store)
    table = run_app().dataframe[0].value
    sgd_row = table.index[table["name"] == "sgd"][0]
    found = charts(run_app(selected=[int(sgd_row)]))
    assert set(found["train loss"][0]["label"]) == {"sgd"}
    assert len(found["train loss"]) == 1  # SGD without LAWN: no switch rule
    assert "adam-lawn" not in found


def test_root_from_query_params(tiny_store, root_env, tmp_path):
    root_env(tmp_path / "elsewhere")
    at = run_app(query_root=tiny_store)
    assert len(at.dataframe[0].value) == 2


@pytest.mark.parametrize("make_dir", [False, True])
def test_empty_or_missing_store_says_how_to_start(tmp_path, root_env, make_dir):
    root = root_env(tmp_path / "runs")
    if make_dir:
        root.mkdir()
    at = run_app()
    assert not at.dataframe and not at.get("vega_lite_chart")
    assert "lawn-monitor train" in at.info[0].value
    assert str(root) in at.info[0].value


def test_broken_part_files_are_skipped(tiny_store, root_env):
    root_env(tiny_store)
    store = RunStore(tiny_store)
    metrics = tiny_store / store.run_ids()[0] / "metrics"
    (metrics / "part-999990-empty.parquet").write_bytes(b"")
    (metrics / "part-999991-garbage.parquet").write_bytes(b"not a parquet file at all")
    # Passes the magic-bytes check, fails to parse.
    (metrics / "part-999992-corrupt.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    with pytest.warns(UserWarning, match="skipping"):
        at = run_app()
    found = charts(at)
    assert set(found["train loss"][0]["label"]) == {"adam-lawn", "sgd"}


def test_running_run_renders_live(tmp_path, root_env):
    root = root_env(tmp_path / "runs")
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=root, name="live", config={"optimizer": "sgd", "lawn": False}, total_steps=10)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for _ in range(3):
        opt.zero_grad()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        monitor.step(loss=loss.detach(), logits=logits.detach(), targets=y)
    monitor.flush()  # still open: status running, progress 3/10
    at = run_app()
    table = at.dataframe[0].value
    assert table["status"].tolist() == ["running"]
    assert table["progress"].tolist() == [pytest.approx(0.3)]
    assert "train loss" in charts(at)
    monitor.close()


def test_cleared_root_box_falls_back_to_the_default_store(tiny_store, root_env):
    root_env(tiny_store)
    at = run_app()
    at.text_input[0].set_value("  ").run()
    assert not at.exception
    assert len(at.dataframe[0].value) == 2
