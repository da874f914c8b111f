"""The trainer end to end on real offline data, its run endings, and its one-line errors."""

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from lawn_monitor import RunStore
from lawn_monitor.optim import BUILDERS
from lawn_monitor.probes import ProbeConfig
from lawn_monitor_trainers import train as train_module
from lawn_monitor_trainers.config import FLAGS, TrainConfig, config_from_flags, config_from_record, flag_values
from lawn_monitor_trainers.data import load_data
from lawn_monitor_trainers.models import build_model
from lawn_monitor_trainers.optimizers import OPTIMIZERS
from lawn_monitor_trainers.train import build_parser
from tests.helpers import CHEAP_METRICS, run_cli


@pytest.mark.slow
def test_digits_lawn_run_end_to_end(tmp_path):
    """The issue's command, as a user types it, in a fresh process."""
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lawn_monitor.cli",
            "train",
            "--dataset",
            "digits",
            "--model",
            "cnn",
            "--optimizer",
            "adam",
            "--lawn",
            "--free-epochs",
            "1",
            "--epochs",
            "4",
            "--batch-size",
            "64",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    store = RunStore(tmp_path)
    runs = store.runs()
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "finished" and run["progress"] == 1.0
    assert run["test_acc"] > 0.9, run["test_acc"]
    assert set(store.metrics(run["run_id"])) >= CHEAP_METRICS
    layers = set(store.layers(run["run_id"], "weight_norm")["layer"])
    assert "features.0.weight" in layers and "classifier.bias" in layers
    switch = store.switch_steps(run["run_id"])
    assert switch["step"].tolist() == [run["steps_per_epoch"] + 1]  # the first constrained step
    assert elapsed < 120  # "well under a minute" of training; generous for a loaded CI machine


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "imagenet-9"], "invalid choice: 'imagenet-9'"),
        (["train", "--model", "resnet999"], "invalid choice: 'resnet999'"),
        (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["train", "--lawn", "--free-epochs", "4", "--epochs", "4"], "--free-epochs (4) must be"),
        (
            ["train", "--dataset", "cifar10", "--data-root", "/nonexistent/data"],
            "cifar10 not found under /nonexistent/data",
        ),
        (["train", "--dataset", "mnist1d", "--model", "cnn"], "use --model mlp"),
        (["train", "--epochs", "many"], "invalid int value"),
        (["train", "--lawn", "--free-epochs", "soon"], "invalid free_epochs_value value: 'soon'"),
        (
            ["train", "--lawn", "--free-epochs", "auto", "--epochs", "6", "--auto-min-epochs", "4"],
            "--auto-min-epochs (4) <= --auto-max-epochs (3)",
        ),
        (["train", "--lawn", "--lawn-params", "last"], "invalid choice: 'last'"),
        (["sweep", "--optimizers", "sgd,lion"], "unknown optimizer 'lion'"),
        (["frobnicate"], "unknown command"),
    ],
)
def test_bad_input_gets_one_line_and_nonzero_exit(argv, message, capsys, tmp_path):
    rc, out, err = run_cli([*argv, *(["--root", str(tmp_path)] if argv[0] in ("train", "sweep") else [])], capsys)
    assert rc != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.slow
def test_free_epochs_auto_switches_and_records_why(capsys, tmp_path):
    """--free-epochs auto: Adam at a high LR memorizes digits' training set, flat_frac climbs,
    and LAWN switches at its onset, between --auto-min-epochs and --auto-max-epochs."""
    rc, out, err = run_cli(
        [
            "train",
            "--dataset",
            "digits",
            "--optimizer",
            "adam",
            "--lawn",
            "--free-epochs",
            "auto",
            "--epochs",
            "4",
            "--auto-max-epochs",
            "3",
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--no-curvature",
            "--no-progress",
            "--threads",
            "1",
            "--probe-every",
            "1",
            "--lawn-params",
            "homogeneous",
            "--root",
            str(tmp_path),
        ],
        capsys,
    )
    assert rc == 0, err
    store = RunStore(tmp_path)
    run_id = store.runs()["run_id"].iloc[0]
    info = store.run_info(run_id)
    switch = info["lawn_switch"]
    assert switch["rule"] == "auto" and "flat_frac" in switch["reason"], switch
    spe = info["steps_per_epoch"]
    assert spe < switch["step"] < 3 * spe  # after --auto-min-epochs 1, before --auto-max-epochs 3
    assert store.switch_steps(run_id)["step"].tolist() == [switch["step"]]
    config = info["config"]
    assert config["free_epochs"] == "auto" and config["free_steps"] == "auto" and config["lawn_params"] == "homogeneous"
    assert config["auto_switch"] == {
        "max_steps": 3 * spe,
        "threshold": 0.5,
        "window": 20,
        "min_steps": spe,
        "rule": "flat_frac",
        "patience": 1,
        "drop": 0.5,
        "acc": 0.95,
        "growth": 1.25,
    }


def test_root_that_is_a_file(capsys, tmp_path):
    file = tmp_path / "store"
    file.write_text("not a directory")
    for argv in (["train", "--root", str(file)], ["runs", "--root", str(file)]):
        rc, out, err = run_cli(argv, capsys)
        assert rc != 0 and "is a file" in err and len(err.strip().splitlines()) == 1
    assert file.read_text() == "not a directory"


def test_diverged_run_stops_cleanly(capsys, tmp_path):
    rc, out, err = run_cli(
        [
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--optimizer",
            "sgd",
            "--lr",
            "1e4",
            "--epochs",
            "3",
            "--root",
            str(tmp_path),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 3 and out.startswith("diverged:")
    run = RunStore(tmp_path).runs().iloc[0]
    assert run["status"] == "diverged" and run["step"] < run["total_steps"]


def test_failed_run_keeps_traceback(monkeypatch, capsys, tmp_path):
    def broken_eval(*args, **kwargs):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(train_module, "evaluate", broken_eval)
    rc, out, err = run_cli(
        ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--root", str(tmp_path), "--no-progress"],
        capsys,
    )
    assert rc == 1 and "evaluation exploded" in err and len(err.strip().splitlines()) == 1
    run_dir = next(tmp_path.iterdir())
    assert f"(traceback in {run_dir}/run.json)" in err
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "RuntimeError: evaluation exploded" in info["error"]
    assert "train/loss" in RunStore(tmp_path).metrics(run_dir.name)  # what was logged is kept


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lawn_monitor.cli",
            "train",
            "--dataset",
            "synthetic",
            "--model",
            "mlp",
            "--epochs",
            "1000",
            "--root",
            str(tmp_path),
            "--flush-secs",
            "0.2",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = RunStore(tmp_path).runs() if any(tmp_path.iterdir()) else None
            if runs is not None and len(runs) and runs.iloc[0]["step"] > 0:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run = RunStore(tmp_path).runs().iloc[0]
    assert run["status"] == "interrupted"
    # Everything flushed is kept; an interrupt in the middle of a flush may lose that one flush.
    assert 0 < len(RunStore(tmp_path).series(run["run_id"], "train/loss")) <= run["step"]


@pytest.mark.slow
def test_sweep_then_runs_and_compare(capsys, tmp_path):
    rc, out, err = run_cli(
        [
            "sweep",
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--optimizers",
            "sgd,adam",
            "--lawn",
            "both",
            "--epochs",
            "2",
            "--free-epochs",
            "1",
            "--root",
            str(tmp_path),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, err
    runs = RunStore(tmp_path).runs()
    assert sorted(runs["name"]) == ["adam-b64-s0", "adam-lawn-b64-s0", "sgd-b64-s0", "sgd-lawn-b64-s0"]
    assert (runs["status"] == "finished").all()
    rc, out, err = run_cli(["runs", "--root", str(tmp_path)], capsys)
    assert rc == 0 and out.count("finished") == 4
    rc, out, err = run_cli(["compare", "--root", str(tmp_path), "--by", "optimizer,lawn"], capsys)
    assert rc == 0 and len(out.strip().splitlines()) == 5  # header + 4 groups


def test_failure_before_the_run_exists_names_no_run_json(monkeypatch, capsys, tmp_path):
    def broken_model(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(train_module, "build_model", broken_model)
    rc, out, err = run_cli(["train", "--dataset", "digits", "--root", str(tmp_path), "--no-progress"], capsys)
    assert rc == 1 and "RuntimeError: model exploded (raised at test_trainer.py:" in err, err
    assert "run.json" not in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no run was created


def test_the_trainers_offer_the_optimizers_the_core_builds():
    assert set(OPTIMIZERS) == set(BUILDERS)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_trains_with_its_defaults(name, capsys, tmp_path):
    """No --lr, no --weight-decay: each optimizer's defaults come from trainers/optimizers.py."""
    rc, out, err = run_cli(
        [
            "train",
            "--optimizer",
            name,
            "--dataset",
            "digits",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--no-curvature",
            "--root",
            str(tmp_path),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0 and out.startswith("finished:"), err
    run = RunStore(tmp_path).runs().iloc[0]
    assert run["lr"] == OPTIMIZERS[name].lr and run["weight_decay"] == OPTIMIZERS[name].weight_decay
    assert run["test_acc"] > 0.2  # it learned something in one epoch (chance: 0.1)


def test_probe_settings_are_a_nested_probe_config_with_the_flags_users_know():
    args = build_parser().parse_args(
        ["--probe-every", "5", "--no-curvature", "--curvature-budget", "0.1", "--gn-points", "7", "--seed", "3"]
    )
    cfg = config_from_flags({k: v for k, v in vars(args).items() if k in FLAGS}).resolved()
    assert cfg.probes == ProbeConfig(every=5, curvature=False, budget=0.1, gn_points=7, seed=3)  # the run's seed
    assert flag_values(cfg)["curvature_budget"] == 0.1 and flag_values(cfg)["probe_every"] == 5
    record = dataclasses.asdict(cfg)  # as run.json and the checkpoint save it
    assert record["probes"]["every"] == 5 and "probe_every" not in record
    assert config_from_record(record) == cfg
    # A record from before the nesting holds the probe settings by flag name.
    flat = {k: v for k, v in record.items() if k != "probes"}
    flat.update(probe_every=5, curvature=False, curvature_budget=0.1, gn_points=7, steps_per_epoch=23)
    assert config_from_record(flat).resolved() == cfg


def test_config_defaults_depend_on_the_optimizer():
    assert TrainConfig(optimizer="sgd").resolved().lr == 0.1
    cfg = TrainConfig(optimizer="adam", lawn=True, batch_size=32, seed=7).resolved()
    assert cfg.lr == 3e-3 and cfg.weight_decay == 0.0 and cfg.name == "adam-lawn-b32-s7"


@pytest.mark.parametrize(
    "dataset, model, shape",
    [("digits", "cnn", (1, 8, 8)), ("mnist1d", "mlp", (40,)), ("synthetic", "vgg19", (3, 32, 32))],
)
def test_each_model_trains_a_step(dataset, model, shape):
    data = load_data(dataset, batch_size=8)
    assert data.input_shape == shape and data.num_classes == 10
    net = build_model(model, data.input_shape, data.num_classes)
    x, y = next(iter(data.train))
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
