"""What the browser tests share: the Chromium binary, the dashboard's pages, a dashboard server
on a free port of 127.0.0.1, a headless page, waits for a page to be drawn, and the Vega-Lite
charts the browser was sent."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("LAWN_MONITOR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# (url path, the page's title): the Runs page is the default one, at /.
PAGES = [
    ("", "Runs"),
    ("live", "Live"),
    ("flattening", "Loss flattening"),
    ("adaptivity", "Weight adaptivity"),
    ("compare", "Compare"),
]


# Streamlit's script (and any fragment) finished: the app's data-test-script-state is notRunning.
SCRIPT_DONE = (
    "() => document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state') === 'notRunning'"
)
# Every chart on the page drawn: each Vega-Lite element holds a canvas or an SVG with a size.
ALL_DRAWN = """() => {
  const charts = [...document.querySelectorAll('[data-testid=stVegaLiteChart]')];
  return charts.every(c => {
    const drawn = c.querySelector('canvas, svg');
    return drawn && drawn.getBoundingClientRect().height > 0;
  });
}"""
DRAWN = "[data-testid='stDataFrame'], [data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DASHBOARD = ["-m", "lawn_monitor.cli", "dashboard", "--server.fileWatcherType", "none"]


@contextmanager
def streamlit_app(root: Path, tmp_path: Path, env: dict[str, str] | None = None, command: list[str] | None = None):
    """`lawn-monitor dashboard --root ROOT` on a free port of 127.0.0.1 (or ``command``, Python's
    arguments, e.g. ``-m streamlit run app``, given ``root`` as $LAWN_MONITOR_ROOT), its output in
    ``tmp_path``/streamlit.log, ``env`` added to its environment; yields its URL once it answers."""
    port = free_port()
    argv = command or [*DASHBOARD, "--client.toolbarMode", "viewer", "--root", str(root)]
    argv = [*argv, "--server.port", str(port), "--server.headless", "true"]
    env = {**({"LAWN_MONITOR_ROOT": str(root)} if command else {}), **(env or {})}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, proc)
        except AssertionError as e:
            raise RuntimeError(f"{e}: {(tmp_path / 'streamlit.log').read_text()}") from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the Streamlit server at ``url`` answers its health check (``proc`` its process)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited (exit {proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def launch(playwright, executable: str | None = None):
    """Headless Chromium (the system's binary, or ``executable``) as every browser test and
    benchmark here starts it: no sandbox (containers), no GPU, no /dev/shm (small in containers)."""
    return playwright.chromium.launch(
        executable_path=executable or CHROMIUM,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        try:
            # Streamlit scrolls inside its main block, not the document: a tall window shows whole pages.
            yield browser.new_page(viewport={"width": 1280, "height": 1800})
        finally:
            browser.close()


def wait_drawn(page, title: str, timeout_ms: float = 120_000) -> None:
    """Wait for the page's title, its script to finish and every chart on it to be drawn."""
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=timeout_ms)
    page.wait_for_function(SCRIPT_DONE, timeout=timeout_ms)
    page.wait_for_function(ALL_DRAWN, timeout=timeout_ms)


def wait_rendered(page, title: str) -> None:
    """Wait for the page's title, for its script to finish, and for at least one table or chart."""
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=30_000)
    page.locator(DRAWN).first.wait_for(timeout=30_000)
    # Then for the script to finish (on Live, for a moment between two fragment reruns), and for
    # Vega to draw what arrived last.
    page.wait_for_function(SCRIPT_DONE, timeout=30_000)
    page.wait_for_timeout(500)


class Charts:
    """Collects the Vega-Lite charts Streamlit sends a page over its websocket (the protobuf
    ForwardMsg frames, decoded with Streamlit's own classes): each chart's spec and data sets."""

    def __init__(self, page) -> None:
        self.specs: list[tuple[dict, dict]] = []  # (spec, dataset name -> DataFrame)
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        import pyarrow as pa
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        if isinstance(payload, str):
            return
        msg = ForwardMsg.FromString(payload)
        if msg.WhichOneof("type") != "delta" or msg.delta.WhichOneof("type") != "new_element":
            return
        element = msg.delta.new_element
        if element.WhichOneof("type") != "vega_lite_chart":
            return
        chart = element.vega_lite_chart
        data = {ds.name: pa.ipc.open_stream(ds.data.data).read_pandas() for ds in chart.datasets}
        self.specs.append((json.loads(chart.spec), data))

    def clear(self) -> None:
        self.specs.clear()

    def layers(self):
        """Every layer of every chart seen: (chart title, layer spec, its data)."""
        for spec, data in self.specs:
            layers = spec.get("layer", [spec])
            title = (spec.get("title") or layers[0].get("title") or {}).get("text", "")
            for layer in layers:
                name = (layer.get("data") or spec.get("data") or {}).get("name")
                yield title, layer, data.get(name)


def settle(page) -> None:
    """Wait for the script (and a rerun it triggers) to finish and for Vega to draw."""
    page.wait_for_timeout(300)
    page.wait_for_function(SCRIPT_DONE, timeout=30_000)
    page.wait_for_timeout(500)
