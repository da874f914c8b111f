"""Images/s of our trainer against a bare hand-written loop of the same model, and the ratio.

    python benchmarks/train_speed.py                                   # CPU: small CNN, a few epochs
    python benchmarks/train_speed.py --model vgg19 --epochs 40 --amp bf16 --channels-last   # a GPU

Both train the same model with the same optimizer (Adam-LAWN), batch size, precision, memory
format and compilation on the same CIFAR-sized synthetic set (2,048 images of 3x32x32, on the
device). "Ours" is ``trainers.train.train``: the Monitor with its default probes (curvature
included, within its budget), an evaluation and a checkpoint after every epoch, Parquet
flushes. "Bare" is the loop anyone would write: forward, loss, backward, step, nothing else.
Throughput counts from the end of step 1 to the end of the last step, so start-up (data, model,
first-step compilation) is out of both. The pair runs ``--repeat`` times, alternating.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import duckdb
import torch
import torch.nn.functional as F

from lawn_monitor import RunStore
from lawn_monitor_trainers.config import TrainConfig
from lawn_monitor_trainers.distributed import Dist
from lawn_monitor_trainers.train import autocast, build, train


def config(args, device: str, root: str | None = None) -> TrainConfig:
    """The run both loops train: Adam-LAWN with one free epoch on the synthetic set."""
    return TrainConfig(
        dataset="synthetic",
        model=args.model,
        optimizer="adam",
        lawn=True,
        free_epochs=1.0,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        root=root,
        progress=False,
    )


def ours(args, device: str) -> float:
    with tempfile.TemporaryDirectory() as root:
        result = train(config(args, device, root))
        files = RunStore(root).files([result.run_id])
        first, last, steps = duckdb.sql(
            f"SELECT min(wall_time), max(wall_time), max(step) FROM read_parquet({files!r}) WHERE metric = 'train/loss'"
        ).fetchall()[0]
    return (steps - 1) * args.batch_size / (last - first)


def bare(args, device: str) -> float:
    dev = torch.device(device)
    # The trainer's own data, model, optimizer and schedule; the bare loop trains on all 2,048
    # images, with no validation split held out.
    cfg = dataclasses.replace(config(args, device), val_fraction=0.0).resolved()
    parts = build(cfg, Dist(), dev, checkpoint=None)
    data, fwd, opt, sched = parts.data, parts.model, parts.optimizer, parts.scheduler
    steps, start = 0, None
    for epoch in range(args.epochs):
        data.train.set_epoch(epoch)
        for x, y in data.train:
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, args.amp):
                logits = fwd(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            if steps == 1:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (steps - 1) * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn", help="cnn (CPU default), vgg19, resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="of 2,048 images each")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", action="append", help="default: cpu, and cuda when present")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(f"--epochs must be at least 2 (LAWN trains 1 epoch free, then constrained), got {args.epochs}")
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        pairs = [(bare(args, device), ours(args, device)) for _ in range(args.repeat)]
        b, o = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        flags = f"amp={args.amp} channels_last={args.channels_last} compile={args.compile}"
        print(
            f"{device:>5} {args.model} batch {args.batch_size} ({flags}): bare {b:,.0f} img/s, "
            f"ours {o:,.0f} img/s, ours/bare {o / b:.2f}  (median of {args.repeat})"
        )


if __name__ == "__main__":
    main()
