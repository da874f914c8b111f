"""The metric descriptions: one source for docs/metrics.md's table and the dashboard."""

from pathlib import Path

from lawn_monitor import RunStore
from lawn_monitor.metrics import BY_NAME, info, markdown_table
from tests.helpers import train_tiny_run

METRICS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def test_the_metrics_page_carries_exactly_the_metric_table():
    assert markdown_table() in METRICS_PAGE.read_text(), "regenerate it: python -m lawn_monitor.metrics"


def test_every_metric_a_run_writes_is_described(tmp_path):
    run_id = train_tiny_run(tmp_path, "described", "adam", lawn=True, steps=12)
    written = set(RunStore(tmp_path).metrics(run_id))
    assert {"weight_growth", "update_ratio_per_lr", "gn_trace", "sharpness", "test/acc"} <= written
    assert written <= set(BY_NAME), written - set(BY_NAME)
    assert info("my/own").meaning == "logged with monitor.log"  # a user's metric still gets a line
