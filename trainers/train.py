"""Train one image classifier with SGD, Adam, AdamW, AdamP or LAMB, with or without LAWN, monitored.

    lawn-monitor train --dataset digits --model cnn --optimizer adam --lawn --free-epochs 1 --epochs 4
    lawn-monitor train --dataset digits --optimizer adam --lawn --free-epochs auto --epochs 10
    lawn-monitor train --recipe cifar10-adam-lawn-b256 --data-root data --amp bf16 --channels-last
    torchrun --nproc_per_node 8 -m trainers.train --recipe imagenet-adam-lawn-b16k --data-root /data
    lawn-monitor train --resume 20261129-031500-adam-lawn-b256-s0-3f2a --root runs

The run is written to ``<root>/<run_id>/`` and ends ``finished``, ``diverged`` (loss NaN/inf:
training stops cleanly), ``interrupted`` (Ctrl-C or SIGTERM: exit 130 or 143, what was logged is
kept) or ``failed`` (traceback kept in run.json).
After every epoch the trainer saves ``<root>/<run_id>/checkpoint.pt`` (model, optimizer with
LAWN's state, schedule, RNG, epoch, the Monitor's position); ``--resume RUN_ID`` continues the
same run from there, with each (step, layer, metric) written exactly once.

Under torchrun the batch size is the global one (the paper's), each rank computes on its share,
and only rank 0 writes; every rank builds the Monitor, which sums the batch statistics over
ranks (``lawn_monitor.Monitor``: the others join its collectives and write nothing), so every
logged value is the one a single process would log for the same global batch.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import socket
import sys
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lawn_monitor import Monitor
from lawn_monitor.cli import OneLineParser
from lawn_monitor.lock import RunLockedError
from lawn_monitor.monitor import MonitorWriteError
from lawn_monitor.optim import AutoSwitch, lawn_schedule, make_optimizer, warmup_decay
from lawn_monitor.sink import RunExistsError
from lawn_monitor.storage import Location, check_run_id, default_root, is_remote

from . import signals
from .config import ConfigError, TrainConfig, add_config_arguments, config_from_flags, config_from_record, given_fields
from .data import Data, DataError, load_data
from .distributed import Dist, init_distributed
from .models import ModelError, build_model

USER_ERRORS = (ConfigError, DataError, ModelError, NotADirectoryError, RunLockedError, RunExistsError)
CHECKPOINT = "checkpoint.pt"
# What a resumed run may change: where and how it runs, not what it computes.
RESUME_MAY_CHANGE = {
    "resume",
    "root",
    "device",
    "data_root",
    "download",
    "progress",
    "flush_secs",
    "workers",
    "compile",
    "threads",
}


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    status: str
    test_acc: float | None
    val_acc: float | None = None  # the last evaluation's, None without a validation split


# Called after each epoch's evaluation with (epochs done, {"test_acc": ..., "val_acc": ...}); a
# true return stops the run there with status ``pruned`` (a tuner's hopeless trial).
EpochCallback = Callable[[int, dict[str, float]], bool]


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


def autocast(device: torch.device, amp: str):
    """bf16 autocast for the forward pass (bf16 has fp32's range: no GradScaler needed)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    topk5: bool,
    dist: Dist | None = None,
    amp: str = "off",
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """Mean loss and accuracy over a whole split (each rank its share, summed over ranks); the
    sums stay on the device."""
    model.eval()
    sums = torch.zeros(4, device=device)  # loss, correct, correct in top 5, count
    for x, y in loader:
        x, y = _to(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        if topk5:
            sums[2] += (logits.topk(5, dim=1).indices == y[:, None]).any(dim=1).sum()
        sums[3] += len(y)
    model.train()
    (dist or Dist()).all_reduce_(sums)
    out = {"loss": sums[0] / sums[3], "acc": sums[1] / sums[3]}
    if topk5:
        out["acc5"] = sums[2] / sums[3]
    return out


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def check_root(root: str | None) -> str:
    """The store root: a local folder (must not be a file) or an ``s3://`` URL, kept as text."""
    path = str(root) if root is not None else default_root()
    if not is_remote(path) and Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"--root {path} is a file: pass a directory for the run store")
    return path


# --- checkpoints ------------------------------------------------------------------------------


def save_checkpoint(loc: Location, run_id: str, state: dict[str, Any]) -> None:
    """Write ``<run_id>/checkpoint.pt`` whole (temp name + os.replace): a kill while saving
    leaves the previous checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    loc.write_atomic(f"{run_id}/{CHECKPOINT}", buf.getvalue())


def load_checkpoint(root: str, run_id: str) -> dict[str, Any]:
    loc = Location(root)
    try:
        data = loc.read_bytes(f"{run_id}/{CHECKPOINT}")
    except FileNotFoundError:
        raise ConfigError(
            f"--resume {run_id}: no {root}/{run_id}/{CHECKPOINT} (a run checkpoints after each epoch; "
            f"check --root and the run id with `lawn-monitor runs --root {root}`)"
        ) from None
    # Our own file, with numpy's RNG state in it: not loadable with weights_only.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def resumed_config(saved: dict[str, Any], current: TrainConfig) -> TrainConfig:
    """The resumed run's own config, with only the fields a resume may change taken from now."""
    return dataclasses.replace(config_from_record(saved), **{k: getattr(current, k) for k in RESUME_MAY_CHANGE})


# --- training: the stages, in the order _train runs them -------------------------------------


def resume_point(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """The run to continue and its last checkpoint. A resume continues the run's own config (only
    RESUME_MAY_CHANGE comes from now), and refuses a run that has finished or that a live process
    on this machine still trains: two writers would interleave its files."""
    root = check_root(config.root)
    try:
        check_run_id(config.resume)  # a folder inside the root, never "../x"
    except ValueError as exc:
        raise ConfigError(f"--resume: {exc}") from None
    checkpoint = load_checkpoint(root, config.resume)
    info = json.loads(Location(root).read_bytes(f"{config.resume}/run.json"))
    if info.get("status") == "finished":
        raise ConfigError(f"--resume {config.resume}: that run has finished; start a new one instead")
    if info.get("status") == "running" and info.get("host") == socket.gethostname() and _alive(info.get("pid")):
        raise ConfigError(
            f"--resume {config.resume}: process {info['pid']} on this machine is still training it; "
            f"stop that process first (two writers would interleave the run's files)"
        )
    return resumed_config(checkpoint["config"], config), checkpoint


def set_up(cfg: TrainConfig, dist: Dist) -> torch.device:
    """The device and torch's global settings, checked before anything is built."""
    device = resolve_device(cfg.device)
    if cfg.batch_size % dist.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch: it must divide by the "
            f"{dist.world} processes (per-rank batch = global / processes)"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 matmuls and convolutions
    return device


@dataclass
class Parts:
    """What build() makes: everything a step needs besides the Monitor."""

    data: Data
    net: torch.nn.Module  # the plain module: the Monitor, evaluation and checkpoints use it
    model: torch.nn.Module  # the forward the step runs: DDP and/or compiled around net
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    total_steps: int
    free_steps: int | str  # "auto": LAWN decides (auto)
    warmup_steps: int
    free_warmup_steps: int
    auto: AutoSwitch | None


def build_data(cfg: TrainConfig, dist: Dist, device: torch.device) -> Data:
    """The data set as configured, this rank's share of it on ``device``."""
    return load_data(
        cfg.dataset,
        cfg.batch_size,
        seed=cfg.seed,
        data_root=cfg.data_root,
        device=device,
        download=cfg.download,
        rank=dist.rank,
        world=dist.world,
        workers=cfg.workers,
        val_fraction=cfg.val_fraction,
    )


def build_net(cfg: TrainConfig, data: Data, device: torch.device) -> torch.nn.Module:
    """The plain model for ``data``'s inputs and classes, on ``device`` in the configured memory format."""
    net = build_model(cfg.model, data.input_shape, data.num_classes, cfg.dataset).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def phase_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int | str, int, int, AutoSwitch | None]:
    """The configured epochs in steps: free steps (``"auto"``: LAWN decides, with the returned
    AutoSwitch), warm-up steps and free warm-up steps."""
    auto = None
    if cfg.lawn and cfg.free_epochs == "auto":
        # The window: values averaged per check and steps between host reads (see AutoSwitch).
        auto = cfg.auto_switch(steps_per_epoch)
        free_steps: int | str = "auto"
    else:
        free_steps = round(cfg.free_epochs * steps_per_epoch) if cfg.lawn else 0
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    free_warmup_steps = round(cfg.free_warmup_epochs * steps_per_epoch) if cfg.lawn else 0
    return free_steps, warmup_steps, free_warmup_steps, auto


def build_optimizer(
    cfg: TrainConfig, net: torch.nn.Module, free_steps: int | str, auto: AutoSwitch | None
) -> torch.optim.Optimizer:
    """The configured optimizer over ``net``'s parameters, wrapped in LAWN if asked."""
    return make_optimizer(
        cfg.optimizer,
        net.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        lawn=cfg.lawn,
        free_steps=free_steps,
        tangent=cfg.tangent,
        reset_moments=cfg.reset_moments,
        lawn_params=cfg.lawn_params,
        model=net,
        auto=auto,
        **({"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}),
    )


def build_schedule(
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    free_steps: int | str,
    warmup_steps: int,
    free_warmup_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LAWN's free / warm-up / decay schedule, or plain warm-up and decay without LAWN."""
    if cfg.lawn:
        return lawn_schedule(
            optimizer, total_steps, free_steps, warmup_steps, cfg.decay, free_warmup_steps, cfg.lawn_lr_scale
        )
    return warmup_decay(optimizer, total_steps, warmup_steps, cfg.decay)


def wrap_model(cfg: TrainConfig, net: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """The forward a step runs: ``net`` in DDP over several processes and/or compiled."""
    # DDP averages gradients over ranks; both wrappers share net's weights.
    model: torch.nn.Module = net
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)
    return model


def build(cfg: TrainConfig, dist: Dist, device: torch.device, checkpoint: dict[str, Any] | None) -> Parts:
    """Data, model, optimizer and schedule, seeded so that a run is reproducible, with their
    state from ``checkpoint`` when resuming (the data order follows from the seed and epoch)."""
    seed_everything(cfg.seed)
    data = build_data(cfg, dist, device)
    net = build_net(cfg, data, device)
    steps_per_epoch = len(data.train)
    total_steps = cfg.epochs * steps_per_epoch
    free_steps, warmup_steps, free_warmup_steps, auto = phase_steps(cfg, steps_per_epoch)
    optimizer = build_optimizer(cfg, net, free_steps, auto)
    scheduler = build_schedule(cfg, optimizer, total_steps, free_steps, warmup_steps, free_warmup_steps)
    if checkpoint is not None:
        net.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    return Parts(
        data,
        net,
        wrap_model(cfg, net, dist, device),
        optimizer,
        scheduler,
        steps_per_epoch,
        total_steps,
        free_steps,
        warmup_steps,
        free_warmup_steps,
        auto,
    )


def run_record(cfg: TrainConfig, parts: Parts, dist: Dist) -> dict[str, Any]:
    """The run's ``config`` in run.json and in each checkpoint: the whole config (the probes
    nested), and what the trainer derived from it, so that a reader needs no trainer."""
    return {
        **dataclasses.asdict(cfg),
        "free_steps": parts.free_steps,
        "warmup_steps": parts.warmup_steps,
        "free_warmup_steps": parts.free_warmup_steps,
        "auto_switch": None if parts.auto is None else dataclasses.asdict(parts.auto),
        "steps_per_epoch": parts.steps_per_epoch,
        "num_train": parts.data.num_train,
        "num_val": parts.data.num_val,
        "world_size": dist.world,
        "schedule": "lawn" if cfg.lawn else "warmup_decay",
        "resume": None,
    }


def probe_batch(cfg: TrainConfig, parts: Parts, dist: Dist) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fixed batch the curvature is measured on; only rank 0 measures it."""
    if not (cfg.probes.curvature and dist.main):
        return None
    batch = parts.data.probe_batch(cfg.probe_size, cfg.seed)
    if cfg.channels_last and batch[0].ndim == 4:
        batch = (batch[0].contiguous(memory_format=torch.channels_last), batch[1])
    return batch


def train_epoch(
    cfg: TrainConfig, parts: Parts, monitor: Monitor, dist: Dist, device: torch.device, epoch: int, step: int, bar: tqdm
) -> tuple[int, torch.Tensor]:
    """One pass over the training data, or until the Monitor has seen a divergence (in one
    process; under DDP the ranks agree on it at the epoch's end). Returns the step count and
    this rank's last batch's mean loss."""
    parts.data.train.set_epoch(epoch)
    for i, (x, y) in enumerate(parts.data.train):
        x, y = _to(x, device, cfg.channels_last), y.to(device, non_blocking=True)
        # The global batch's size (the last one of an epoch may be short): each rank's
        # loss is its share's sum over it, times the world size that DDP divides by, so
        # the averaged gradient is the gradient of the global batch's mean loss.
        global_batch = min(cfg.batch_size, parts.data.num_train - i * cfg.batch_size)
        with autocast(device, cfg.amp):
            logits = parts.model(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        loss = loss_sum * (dist.world / global_batch)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        # Every rank steps the Monitor with its share's mean loss and outputs: it sums
        # them over ranks on the device (no host sync), so rank 0 logs the global
        # batch's values; the norms are already global (DDP averaged the gradients).
        share_loss = loss_sum.detach() / max(len(y), 1)
        monitor.step(loss=share_loss, logits=logits.detach(), targets=y, batch_size=global_batch)
        parts.scheduler.step()
        step += 1
        bar.update(1)
        if dist.world == 1 and monitor.diverged:  # known at each flush, without a per-step sync
            break
    return step, share_loss


def end_epoch(
    cfg: TrainConfig,
    parts: Parts,
    monitor: Monitor,
    dist: Dist,
    device: torch.device,
    loc: Location,
    record: dict[str, Any],
    epoch: int,
    step: int,
) -> dict[str, float]:
    """Evaluate on the test split and the validation split, then make the epoch durable: its rows
    reach disk before the checkpoint that names its step, so a resume keeps exactly those rows.
    Returns the accuracies (``test_acc``, and ``val_acc`` with a validation split)."""
    dist.sync_buffers(parts.net)
    accuracies = {}
    for split, loader in (("test", parts.data.test), ("val", parts.data.val)):
        if loader is None:
            continue
        result = evaluate(
            parts.net,
            loader,
            device,
            topk5=parts.data.num_classes > 10,
            dist=dist,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
        )
        monitor.log_eval(**result, split=split)
        accuracies[f"{split}_acc"] = float(result["acc"])
    if dist.main:
        monitor.flush(durable=True)  # fsynced: a power cut too
        save_checkpoint(
            loc,
            monitor.run_id,
            {
                "config": record,
                "epoch": epoch + 1,
                "step": step,
                **accuracies,
                "model": parts.net.state_dict(),
                "optimizer": parts.optimizer.state_dict(),
                "scheduler": parts.scheduler.state_dict(),
                "rng": rng_state(),
                "monitor": monitor.state_dict(),
            },
        )
    dist.barrier()
    return accuracies


def train(
    config: TrainConfig, *, tags: dict[str, Any] | None = None, on_epoch: EpochCallback | None = None
) -> TrainResult:
    """Train as configured. Raises the USER_ERRORS for bad input before anything is written.
    ``tags``: fields written at the top level of the run's run.json (a tuner's ``study`` and
    ``trial``); ``on_epoch``: see EpochCallback."""
    dist, device_name = init_distributed(config.device)
    try:
        return _train(config, dist, device_name, tags or {}, on_epoch)
    finally:
        dist.close()


@dataclass
class Setup:
    """What _train prepares before the Monitor exists."""

    cfg: TrainConfig
    root: str
    device: torch.device
    parts: Parts
    record: dict[str, Any]
    checkpoint: dict[str, Any] | None


def prepare(config: TrainConfig, dist: Dist, device_name: str) -> Setup:
    """The resume point, set-up and build stages, in order."""
    checkpoint = None
    if config.resume:
        config, checkpoint = resume_point(config)
    cfg = dataclasses.replace(config, device=device_name).resolved()
    root = check_root(cfg.root)
    device = set_up(cfg, dist)
    parts = build(cfg, dist, device, checkpoint)
    return Setup(cfg, root, device, parts, run_record(cfg, parts, dist), checkpoint)


def open_monitor(setup: Setup, dist: Dist, run_id: str | None, tags: dict[str, Any]) -> Monitor:
    """The run's Monitor (a new run, or ``run_id`` resumed at its checkpoint), with ``tags`` in run.json."""
    cfg, parts, checkpoint = setup.cfg, setup.parts, setup.checkpoint
    monitor = Monitor(
        parts.net,
        parts.optimizer,
        root=setup.root,
        config=setup.record,
        name=cfg.name,
        total_steps=parts.total_steps,
        steps_per_epoch=parts.steps_per_epoch,
        flush_secs=cfg.flush_secs,
        probe_batch=probe_batch(cfg, parts, dist),
        probe_config=cfg.probes,
        run_id=run_id,
        resume_step=checkpoint["step"] if checkpoint else None,
    )
    if tags:
        monitor.annotate(**tags)
    return monitor


def run_epochs(
    setup: Setup, monitor: Monitor, dist: Dist, bar: tqdm, on_epoch: EpochCallback | None
) -> tuple[str, dict[str, float]]:
    """Every epoch left: its training steps, then its end. Returns the status the run ends with
    and the last evaluation's accuracies."""
    cfg, parts, checkpoint = setup.cfg, setup.parts, setup.checkpoint
    if cfg.lawn:
        parts.optimizer.monitor = monitor  # --free-epochs auto reads flat_frac from it; the switch goes to run.json
    start_epoch, step = (checkpoint["epoch"], checkpoint["step"]) if checkpoint else (0, 0)
    accuracies = {k: checkpoint[k] for k in ("test_acc", "val_acc") if k in checkpoint} if checkpoint else {}
    if checkpoint is not None:
        monitor.load_state_dict(checkpoint["monitor"])
        set_rng_state(checkpoint["rng"])
    loc = Location(setup.root)
    for epoch in range(start_epoch, cfg.epochs):
        step, share_loss = train_epoch(cfg, parts, monitor, dist, setup.device, epoch, step, bar)
        # One sync per epoch; every rank must agree to stop, so rank 0's verdict is shared.
        if dist.any(monitor.diverged or not torch.isfinite(share_loss).item(), setup.device):
            return "diverged", accuracies
        accuracies = end_epoch(cfg, parts, monitor, dist, setup.device, loc, setup.record, epoch, step)
        # The last batch's loss on this rank's share (the whole batch in one process).
        bar.set_postfix(
            epoch=epoch + 1, loss=f"{float(share_loss):.4f}", **{k: f"{v:.4f}" for k, v in accuracies.items()}
        )
        if on_epoch is not None and epoch + 1 < cfg.epochs and on_epoch(epoch + 1, accuracies):
            return "pruned", accuracies
    return "finished", accuracies


def _train(
    config: TrainConfig, dist: Dist, device_name: str, tags: dict[str, Any], on_epoch: EpochCallback | None
) -> TrainResult:
    """The stages above, in order: resume point, set-up, build, Monitor, then per epoch the
    training steps and the end of the epoch; a run ends with its status written."""
    setup = prepare(config, dist, device_name)
    bar = tqdm(
        total=setup.parts.total_steps,
        initial=setup.checkpoint["step"] if setup.checkpoint else 0,
        desc=setup.cfg.name,
        disable=not (setup.cfg.progress and dist.main),
        unit="step",
        dynamic_ncols=True,
    )
    monitor = None
    try:
        # Held: a signal between writing run.json and holding the Monitor that can close it
        # would leave the run "running"; it takes effect when the block ends, in this try.
        with signals.held():
            monitor = open_monitor(setup, dist, config.resume, tags)
        status, accuracies = run_epochs(setup, monitor, dist, bar, on_epoch)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under signals.interrupt_on_signals
        bar.close()
        if monitor is not None and dist.main:
            monitor.close("interrupted")
            exc.run_dir = monitor.run_dir  # for the one line the command prints
        raise
    except Exception as exc:
        bar.close()
        if monitor is not None:
            monitor.close("failed", error=traceback.format_exc())
            if dist.main:
                exc.run_dir = monitor.run_dir  # for the one line the command prints
        raise
    bar.close()
    # The run has ended: a signal now waits until its status is written, and then only stops
    # what comes next (signals.received(): a sweep starts no further run).
    with signals.held(deliver=False):
        monitor.close(status)
    run_id = monitor.run_id if dist.main else ""
    run_dir = monitor.run_dir if dist.main else Path(setup.root) / "-"
    return TrainResult(run_id, run_dir, status, accuracies.get("test_acc"), accuracies.get("val_acc"))


def build_parser(prog: str = "lawn-monitor train") -> OneLineParser:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    return parser


def run_cli(cfg: TrainConfig) -> int:
    """Train and turn the outcome into an exit code and one line for the terminal. SIGTERM ends
    the run as Ctrl-C does (status ``interrupted``), with exit code 143 instead of 130."""
    try:
        with signals.interrupt_on_signals():
            result = train(cfg)
    except USER_ERRORS as exc:
        print(f"lawn-monitor train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)
        print(
            f"interrupted by {signals.signal_name(exc)}: "
            + (
                f"the run is marked 'interrupted'; what it logged is kept ({run_dir})"
                if run_dir
                else "this process had no run record to mark (not created yet, or not rank 0)"
            ),
            file=sys.stderr,
        )
        return signals.exit_code(exc)
    except MonitorWriteError as exc:  # its message says what was kept and what to do
        print(f"lawn-monitor train: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - reported in one line, traceback kept in run.json
        run_dir = getattr(exc, "run_dir", None)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(
            f"lawn-monitor train: failed: {type(exc).__name__}: {exc} "
            + (
                f"(traceback in {run_dir}/run.json)"
                if run_dir
                else f"(raised at {Path(where.filename).name}:{where.lineno}; this process had no run record to keep "
                f"the traceback in: not created yet, or not rank 0)"
            ),
            file=sys.stderr,
        )
        return 1
    if not result.run_id:  # a DDP rank other than 0: rank 0 reports
        return 0 if result.status == "finished" else 3
    acc = "n/a" if result.test_acc is None else f"{result.test_acc:.4f}"
    val = "" if result.val_acc is None else f"  val_acc={result.val_acc:.4f}"
    print(f"{result.status}: {result.run_id}  test_acc={acc}{val}  ({result.run_dir})")
    return 0 if result.status == "finished" else 3


def config_for_cli(given: dict[str, Any]) -> TrainConfig:
    """The config from the flags the user typed: a recipe under them, and for --resume only the
    flags that may change. Raises ConfigError."""
    from .recipe import config_from

    if given.get("resume"):
        fixed = sorted(set(given) - RESUME_MAY_CHANGE)
        if fixed:
            flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise ConfigError(
                f"{flags} cannot change when resuming: the run continues with its own config "
                f"(only --{', --'.join(sorted(k.replace('_', '-') for k in RESUME_MAY_CHANGE - {'resume'}))} may)"
            )
        return config_from_flags(given)
    return config_from({k: v for k, v in given.items() if k != "recipe"}, given.get("recipe"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_for_cli(given_fields(args))
    except ConfigError as exc:
        print(f"lawn-monitor train: error: {exc}", file=sys.stderr)
        return 2
    return run_cli(cfg)


if __name__ == "__main__":
    sys.exit(main())
