"""The dashboard screenshots in docs/dashboard.md and the README, taken in headless Chromium.

    python docs/screenshots.py --store /tmp/demo                 # runs that have ended (post-hoc)
    python docs/screenshots.py --train 60 --suffix=-training     # make demo's four runs, 60 s into training

``--store`` is an existing store (``python benchmarks/app.py --build demo --store /tmp/demo`` makes
make demo's four runs and trains them to the end). ``--train SECONDS`` starts make demo's sweep in
a temporary store instead, waits until its runs have trained that long, and takes the pictures
while they still train (then stops them). Each page is shot once its script has finished and every
chart is drawn, 1280 px wide, cropped below its last content, as docs/dashboard-<page><suffix>.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.app import start_training  # noqa: E402
from tests.browser import CHROMIUM, launch, streamlit_app, wait_drawn  # noqa: E402

# (url path and query, the page's title, the file's name): every page, Compare with two panels.
SHOTS = [
    ("", "Runs", "runs"),
    ("live", "Live", "live"),
    ("flattening", "Loss flattening", "flattening"),
    ("adaptivity", "Weight adaptivity", "adaptivity"),
    ("compare?panels=train/loss&panels=weight_norm&metric=test/acc", "Compare", "compare"),
]
SIDEBAR_PX = 330  # the sidebar's width at this window size: the crop looks right of it for content


def crop_below_content(path: Path) -> None:
    """Cut the picture a little below the lowest non-white pixel of the page's main column."""
    image = Image.open(path).convert("RGB")
    ink = np.where((np.asarray(image)[:, SIDEBAR_PX:, :] < 235).any(axis=(1, 2)))[0]
    bottom = min(image.height, int(ink.max()) + 40) if len(ink) else image.height
    image.crop((0, 0, image.width, bottom)).save(path, optimize=True)


def shoot(root: Path, suffix: str, pages: list[str] | None) -> None:
    from playwright.sync_api import sync_playwright

    logs = Path(tempfile.mkdtemp(prefix="lawn-screenshots-"))
    with streamlit_app(root, logs) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 2600})
        for path, title, name in SHOTS:
            if pages and name not in pages:
                continue
            page.goto(f"{url}/{path}")
            wait_drawn(page, title, timeout_ms=180_000)
            page.wait_for_timeout(1500)  # tooltips and fades settle
            target = REPO / "docs" / f"dashboard-{name}{suffix}.png"
            page.screenshot(path=str(target))
            crop_below_content(target)
            print(f"wrote {target.relative_to(REPO)}", flush=True)
        browser.close()
    shutil.rmtree(logs, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="an existing store to show")
    parser.add_argument("--train", type=float, help="instead: make demo's runs, shot this many seconds into training")
    parser.add_argument("--suffix", default="", help="added to each file's name, e.g. -training")
    parser.add_argument(
        "--pages", help="comma-separated names to shoot (default: all): " + ",".join(s[2] for s in SHOTS)
    )
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("docs/screenshots.py: no chromium binary: apt-get install chromium, or set LAWN_MONITOR_CHROMIUM")
    if (args.store is None) == (args.train is None):
        sys.exit("docs/screenshots.py: pass --store DIR (runs that exist) or --train SECONDS (make demo's runs)")
    pages = args.pages.split(",") if args.pages else None
    if args.store is not None:
        if not args.store.is_dir():
            sys.exit(
                f"docs/screenshots.py: --store {args.store} is not a folder: make one with benchmarks/app.py --build"
            )
        shoot(args.store, args.suffix, pages)
        return
    proc, root = start_training(4, epochs=None)  # make demo's runs as they are
    try:
        time.sleep(args.train)
        shoot(root, args.suffix, pages)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
