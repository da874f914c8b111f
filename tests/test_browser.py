"""The dashboard in a real browser: `lawn-monitor dashboard` on 127.0.0.1 driven by headless Chromium.

Needs Debian's ``chromium`` (``make test`` installs it where it can) and Playwright's Python package,
which drives that binary (``executable_path``); Playwright's own browser downloads are never used.
Set ``LAWN_MONITOR_CHROMIUM`` to use another Chromium build. Screenshots of every page are saved
under the test's temporary folder (``pytest --basetemp=DIR`` keeps them somewhere known).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn

from lawn_monitor import Monitor
from tests.browser import CHROMIUM, PAGES, Charts, browser_page, settle, streamlit_app, wait_rendered
from tests.helpers import TINY_PROBES

REPO = Path(__file__).resolve().parent.parent
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
pytestmark = [
    pytest.mark.slow,  # a Streamlit server and a browser per test
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium binary: `apt-get install chromium` (make test does this as root), "
        "or set LAWN_MONITOR_CHROMIUM",
    ),
]
LIVE_NAME = "live-writer"


class Writer(threading.Thread):
    """A run that keeps training under the real Monitor (flushing every 0.2 s) until stopped."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.steps = 0

    def run(self) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
        monitor = Monitor(
            model,
            opt,
            root=self.root,
            name=LIVE_NAME,
            total_steps=1_000_000,
            flush_secs=0.2,
            probe_batch=(x[:16], y[:16]),
            probe_config=TINY_PROBES,
            config={
                "dataset": "random",
                "model": "mlp",
                "optimizer": "adam",
                "lawn": False,
                "batch_size": 32,
                "seed": 0,
            },
        )
        with monitor:
            while not self.stop.is_set():
                opt.zero_grad()
                logits = model(x)
                loss = nn.functional.cross_entropy(logits, y)
                loss.backward()
                opt.step()
                monitor.step(loss=loss.detach(), logits=logits.detach(), targets=y)
                self.steps += 1
                if self.steps % 50 == 0:
                    monitor.log_eval(acc=(logits.argmax(1) == y).float().mean())
                time.sleep(0.02)


@pytest.fixture
def server(tiny_store, tmp_path):
    """`streamlit run app` against a store of two finished tiny runs and one that is training."""
    root = tiny_store
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the writer's tiny tensors: intra-op threads only add overhead
    writer = Writer(root)
    writer.start()
    while not any(LIVE_NAME in p.name for p in root.iterdir()):
        time.sleep(0.05)
    try:
        with streamlit_app(root, tmp_path) as url:
            yield url, writer
    finally:
        writer.stop.set()
        writer.join(timeout=10)
        torch.set_num_threads(threads)


def live_step(page, timeout: float = 10_000) -> int:
    text = page.get_by_text(re.compile(rf"^{LIVE_NAME}: step [\d,]+")).first.inner_text(timeout=timeout)
    return int(re.search(r"step ([\d,]+)", text).group(1).replace(",", ""))


def test_every_page_in_a_browser(server, tmp_path):
    url, writer = server
    with browser_page() as page:
        for path, title in PAGES:
            page.goto(f"{url}/{path}")
            wait_rendered(page, title)
            body = page.locator("body").inner_text()
            assert not page.locator("[data-testid='stException']").count(), body
            assert "Traceback" not in body and "Error" not in body.replace("error bars", ""), body
            assert "Page not found" not in body
            page.screenshot(path=str(tmp_path / f"{path or 'runs'}.png"), full_page=True)

            if path == "live":
                first = live_step(page)
                deadline = time.monotonic() + 5.0
                seen = first
                while seen <= first and time.monotonic() < deadline:
                    page.wait_for_timeout(200)
                    seen = live_step(page)
                assert seen > first, f"the Live page stayed at step {first} for 5 s while the run trained"
    assert writer.steps > 0
    for path, _ in PAGES:
        shot = tmp_path / f"{path or 'runs'}.png"
        assert shot.stat().st_size > 10_000, shot  # a real page, not a blank one


# --- what the browser was sent: every chart's Vega-Lite spec and data ----------------------------


def run_colours(charts: Charts) -> dict[str, set]:
    """Label -> the colours (and dashes) any chart gave it, read from every run-coloured channel."""
    seen: dict[str, set] = {}
    for _, layer, _ in charts.layers():
        for channel in ("color", "stroke", "fill", "strokeDash"):
            enc = layer.get("encoding", {}).get(channel)
            if not enc or enc.get("field") != "label" or "domain" not in enc.get("scale", {}):
                continue
            for label, value in zip(enc["scale"]["domain"], enc["scale"]["range"]):
                kind = "dash" if channel == "strokeDash" else "colour"
                seen.setdefault(label, set()).add((kind, json.dumps(value)))
    return seen


@pytest.fixture
def adam_pair(tmp_path):
    """Adam and Adam-LAWN (switch after 10 of 60 steps) on the same tiny problem."""
    from tests.helpers import train_tiny_run

    root = tmp_path / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = {
            "adam": train_tiny_run(root, "adam", "adam", lawn=False, steps=60),
            "adam-lawn": train_tiny_run(root, "adam-lawn", "adam", lawn=True, steps=60),
        }
    finally:
        torch.set_num_threads(threads)
    return root, ids


def test_one_colour_per_run_everywhere_and_growth_against_freeze(adam_pair, tmp_path):
    root, ids = adam_pair
    query = f"?runs={ids['adam']},{ids['adam-lawn']}&a={ids['adam-lawn']}&b={ids['adam']}"
    with streamlit_app(root, tmp_path) as url, browser_page() as page:
        charts = Charts(page)
        per_page = {}
        for path, title in PAGES:
            charts.clear()
            page.goto(f"{url}/{path}{query}")
            wait_rendered(page, title)
            page.screenshot(path=str(tmp_path / f"pair-{path or 'runs'}.png"), full_page=True)
            per_page[path] = run_colours(charts)
            if path == "adaptivity":
                adaptivity = list(charts.layers())
    heatmaps = [(t, layer, df) for t, layer, df in adaptivity if layer["mark"]["type"] == "rect"]

    # Every chart of every page gives each run one colour and one dash: the same everywhere.
    together: dict[str, set] = {}
    for colours in per_page.values():
        for label, values in colours.items():
            together.setdefault(label, set()).update(values)
    assert {"adam", "adam-lawn"} <= set(together)
    for label in ("adam", "adam-lawn"):
        kinds = [kind for kind, _ in together[label]]
        assert kinds.count("colour") == 1 and kinds.count("dash") == 1, (label, together[label])
        pages = [p for p, colours in per_page.items() if label in colours]
        assert {"flattening", "adaptivity", "compare", "live"} <= set(pages), pages
    colour = {label: next(v for k, v in together[label] if k == "colour") for label in ("adam", "adam-lawn")}
    dash = {label: next(v for k, v in together[label] if k == "dash") for label in ("adam", "adam-lawn")}
    assert colour["adam"] == colour["adam-lawn"]  # one method family, one hue...
    assert dash["adam"] != dash["adam-lawn"]  # ...and LAWN is the dashed one

    # The two weight-growth heatmaps (left: Adam-LAWN, right: Adam) share one colour domain.
    (t_lawn, lawn_spec, lawn), (t_adam, adam_spec, adam) = heatmaps[:2]
    assert (t_lawn, t_adam) == ("adam-lawn", "adam")
    assert lawn_spec["encoding"]["color"]["scale"]["domain"] == adam_spec["encoding"]["color"]["scale"]["domain"]
    switch = int(
        next(df for t, layer, df in adaptivity if t == "adam-lawn" and layer["mark"]["type"] == "rule")["step"].iloc[0]
    )
    for layer in ("0.weight", "2.weight"):  # constrained by LAWN
        after = lawn[(lawn["layer"] == layer) & (lawn["step"] >= switch)].sort_values("step")["value"]
        assert len(after) > 5 and (after - after.iloc[0]).abs().max() < 1e-3, layer
        grows = adam[(adam["layer"] == layer) & (adam["step"] >= switch)].sort_values("step")["value"]
        assert grows.iloc[-1] > grows.iloc[0] * 1.01, layer


# --- the Live page, the selection and the history (issue: a Live page that is live) --------------


def test_live_tab_on_an_empty_store_shows_a_run_that_starts_later(tmp_path):
    root = tmp_path / "runs"  # does not exist yet
    with streamlit_app(root, tmp_path) as url, browser_page() as page:
        page.goto(f"{url}/live")
        page.get_by_text("does not exist yet").wait_for(timeout=30_000)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        writer = Writer(root)
        writer.start()
        try:
            while not (root.exists() and any(root.glob("*/run.json"))):  # the run exists from here on
                time.sleep(0.05)
            started = time.monotonic()
            first = live_step(page, timeout=10_000)
            seen_after = time.monotonic() - started
            deadline = time.monotonic() + 5.0
            seen = first
            while seen <= first and time.monotonic() < deadline:
                page.wait_for_timeout(200)
                seen = live_step(page)
            page.screenshot(path=str(tmp_path / "live-from-empty.png"), full_page=True)
        finally:
            writer.stop.set()
            writer.join(timeout=10)
            torch.set_num_threads(threads)
    assert seen_after < 5.0, f"the run appeared {seen_after:.1f} s after it started"
    assert seen > first, f"the Live page stayed at step {first} for 5 s while the run trained"


def tick_rows(page, labels: list[str], shown: list[str]) -> None:
    """Tick these runs in the Runs table. The table is a canvas (glide-data-grid): rows are 35 px
    under a 35 px header, in the order ``shown`` (the page's own order: newest first), and the
    tick column is at the left edge."""
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    for label in labels:
        row = shown.index(label)
        page.mouse.click(box["x"] + 14, box["y"] + 35 + 35 * row + 17)
        settle(page)


def shown_runs(page) -> list[str]:
    text = page.get_by_text(re.compile(r"^Runs: ")).first.inner_text()
    return sorted(text[len("Runs: ") : text.index(" (choose")].split(", "))


def test_ticks_survive_a_filter_that_hides_them(tiny_store, tmp_path):
    """Tick two runs, filter them out, tick nothing: the other pages still show those two, and the
    table says two selected runs are hidden."""
    from tests.helpers import train_tiny_run

    root = tiny_store  # adam-lawn and sgd, plus one more Adam run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_tiny_run(root, "adam", "adam", lawn=False)
    finally:
        torch.set_num_threads(threads)
    newest_first = ["adam", "sgd", "adam-lawn"]  # created last first, as the table lists them
    with streamlit_app(root, tmp_path) as url, browser_page() as page:
        page.goto(url)
        wait_rendered(page, "Runs")
        tick_rows(page, ["adam", "adam-lawn"], newest_first)
        page.get_by_text(re.compile(r"^3 of 3 runs shown\. The other pages show selected")).wait_for(timeout=10_000)
        assert "runs=" in page.url
        page.get_by_text("Filter", exact=True).click()
        settle(page)
        page.locator("[data-testid='stMultiSelect']").filter(has_text="optimizer").click()
        page.get_by_role("option", name="sgd", exact=True).click()
        page.keyboard.press("Escape")
        settle(page)
        caption = page.get_by_text(re.compile(r"^1 of 3 runs shown")).first.inner_text()
        assert "2 selected runs hidden by the filter" in caption, caption
        page.screenshot(path=str(tmp_path / "runs-filtered.png"), full_page=True)
        page.get_by_test_id("stSidebarNavLink").filter(has_text="Compare").click()
        wait_rendered(page, "Compare")
        assert shown_runs(page) == ["adam", "adam-lawn"]


def test_widget_changes_do_not_pile_up_in_history_nor_leak_to_other_pages(tiny_store, tmp_path):
    with streamlit_app(tiny_store, tmp_path) as url, browser_page() as page:
        page.goto(url)
        wait_rendered(page, "Runs")
        page.get_by_test_id("stSidebarNavLink").filter(has_text="Compare").click()
        wait_rendered(page, "Compare")
        for label, option in (("metric", "grad_norm"), ("x axis", "epoch")):
            page.locator("[data-testid='stSelectbox']").filter(has_text=label).first.click()
            page.get_by_role("option", name=option, exact=True).click()
            settle(page)
        assert "metric=grad_norm" in page.url and "x=epoch" in page.url, page.url
        page.go_back()
        settle(page)
        # The widget changes replaced the URL instead of adding history entries, so Back leaves
        # the page at once (to Runs) rather than replaying them.
        assert "/compare" not in page.url, page.url
        for name in ("Loss flattening", "Weight adaptivity", "Runs"):
            page.get_by_test_id("stSidebarNavLink").filter(has_text=name).click()
            settle(page)
            assert "metric=" not in page.url and "x=" not in page.url, page.url
        page.get_by_test_id("stSidebarNavLink").filter(has_text="Compare").click()
        settle(page)
        # Coming back to Compare restores its own view (the page keeps its parameters).
        box = page.locator("[data-testid='stSelectbox']").filter(has_text="metric").first
        assert "grad_norm" in (box.locator("input").input_value() + box.inner_text()), page.url


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (IPv4, from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc/net/tcp")
def test_streamlit_run_app_stays_on_this_machine(tiny_store, tmp_path):
    """`streamlit run app` from the checkout (its .streamlit/config.toml) listens on 127.0.0.1 only,
    and no page makes the browser fetch anything from another host (fonts, icons)."""
    with streamlit_app(tiny_store, tmp_path, command=["-m", "streamlit", "run", "app"]) as url:
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
        requested = []
        with browser_page() as page:
            page.on("request", lambda request: requested.append(request.url))
            for path, title in PAGES:
                page.goto(f"{url}/{path}")
                wait_rendered(page, title)
        hosts = {urllib.parse.urlsplit(u).netloc for u in requested if not u.startswith(("data:", "blob:"))}
        assert hosts == {f"127.0.0.1:{port}"}, [u for u in requested if f"127.0.0.1:{port}" not in u]
