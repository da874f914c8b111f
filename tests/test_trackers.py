"""Forwarding the Monitor's whole-model scalars to W&B (offline) and MLflow (local sqlite): once
per flush, the same steps and values the store holds, and never an error that stops training."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from lawn_monitor import Monitor, RunStore
from lawn_monitor.integrations.trackers import mlflow_name, whole_model
from lawn_monitor.schema import SCHEMA

STEPS = 20


def loss_at(step: int) -> float:
    return 1.0 / step


CONFIG = {"optimizer": "sgd", "lr": 0.1, "lawn": {"free_epochs": 2, "on": True}}


def train(root: Path, forward_to, steps: int = STEPS) -> str:
    """A few monitored steps: train/loss and a user value (whole model), one per-layer value;
    a flush every 5 steps."""
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(model, opt, root=root, name="fwd", probes=[], flush_every=5, forward_to=forward_to, config=CONFIG)
    for step in range(1, steps + 1):
        opt.step()
        monitor.step()
        monitor.log({"train/loss": torch.tensor(loss_at(step)), "top1@val": 0.5})
        monitor.log({"grad_norm": 1.0}, layer="weight")
    monitor.close()
    return monitor.run_id


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[tuple[int, float, dict[str, float]]]] = []

    def forward(self, table: pa.Table) -> None:
        self.calls.append(whole_model(table))


class Broken:
    def forward(self, table: pa.Table) -> None:
        raise ConnectionError("tracker unreachable")


def test_whole_model_rows_by_step():
    table = pa.table(
        {
            "run_id": ["r"] * 4,
            "step": [2, 1, 2, 1],
            "epoch": [math.nan] * 4,
            "wall_time": [10.0, 9.0, 11.0, 9.5],
            "layer": ["", "", "", "fc.weight"],
            "metric": ["loss", "loss", "loss", "grad_norm"],
            "value": [0.5, 1.0, 0.4, 3.0],
        },
        schema=SCHEMA,
    )
    assert whole_model(table) == [(1, 9.0, {"loss": 1.0}), (2, 11.0, {"loss": 0.4})]


def test_mlflow_names():
    assert mlflow_name("train/loss") == "train/loss"
    assert mlflow_name("top1@val") == "top1_val"
    assert mlflow_name("/a//b/./c/") == "a/b/c"
    assert mlflow_name("lr: warm-up 1.0") == "lr_ warm-up 1.0"
    assert mlflow_name("..") == "_"


def test_monitor_forwards_once_per_flush_whole_model_only(tmp_path):
    recorder = Recorder()
    run_id = train(tmp_path, recorder)
    # One call per flush, not per step: at steps 5, 10, 15, 20 (inside monitor.step), and at
    # close for the values logged after step 20's flush.
    assert len(recorder.calls) == STEPS // 5 + 1
    sent: dict[int, dict[str, float]] = {}
    for call in recorder.calls:
        assert [step for step, _, _ in call] == sorted({step for step, _, _ in call})  # in step order
        for step, _, values in call:
            sent.setdefault(step, {}).update(values)
    assert sorted(sent) == list(range(1, STEPS + 1))
    assert all("grad_norm" not in values for values in sent.values())  # per-layer rows stay in the store
    store = RunStore(tmp_path)
    for metric in ("train/loss", "top1@val", "lr"):
        series = store.series(run_id, metric, points=None)
        assert [sent[step][metric] for step in series["step"]] == pytest.approx(series["value"].tolist())


def test_a_failing_forwarder_warns_once_and_training_goes_on(tmp_path):
    recorder = Recorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_id = train(tmp_path, [Broken(), recorder])
    messages = [str(w.message) for w in caught if "forwarding" in str(w.message)]
    assert len(messages) == 1 and "Broken" in messages[0] and "tracker unreachable" in messages[0]
    assert len(recorder.calls) == STEPS // 5 + 1  # the next forwarder still gets every flush
    store = RunStore(tmp_path)
    assert store.runs().loc[0, "status"] == "finished"
    assert len(store.series(run_id, "train/loss", points=None)) == STEPS


def wandb_history(run_dir: Path) -> list[tuple[int, dict[str, str]]] | None:
    """(step, {key: JSON value}) of each history row in an offline run's ``.wandb`` file, or None
    until W&B has written the run's end. W&B stores its records in LevelDB's log format (32 KiB
    blocks of chunks with a 7-byte header: checksum, length, type 1 full / 2 first / 3 middle /
    4 last) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("*.wandb")
    data = path.read_bytes()
    pos, record, rows, ended = 7, b"", [], False
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        record = chunk if kind in (1, 2) else record + chunk
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            ended |= parsed.WhichOneof("record_type") == "exit"
            if parsed.WhichOneof("record_type") == "history":
                rows.append(
                    (
                        parsed.history.step.num,
                        {i.key or "/".join(i.nested_key): i.value_json for i in parsed.history.item},
                    )
                )
    return rows if ended else None


@pytest.mark.slow  # starting W&B's service and waiting for its file: about 5 s
def test_wandb_offline_run_gets_the_same_values(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from lawn_monitor.integrations.trackers import WandbForwarder

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = wandb.init(
        dir=str(tmp_path), project="lawn", mode="offline", settings=wandb.Settings(console="off", x_disable_stats=True)
    )
    try:
        run_id = train(tmp_path / "runs", WandbForwarder(run, prefix="lawn/"))
        assert dict(run.config) == {**CONFIG, "lawn_monitor_run_id": run_id}  # the config, with the first flush
    finally:
        run.finish()
        wandb.teardown()  # offline, finish() can return before W&B's service has written the file
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    deadline = time.monotonic() + 10
    while (history := wandb_history(run_dir)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert history is not None, "W&B did not finish writing the offline run within 10 s"
    assert [step for step, _ in history] == list(range(1, STEPS + 1))
    series = RunStore(tmp_path / "runs").series(run_id, "train/loss", points=None)
    np.testing.assert_allclose([float(row["lawn/train/loss"]) for _, row in history], series["value"])
    assert all(float(row["lawn/top1@val"]) == 0.5 and "lawn/grad_norm" not in row for _, row in history)


@pytest.mark.slow  # importing mlflow and creating its sqlite tables: about 6 s
@pytest.mark.filterwarnings("ignore:The ``noload`` loader")  # inside mlflow's sqlite store
def test_mlflow_run_gets_the_same_values(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from lawn_monitor.integrations.trackers import MLflowForwarder

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as active:
            run_id = train(tmp_path / "runs", MLflowForwarder())
        client = mlflow.MlflowClient()
        loss = sorted(client.get_metric_history(active.info.run_id, "train/loss"), key=lambda m: m.step)
        series = RunStore(tmp_path / "runs").series(run_id, "train/loss", points=None)
        assert [m.step for m in loss] == series["step"].tolist() == list(range(1, STEPS + 1))
        np.testing.assert_allclose([m.value for m in loss], series["value"])
        np.testing.assert_allclose([m.timestamp / 1000 for m in loss], series["wall_time"], atol=1e-3)
        renamed = client.get_metric_history(active.info.run_id, "top1_val")  # "@" is not allowed
        assert len(renamed) == STEPS and {m.value for m in renamed} == {0.5}
        assert client.get_metric_history(active.info.run_id, "grad_norm") == []
        data = client.get_run(active.info.run_id).data
        assert data.params == {"optimizer": "sgd", "lr": "0.1", "lawn.free_epochs": "2", "lawn.on": "True"}
        assert data.tags["lawn_monitor.run_id"] == run_id
    finally:
        mlflow.set_tracking_uri("")


def test_mlflow_forwarder_without_a_run_warns_and_training_goes_on(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from lawn_monitor.integrations.trackers import MLflowForwarder

    assert mlflow.active_run() is None
    with pytest.warns(UserWarning, match="no active MLflow run"):
        run_id = train(tmp_path, MLflowForwarder())
    assert len(RunStore(tmp_path).series(run_id, "train/loss", points=None)) == STEPS


# --- each forwarder with only its extra installed: the README's example ---------------------------

README_TRAIN = """
import torch
from torch import nn
from lawn_monitor import Monitor


def train(monitor, model, optimizer, steps=100):
    for _ in range(steps):
        x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(loss=loss, logits=logits, targets=y)


model = nn.Linear(8, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
"""
README_EXAMPLES = {
    "wandb": """
import wandb
from lawn_monitor.integrations.trackers import WandbForwarder

run = wandb.init(project="lawn", mode="offline")
with Monitor(model, optimizer, config={"lr": 0.1}, forward_to=WandbForwarder(run)) as monitor:
    train(monitor, model, optimizer)
print("config", run.config["lr"], run.config["lawn_monitor_run_id"] == monitor.run_id)
run.finish()
""",
    "mlflow": """
import mlflow
from lawn_monitor.integrations.trackers import MLflowForwarder

mlflow.set_tracking_uri("sqlite:///mlflow.db")
with mlflow.start_run() as active, Monitor(
    model, optimizer, config={"lr": 0.1}, forward_to=MLflowForwarder()
) as monitor:
    train(monitor, model, optimizer)
data = mlflow.MlflowClient().get_run(active.info.run_id).data
print("config", data.params["lr"], data.tags["lawn_monitor.run_id"] == monitor.run_id)
print("steps", len(mlflow.MlflowClient().get_metric_history(active.info.run_id, "train/loss")))
""",
}


def closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install (their own requirements, recursively)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (req.marker is not None and not req.marker.evaluate({"extra": ""})) or name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in distribution(name).requires or []]
        except PackageNotFoundError:
            pass
    return seen


def site_with_only(extra: str, site: Path) -> Path:
    """A folder of links to what ``pip install lawn-monitor[extra]`` installs, taken from this
    environment: run with ``python -S`` and it on PYTHONPATH, nothing else is importable."""
    from importlib.metadata import distributions

    from packaging.utils import canonicalize_name

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    allowed = closure([*project["dependencies"], *project["optional-dependencies"][extra]])
    site.mkdir()
    for dist in distributions():
        if canonicalize_name(dist.metadata["Name"]) not in allowed:
            continue
        for top in {f.parts[0] for f in dist.files or []}:
            source, link = Path(str(dist.locate_file(top))), site / top
            if top not in ("..", "__pycache__") and not top.endswith(".pth") and source.exists() and not link.exists():
                link.symlink_to(source)
    return site


@pytest.mark.slow  # importing the tracker and starting its store or service: 10-80 s here
@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_the_readme_example_with_only_the_extra_installed(tmp_path, extra):
    """The README's example, run where only lawn-monitor's core and ``[extra]`` are importable:
    ``[mlflow]`` (mlflow-skinny) must bring what its sqlite store needs."""
    pytest.importorskip(extra)
    site = site_with_only(extra, tmp_path / "site")
    assert not (site / "sqlalchemy").exists() or extra == "mlflow"
    assert not (site / ("wandb" if extra == "mlflow" else "mlflow")).exists()
    script = tmp_path / "example.py"
    script.write_text(README_TRAIN + README_EXAMPLES[extra])
    repo = Path(__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{repo}",
        "LAWN_MONITOR_ROOT": str(tmp_path / "runs"),
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-S", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "config 0.1 True" in done.stdout
    if extra == "mlflow":
        assert "steps 100" in done.stdout
    [run] = RunStore(tmp_path / "runs").runs()["run_id"]
    assert len(RunStore(tmp_path / "runs").series(run, "train/loss", points=None)) == 100
