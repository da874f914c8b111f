"""The GPU speed flags run on the CPU too: bf16 autocast, channels_last, torch.compile."""

import functools

import pytest
import torch

from lawn_monitor import RunStore
from lawn_monitor.probes import ProbeConfig
from lawn_monitor_trainers.config import TrainConfig
from lawn_monitor_trainers.train import train


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_train_and_log(tmp_path):
    result = train(
        TrainConfig(
            dataset="digits",
            model="cnn",
            optimizer="adam",
            lawn=True,
            free_epochs=1.0,
            epochs=3,
            batch_size=64,
            amp="bf16",
            channels_last=True,
            probe_size=32,
            probes=ProbeConfig(hessian_probes=4, budget=10.0),
            root=str(tmp_path),
            progress=False,
        )
    )
    assert result.status == "finished" and result.test_acc > 0.5
    store = RunStore(tmp_path)
    assert {"train/loss", "flat_frac", "gn_trace", "hessian_trace", "sharpness"} <= set(store.metrics(result.run_id))
    loss = store.series(result.run_id, "train/loss", points=None)["value"]
    assert loss.notna().all() and loss.iloc[-1] < loss.iloc[0]


@pytest.mark.slow
def test_compiled_model_trains_with_the_monitor(tmp_path, monkeypatch):
    # Real torch.compile (Dynamo graph capture + AOTAutograd), but without Inductor's C++ code
    # generation, which takes minutes on a loaded 2-core CPU; on a GPU --compile uses Inductor.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    result = train(
        TrainConfig(
            dataset="digits",
            model="mlp",
            optimizer="sgd",
            epochs=1,
            compile=True,
            probes=ProbeConfig(curvature=False),
            root=str(tmp_path),
            progress=False,
        )
    )
    assert result.status == "finished" and result.test_acc > 0.5
    layers = set(RunStore(tmp_path).layers(result.run_id, "weight_norm")["layer"])
    assert "net.1.weight" in layers  # the plain module's names, not _orig_mod.*
