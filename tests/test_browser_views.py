"""The dashboard's views in a real browser (issue: a dashboard that stays right and compares like
the tools people know): one `lawn-monitor dashboard` and one store for the whole module, each test
opening the pages it checks in headless Chromium and reading the charts the browser receives.

The store: a run on another data set first (alphabetically first, oldest), then Adam, Adam-LAWN,
SGD and SGD-LAWN (both LAWN runs switch at step 10), all finished.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lawn_monitor import Monitor, RunStore
from lawn_monitor.dashboard.styles import run_styles
from tests.browser import CHROMIUM, Charts, browser_page, launch, settle, streamlit_app, wait_rendered
from tests.helpers import train_tiny_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: see tests/test_browser.py"),
]
STEPS = 40


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("views") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = {"other": train_tiny_run(root, "other-data", "sgd", False, steps=STEPS, dataset="aaa")}
        for name, optimizer, lawn in (
            ("adam", "adam", False),
            ("adam-lawn", "adam", True),
            ("sgd", "sgd", False),
            ("sgd-lawn", "sgd", True),
        ):
            time.sleep(1.1)  # created_at has second resolution: one run per second keeps their order
            ids[name] = train_tiny_run(root, name, optimizer, lawn, steps=STEPS)
    finally:
        torch.set_num_threads(threads)
    return root, ids


@pytest.fixture(scope="module")
def app(store, tmp_path_factory):
    root, ids = store
    with streamlit_app(root, tmp_path_factory.mktemp("server")) as url:
        yield url, root, ids


@pytest.fixture
def page():
    with browser_page() as page:
        yield page


def open_page(page, url: str, path: str, title: str, query: str = "") -> Charts:
    charts = Charts(page)
    page.goto(f"{url}/{path}{query}")
    wait_rendered(page, title)
    return charts


def by_title(charts: Charts) -> dict[str, list]:
    found: dict[str, list] = {}
    for title, layer, data in charts.layers():
        found.setdefault(title, []).append((layer, data))
    return found


def shown_runs(page) -> list[str]:
    text = page.get_by_text(re.compile(r"^Runs: ")).first.inner_text()
    return sorted(text[len("Runs: ") : text.index(" (choose")].split(", "))


def scale(layer: dict, channel: str) -> dict:
    return layer.get("encoding", {}).get(channel, {}).get("scale", {})


# --- the numbered defects -------------------------------------------------------------------------


def test_groups_by_optimizer_alone_get_distinct_colours(app, page):
    url, _, _ = app
    charts = open_page(page, url, "compare", "Compare", "?group=optimizer&metric=train/loss")
    colour = next(scale(layer, "color") for _, layer, _ in charts.layers() if scale(layer, "color").get("domain"))
    groups = dict(zip(colour["domain"], colour["range"]))
    assert set(groups) == {"optimizer=adam", "optimizer=sgd"}
    assert groups["optimizer=adam"] != groups["optimizer=sgd"]
    assert groups["optimizer=adam"] == "#d62728" and groups["optimizer=sgd"] == "#1f77b4"  # the family hues


def test_table2_defaults_to_the_selected_runs_data_set(app, page):
    url, _, _ = app
    open_page(page, url, "compare", "Compare")
    box = page.locator("[data-testid='stSelectbox']").filter(has_text="dataset").first
    shown = box.locator("input").input_value() + box.inner_text()
    assert "random" in shown and "aaa" not in shown, shown
    assert "Table 2" in page.locator("body").inner_text()
    assert "No finished run" not in page.locator("body").inner_text()


def test_default_selection_stays_when_a_new_run_starts(app, page):
    url, root, ids = app
    open_page(page, url, "compare", "Compare")
    before = shown_runs(page)
    assert before == ["adam", "adam-lawn", "sgd", "sgd-lawn"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        newer = train_tiny_run(root, "newer", "adam", False, steps=10)
    finally:
        torch.set_num_threads(threads)
    time.sleep(2.5)  # past the runs list's cache
    page.locator("[data-testid='stSelectbox']").filter(has_text="x axis").first.click()
    page.get_by_role("option", name="epoch", exact=True).click()
    settle(page)
    assert shown_runs(page) == before, "a run that started later changed the default selection"
    # A new session (a new visitor) starts from the newest runs, the new one among them.
    open_page(page, url, "compare", "Compare")
    assert "newer" in shown_runs(page)
    import shutil

    shutil.rmtree(root / newer)


def test_learning_rate_on_a_log_axis_shows_adam(app, page):
    url, _, _ = app
    charts = by_title(open_page(page, url, "adaptivity", "Weight adaptivity"))
    title = next(t for t in charts if t.startswith("learning rate"))
    main = next((layer, df) for layer, df in charts[title] if "color" in layer.get("encoding", {}))
    assert main[0]["encoding"]["y"]["scale"]["type"] == "log"
    assert {"adam", "sgd"} <= set(main[1]["label"])


def test_ticking_rows_adds_no_history_entries(app, page):
    url, _, _ = app
    open_page(page, url, "", "Runs")
    before = page.evaluate("history.length")
    grid = page.locator("[data-testid='stDataFrame']").first
    box = grid.bounding_box()
    for row in (0, 1):
        page.mouse.click(box["x"] + 14, box["y"] + 35 + 35 * row + 17)
        settle(page)
    assert "runs=" in page.url
    assert page.evaluate("history.length") == before, page.url


def test_adaptivity_pairs_a_lawn_run_with_its_own_baseline(app, page):
    url, _, _ = app
    charts = open_page(page, url, "adaptivity", "Weight adaptivity")
    heatmaps = [title for title, layer, _ in charts.layers() if layer.get("mark", {}).get("type") == "rect"]
    assert heatmaps[:2] == ["adam-lawn", "adam"], heatmaps


def test_runs_in_the_url_by_id_or_by_label(app, page):
    url, _, ids = app
    open_page(page, url, "compare", "Compare", f"?runs={ids['adam']}&runs={ids['sgd-lawn']}")
    assert shown_runs(page) == ["adam", "sgd-lawn"]
    open_page(page, url, "compare", "Compare", f"?runs={ids['sgd']},{ids['adam-lawn']}")
    assert shown_runs(page) == ["adam-lawn", "sgd"]
    open_page(page, url, "compare", "Compare", "?runs=sgd")
    assert shown_runs(page) == ["sgd"]


def test_two_switches_at_one_step_both_show(app, page):
    url, _, _ = app
    charts = by_title(open_page(page, url, "flattening", "Loss flattening"))
    rules = [
        layer for layer, df in charts["train loss"] if layer["mark"]["type"] == "rule" and "stroke" in layer["encoding"]
    ]
    assert len(rules) == 2  # one layer per turn: their dashes interleave
    offsets = {layer["mark"].get("strokeDashOffset", 0) for layer in rules}
    assert len(offsets) == 2


def test_sidebar_chips_take_the_runs_colours(app, page):
    url, root, ids = app
    open_page(page, url, "compare", "Compare", f"?runs={ids['adam']}&runs={ids['sgd']}")
    colours = {}
    for label in ("adam", "sgd"):
        chip = page.locator(f"[data-testid='stSidebar'] [data-tag][aria-label='{label}']").first
        colours[label] = chip.evaluate("e => getComputedStyle(e).backgroundColor")
    styles = run_styles(RunStore(root).runs())
    expected = {}
    for label in ("adam", "sgd"):
        colour = styles[ids[label]].color
        expected[label] = f"rgb({int(colour[1:3], 16)}, {int(colour[3:5], 16)}, {int(colour[5:7], 16)})"
    assert colours == expected  # each run's own colour, as on its charts
    assert expected["adam"] == "rgb(214, 39, 40)"  # Adam's red (the first Adam run)


def test_created_column_fits_at_1600_px(app):
    url, _, _ = app
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(url)
            wait_rendered(page, "Runs")
            grid = page.locator("[data-testid='stDataFrame'] .dvn-scroller").first
            scroll, client = grid.evaluate("e => [e.scrollWidth, e.clientWidth]")
        finally:
            browser.close()
    assert scroll <= client, f"the runs table is {scroll} px wide in {client} px: its last column is cut off"


# --- what TensorBoard / W&B users look for --------------------------------------------------------


def test_compare_draws_several_metrics_as_panels(app, page):
    url, _, _ = app
    charts = by_title(open_page(page, url, "compare", "Compare", "?metric=train/loss&panels=grad_norm&panels=lr"))
    titles = " | ".join(charts)
    assert "train/loss" in titles and "grad_norm" in titles and re.search(r"(^| )lr", titles), titles


def test_run_filter_by_regex_on_every_page(app, page):
    url, _, _ = app
    open_page(page, url, "compare", "Compare", "?filter=^sgd")
    assert shown_runs(page) == ["sgd", "sgd-lawn"]
    assert "filter=%5Esgd" in page.url or "filter=^sgd" in page.url
    charts = open_page(page, url, "flattening", "Loss flattening", "?filter=lawn$")
    legends = {tuple(scale(layer, "color").get("domain", ())) for _, layer, _ in charts.layers()} - {()}
    assert legends == {("adam-lawn", "sgd-lawn")} or legends == {("sgd-lawn", "adam-lawn")}, legends


def test_wall_clock_axis(app, page):
    url, _, _ = app
    charts = open_page(page, url, "compare", "Compare", "?x=wall&metric=train/loss")
    main = next(layer for _, layer, _ in charts.layers() if "color" in layer.get("encoding", {}))
    assert main["encoding"]["x"]["type"] == "temporal"


@pytest.mark.parametrize(
    "path, title, query",
    [
        ("compare", "Compare", "?metric=train/loss"),  # always there
        ("flattening", "Loss flattening", "?crosshair=true"),  # the sidebar's switch, on every line chart
    ],
)
def test_crosshair_tooltip_lists_every_run_at_the_step(app, page, path, title, query):
    url, _, _ = app
    charts = open_page(page, url, path, title, query)
    spec = next(spec for spec, _ in charts.specs if spec.get("params"))  # Altair lifts a layer's params
    assert spec["params"][0]["select"]["nearest"] is True
    hover = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rule" and "opacity" in layer["encoding"])
    titles = [t.get("title") for t in hover["encoding"]["tooltip"]]
    for run in ("adam", "adam-lawn", "sgd", "sgd-lawn"):
        assert f"{run} (smoothed)" in titles and f"{run} (raw)" in titles, titles
    # In the browser: the pointer over the plot shows them all in one tooltip, numbers formatted.
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.35)
    page.mouse.move(box["x"] + box["width"] * 0.52, box["y"] + box["height"] * 0.35)
    tip = page.locator("#vg-tooltip-element")
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.inner_text()
    assert all(f"{run} (smoothed)" in text for run in ("adam", "sgd-lawn")), text
    assert not re.search(r"\d\.\d{7,}", text), text  # formatted, not raw floats


def test_export_a_chart_as_svg(app, page):
    url, _, _ = app
    open_page(page, url, "compare", "Compare", "?metric=train/loss")
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Export SVG").click()
    path = download.value.path()
    assert Path(path).read_text()[:200].lstrip().startswith("<svg")


# --- Live, last: its run trains beside the module's store while it runs ---------------------------


def test_live_x_range_fits_the_live_runs(app, page):
    """A run that has just started is drawn on its own steps, the ended runs beside it cut there."""
    import shutil
    import threading

    url, root, _ = app
    stop = threading.Event()

    def slow_run() -> None:  # a step every 2 s: it stays behind the ended runs' 40
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
        config = {"dataset": "random", "model": "mlp", "optimizer": "adam", "lawn": False, "batch_size": 32}
        with Monitor(model, opt, root=root, name="fresh", total_steps=10_000, flush_secs=0.2, config=config) as mon:
            while not stop.is_set():
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                mon.step(loss=loss.detach())
                time.sleep(2.0)

    writer = threading.Thread(target=slow_run, daemon=True)
    writer.start()
    try:
        while not any("fresh" in p.name for p in root.iterdir()):
            time.sleep(0.05)
        time.sleep(5)
        charts = by_title(open_page(page, url, "live", "Live"))
        main, lines = next((layer, df) for layer, df in charts["train loss"] if "color" in layer.get("encoding", {}))
        domain = main["encoding"]["x"]["scale"]["domain"]
        fresh = lines.loc[lines["label"] == "fresh", "step"].max()
        assert fresh <= domain[1] < STEPS, (domain, fresh, "the x range is the live run's steps")
        assert lines["step"].max() <= domain[1]  # the ended runs are cut there...
        assert set(lines["label"]) >= {"fresh", "sgd-lawn"}  # ...and drawn
    finally:
        stop.set()
        writer.join(timeout=10)
        for folder in root.iterdir():
            if "fresh" in folder.name:
                shutil.rmtree(folder)
