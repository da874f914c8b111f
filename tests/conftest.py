"""Shared test fixtures: stores written by real (tiny) monitored training runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lawn_monitor import LAWN, Monitor
from lawn_monitor.probes import ProbeConfig

# Curvature on a schedule rather than a budget (tiny runs have no time to budget), few vectors.
TINY_PROBES = ProbeConfig(
    gn_points=10, hessian_points=3, hessian_probes=8, sharpness_points=3, sharpness_iters=5, budget=1e6
)


def train_tiny_run(root: Path, name: str, optimizer: str, lawn: bool, steps: int = 30, seed: int = 0) -> str:
    """Train a tiny MLP on random data under a Monitor, evaluating every 10 steps; return its run id."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if lawn:
        opt = LAWN(opt, free_steps=10)
    config = {
        "dataset": "random",
        "model": "mlp",
        "optimizer": optimizer,
        "lawn": lawn,
        "batch_size": len(x),
        "seed": seed,
    }
    monitor = Monitor(
        model,
        opt,
        root=root,
        config=config,
        name=name,
        total_steps=steps,
        steps_per_epoch=1,
        probe_batch=(x[:16], y[:16]),
        probe_config=TINY_PROBES,
    )
    loss_fn = nn.CrossEntropyLoss()
    for step in range(1, steps + 1):
        opt.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        monitor.step(loss=loss.detach(), logits=logits.detach(), targets=y)
        if step % 10 == 0:
            with torch.no_grad():
                eval_logits = model(x)
                monitor.log_eval(
                    loss=loss_fn(eval_logits, y),
                    acc=(eval_logits.argmax(1) == y).float().mean(),
                )
    monitor.close()
    return monitor.run_id


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
