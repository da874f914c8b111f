"""Shared test fixtures: stores written by real (tiny) monitored training runs (the helpers they
use are in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import train_tiny_run


@pytest.fixture
def tiny_store(tmp_path: Path) -> Path:
    """A store root holding two finished 30-step runs: Adam with LAWN (switch after 10 steps) and plain SGD."""
    root = tmp_path / "runs"
    # Intra-op threads only add overhead on tensors this small (about 25x slower on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_tiny_run(root, "adam-lawn", "adam", lawn=True)
        train_tiny_run(root, "sgd", "sgd", lawn=False)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture
def one_thread():
    """One torch thread: on tensors this small, intra-op threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
