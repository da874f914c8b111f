"""The dashboard trusts no URL: ``?root=`` chooses only among the roots the server was started
with (never reading, or revealing anything about, a place a visitor names), other schemes are
refused, and no query parameter, however odd, breaks a page or shows a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from lawn_monitor.dashboard.state import normal_root
from tests.helpers import train_tiny_run

APP = str(Path(__file__).resolve().parent.parent / "lawn_monitor" / "dashboard" / "streamlit_app.py")
TOUCHED: list[tuple[str, tuple]] = []  # filesystem audit events naming a path the tests watch
WATCHED: set[str] = set()


def _audit(event: str, args: tuple) -> None:
    if WATCHED and event in ("open", "os.listdir", "os.scandir", "os.stat", "os.lstat") and args:
        target = str(args[0])
        if any(w in target for w in WATCHED):
            TOUCHED.append((event, args))


sys.addaudithook(_audit)  # os.stat and friends raise these (PEP 578); a hook cannot be removed, it filters


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served") / "runs"
    train_tiny_run(root, "sgd-s0", "sgd", lawn=False, seed=0)
    train_tiny_run(root, "adam-lawn-s0", "adam", lawn=True, seed=0)
    return root


@pytest.fixture(autouse=True)
def serve(served, monkeypatch):
    monkeypatch.setenv("LAWN_MONITOR_ROOT", str(served))
    monkeypatch.delenv("LAWN_MONITOR_ALLOWED_ROOTS", raising=False)


def open_page(page: str, params: dict) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page(f"views/{page}.py")
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def test_normal_root():
    assert normal_root("runs") == os.path.abspath("runs")
    assert normal_root("~/x") == os.path.expanduser("~/x")
    assert normal_root("s3://bucket/prefix/") == "s3://bucket/prefix"
    for other in ("ftp://host/x", "http://host/x", "file:///etc", "s3://", "  "):
        assert normal_root(other) is None


@pytest.mark.slow
def test_root_outside_the_served_ones_is_refused_untouched(served, tmp_path):
    outside = tmp_path / "secret-store"
    train_tiny_run(outside, "private", "sgd", lawn=False, seed=1)
    WATCHED.add("secret-store")
    TOUCHED.clear()
    try:
        for root in (
            str(outside),
            f"{outside}/../secret-store",
            "ftp://example.invalid/runs",
            "file:///etc",
            "s3://someone-elses-bucket/runs",
            "/etc",
            "x" * 5000,
        ):
            at = open_page("runs", {"root": root})
            assert not at.exception, (root, [e.value for e in at.exception])
            assert at.sidebar.selectbox[0].value == str(served), root
            assert any("does not serve" in w.value for w in at.sidebar.warning), root
            names = set(at.dataframe[0].value["label"]) if at.dataframe else set()
            assert "private" not in names
    finally:
        WATCHED.discard("secret-store")
    assert not TOUCHED, f"the refused root was read: {TOUCHED[:3]}"


@pytest.mark.slow
def test_allowed_root_is_offered_and_chosen_by_url(served, tmp_path, monkeypatch):
    other = tmp_path / "other"
    train_tiny_run(other, "elsewhere", "adam", lawn=False, seed=2)
    monkeypatch.setenv("LAWN_MONITOR_ALLOWED_ROOTS", f"{other},ftp://example.invalid/x")
    at = open_page("runs", {"root": f"{other}/"})
    assert not at.exception
    assert at.sidebar.selectbox[0].options == [str(served), str(other)]  # the ftp:// entry is never served
    assert at.sidebar.selectbox[0].value == str(other)
    assert set(at.dataframe[0].value["label"]) == {"elsewhere"}


# Odd values for every query parameter, each on the page that reads it: NaN, infinities, huge,
# negative, wrong types, unknown options, control characters, very long strings.
ODD = ["nan", "inf", "-1", "1e308", "abc", "x" * 5000, "\x00", "🙂", "[1, 2]", ""]
CASES = (
    [("live", "smooth", v) for v in ODD]
    + [("live", key, v) for key in ("zoom", "crosshair") for v in ("2", "yes", "nan", "")]
    + [("runs", "runs", v) for v in ("no-such-run", "x" * 5000, "")]
    + [("runs", "status", v) for v in ("exploded", "nan", "")]
    + [("runs", "optimizer", v) for v in ("rmsprop", "\x00")]
    + [("flattening", key, v) for key in ("log", "refresh") for v in ("maybe", "-1", "nan")]
    + [("adaptivity", key, v) for key in ("a", "b", "since", "more") for v in ("no-such-run", "1e308")]
    + [
        ("compare", key, v)
        for key in ("metric", "x", "layer", "group", "band", "dataset", "reduce")
        for v in ("no-such", "nan", "x" * 5000)
    ]
)


@pytest.mark.slow
def test_odd_query_parameters_never_break_a_page():
    assert len(CASES) >= 50
    failures = []
    for page, key, value in CASES:
        at = open_page(page, {key: value})
        if at.exception:
            failures.append((page, key, value[:20], str(at.exception[0].value)[:200]))
        elif at.error:
            failures.append((page, key, value[:20], at.error[0].value[:200]))
    assert not failures, failures


def test_a_failing_page_shows_a_short_error_without_server_paths(served, monkeypatch):
    """A page that raises shows the kind of failure only; the traceback goes to the server log."""
    from lawn_monitor import RunStore

    def broken(self, *args, **kwargs):
        raise OSError(f"disk error under {served}/secret")

    monkeypatch.setattr(RunStore, "switch_steps", broken)
    st.cache_data.clear()  # an earlier page's query results, kept by data version, would hide the failure
    at = open_page("flattening", {})
    assert not at.exception
    message = at.error[0].value
    assert "OSError" in message and str(served) not in message and "secret" not in message
