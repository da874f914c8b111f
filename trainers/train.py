"""Train one image classifier with SGD or Adam (AdamW, AdamP), with or without LAWN, monitored.

    lawn-monitor train --dataset digits --model cnn --optimizer adam --lawn --free-epochs 1 --epochs 4
    python -m trainers.train --dataset mnist --data-root data --model cnn --optimizer sgd

The run is written to ``<root>/<run_id>/`` and ends ``finished``, ``diverged`` (loss NaN/inf:
training stops cleanly), ``interrupted`` (Ctrl-C) or ``failed`` (traceback kept in run.json).
"""
from __future__ import annotations

import dataclasses
import random
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lawn_monitor import Monitor
from lawn_monitor.optim import lawn_schedule, make_optimizer, warmup_decay
from lawn_monitor.probes import ProbeConfig
from lawn_monitor.sink import default_root
from lawn_monitor.storage import is_remote

from .config import ConfigError, OneLineParser, TrainConfig, add_config_arguments, config_from_args
from .data import DataError, load_data
from .models import ModelError, build_model

USER_ERRORS = (ConfigError, DataError, ModelError, NotADirectoryError)


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    status: str
    test_acc: float | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or auto") from exc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, topk5: bool) -> dict[str, torch.Tensor]:
    """Mean loss and accuracy over a whole split; the sums stay on the device."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    n = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        if topk5:
            correct5 += (logits.topk(5, dim=1).indices == y[:, None]).any(dim=1).sum()
        n += len(y)
    model.train()
    out = {"loss": loss_sum / n, "acc": correct / n}
    if topk5:
        out["acc5"] = correct5 / n
    return out


def _check_root(root: str | None) -> str:
    """The store root: a local folder (must not be a file) or an ``s3://`` URL, kept as text."""
    path = str(root) if root is not None else default_root()
    if not is_remote(path) and Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"--root {path} is a file: pass a directory for the run store")
    return path


def train(config: TrainConfig) -> TrainResult:
    """Train as configured. Raises the USER_ERRORS for bad input before anything is written."""
    cfg = config.resolved()
    root = _check_root(cfg.root)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = load_data(cfg.dataset, cfg.batch_size, seed=cfg.seed, data_root=cfg.data_root,
                     device=device, download=cfg.download)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.dataset).to(device)

    steps_per_epoch = len(data.train)
    total_steps = cfg.epochs * steps_per_epoch
    free_steps = round(cfg.free_epochs * steps_per_epoch) if cfg.lawn else 0
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                               lawn=cfg.lawn, free_steps=free_steps, tangent=cfg.tangent,
                               reset_moments=cfg.reset_moments, **({"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}))
    if cfg.lawn:
        scheduler = lawn_schedule(optimizer, total_steps, free_steps, warmup_steps, cfg.decay)
    else:
        scheduler = warmup_decay(optimizer, total_steps, warmup_steps, cfg.decay)

    record = {**dataclasses.asdict(cfg), "free_steps": free_steps, "warmup_steps": warmup_steps,
              "steps_per_epoch": steps_per_epoch, "num_train": data.num_train,
              "schedule": "lawn" if cfg.lawn else "warmup_decay"}
    probes = ProbeConfig(every=cfg.probe_every, curvature=cfg.curvature, gn_every=cfg.gn_every,
                         hessian_points=cfg.hessian_points, hessian_probes=cfg.hessian_probes,
                         sharpness_points=cfg.sharpness_points, budget=cfg.curvature_budget, seed=cfg.seed)
    probe_batch = data.probe_batch(cfg.probe_size, cfg.seed) if cfg.curvature else None
    monitor = Monitor(model, optimizer, root=root, config=record, name=cfg.name, total_steps=total_steps,
                      steps_per_epoch=steps_per_epoch, flush_secs=cfg.flush_secs,
                      probe_batch=probe_batch, probe_config=probes)
    bar = tqdm(total=total_steps, desc=cfg.name, disable=not cfg.progress, unit="step", dynamic_ncols=True)
    status, test_acc = "finished", None
    try:
        for epoch in range(cfg.epochs):
            for x, y in data.train:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                monitor.step(loss=loss, logits=logits, targets=y)
                scheduler.step()
                bar.update(1)
                if monitor.diverged:  # known at each flush, without a per-step sync
                    break
            if monitor.diverged or not torch.isfinite(loss).item():  # one sync per epoch
                status = "diverged"
                break
            result = evaluate(model, data.test, device, topk5=data.num_classes > 10)
            monitor.log_eval(**result)
            test_acc = float(result["acc"])
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", test_acc=f"{test_acc:.4f}")
    except KeyboardInterrupt:
        bar.close()
        monitor.close("interrupted")
        raise
    except Exception:
        bar.close()
        monitor.close("failed", error=traceback.format_exc())
        raise
    bar.close()
    monitor.close(status)
    return TrainResult(monitor.run_id, monitor.run_dir, status, test_acc)


def build_parser(prog: str = "lawn-monitor train") -> OneLineParser:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    return parser


def run_cli(cfg: TrainConfig) -> int:
    """Train and turn the outcome into an exit code and one line for the terminal."""
    try:
        result = train(cfg)
    except USER_ERRORS as exc:
        print(f"lawn-monitor train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run is marked 'interrupted'; what was logged is kept", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - reported in one line, traceback kept in run.json
        print(f"lawn-monitor train: failed: {type(exc).__name__}: {exc} (traceback in the run's run.json)",
              file=sys.stderr)
        return 1
    acc = "n/a" if result.test_acc is None else f"{result.test_acc:.4f}"
    print(f"{result.status}: {result.run_id}  test_acc={acc}  ({result.run_dir})")
    return 0 if result.status == "finished" else 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(config_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
