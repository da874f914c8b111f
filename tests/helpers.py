"""What several test files share, in one place: tiny monitored training runs and the metrics a
Monitor writes on every step, the command line run in-process, runs written through the real
Monitor, writer processes to kill, and the dashboard opened in Streamlit's AppTest. Fixtures
built on these are in conftest.py; test files import from here, never from each other. Also
moto's S3 server, for the tests of s3:// roots."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lawn_monitor import LAWN, Monitor, RunStore
from lawn_monitor.cli import main as cli_main
from lawn_monitor.probes import ProbeConfig
from tests.store_writer import ROWS_PER_FLUSH, STEPS_PER_FLUSH

REPO = Path(__file__).resolve().parent.parent
WRITER = REPO / "tests" / "store_writer.py"
APP = str(REPO / "lawn_monitor" / "dashboard" / "streamlit_app.py")

# --- tiny monitored training runs -------------------------------------------------------------

# Curvature on a schedule rather than a budget (tiny runs have no time to budget), few vectors.
TINY_PROBES = ProbeConfig(
    gn_points=10, hessian_points=3, hessian_probes=8, sharpness_points=3, sharpness_iters=5, budget=1e6
)


# The metrics a Monitor with its default probes writes on every step, curvature aside.
CHEAP_METRICS = {
    "train/loss",
    "train/acc",
    "lr",
    "phase",
    "weight_norm",
    "grad_norm",
    "update_norm",
    "update_ratio",
    "grad_weight_cos",
    "logit_norm",
    "max_prob",
    "flat_frac",
    "step_time",
    "samples_per_s",
    "test/loss",
    "test/acc",
    "weight_growth",
    "update_ratio_per_lr",
}


def tiny_mlp(seed: int = 0) -> nn.Module:
    """An 8-16-4 MLP, its weights drawn from ``seed`` (torch's global generator, seeded here)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def train_tiny_run(
    root: Path, name: str, optimizer: str, lawn: bool, steps: int = 30, seed: int = 0, dataset: str = "random"
) -> str:
    """Train a tiny MLP on random data under a Monitor, evaluating every 10 steps; return its run id.
    ``dataset``: the data set's name in the run's config."""
    model = tiny_mlp(seed)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if lawn:
        opt = LAWN(opt, free_steps=10)
    config = {
        "dataset": dataset,
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


# --- the command line, in-process -------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``lawn-monitor ARGV`` in-process; return (exit code, stdout, stderr)."""
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse exits on usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


# --- runs through the real Monitor, one loss per step -----------------------------------------


def write_run(root, name, config, losses, accs=(), lawn_switch=None, status="finished"):
    """A run through the real Monitor: ``losses`` per step, test accuracies at the end."""
    model = torch.nn.Linear(3, 2)

    class FakeLawn:  # the Monitor reads only .phase and .param_groups from an optimizer
        param_groups = [{"lr": 0.1}]
        phase = "free"

    opt = FakeLawn()
    monitor = Monitor(model, opt, root=root, config=config, name=name, total_steps=len(losses), flush_every=3)
    for step, loss in enumerate(losses, 1):
        if lawn_switch is not None and step >= lawn_switch:
            opt.phase = "constrained"
        monitor.step(loss=torch.tensor(loss))
    for acc in accs:
        monitor.log_eval(acc=acc)
    monitor.close(status)
    return monitor.run_id


# --- writer processes (tests/store_writer.py), to kill at chosen moments ----------------------


def start_writer(root, run_id, flushes, pause=0.0):
    return wait_ready(spawn_writer(root, run_id, flushes, pause))


def spawn_writer(root, run_id, flushes, pause=0.0):
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(root), run_id, str(flushes), str(pause)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_ready(proc):
    assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()
    return proc


def check_whole_flushes(store: RunStore, run_id: str) -> int:
    """Every query works; the run holds only whole flushes 0..n-1: no gap, no duplicate."""
    counts = store._query(
        """SELECT count(*) AS rows, count(DISTINCT (step, layer, metric)) AS distinct_rows,
                  coalesce(max(step), -1) AS max_step, count(DISTINCT step) AS steps
           FROM read_parquet(?)""",
        [],
        [run_id],
        ["rows", "distinct_rows", "max_step", "steps"],
    )
    if counts.empty:  # killed before its first flush: no data files at all
        return 0
    counts = counts.iloc[0]
    rows = int(counts["rows"])
    assert rows % ROWS_PER_FLUSH == 0, f"{run_id}: {rows} rows is not a whole number of flushes"
    assert counts["distinct_rows"] == rows or rows == 0, f"{run_id}: duplicate rows"
    flushes = rows // ROWS_PER_FLUSH
    if flushes:
        assert counts["steps"] == flushes * STEPS_PER_FLUSH and counts["max_step"] == flushes * STEPS_PER_FLUSH - 1
    return flushes


# --- the dashboard in Streamlit's AppTest -----------------------------------------------------


def run_app(root: Path, page: str = "runs", params: dict | None = None, state: dict | None = None):
    """Open ``page`` of a dashboard serving ``root`` (as `lawn-monitor dashboard --allow-root`
    does), with ``?root=`` and ``params`` in the URL; fail on any exception on the page."""
    from streamlit.testing.v1 import AppTest  # the dashboard's tests only

    os.environ["LAWN_MONITOR_ALLOWED_ROOTS"] = str(root)
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


# --- an S3 server on 127.0.0.1 (moto's; never a real cloud) ----------------------------------


@contextmanager
def s3_server(bucket: str) -> Iterator[dict[str, str]]:
    """moto's S3 server with ``bucket`` in it, pointed to by AWS_* variables set in os.environ
    (the way a user configures s3fs) until the block ends; yields those variables. Callers
    importorskip moto.server and s3fs first."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        if not fs.exists(bucket):  # moto keeps its buckets between servers of one process
            fs.mkdir(bucket)
        yield env
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
