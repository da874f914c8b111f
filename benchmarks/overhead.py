"""The cost of watching: step time of a monitored training loop over the same loop bare.

    python benchmarks/overhead.py                 # CPU (and CUDA when present), all four cases
    python benchmarks/overhead.py --steps 3000 --block 50 --cases defaults,small

Two copies of the same model train side by side in one process, interleaved block by block
(bare block, monitored block, ...), so that machine noise hits both alike. Printed per case: the
ratio of total monitored time to total bare time, and the spread (10th-90th percentile) of the
per-block ratios; and the share of the monitored time spent in curvature probes. Cases:

* cheap: the every-step probes only (norms, update ratios, output statistics), no curvature;
* defaults: everything the trainer turns on by default, over a whole run (curvature included,
  on its planned points within its budget, flushing Parquet every 2 s as usual);
* small: the same defaults on a run shaped like ``lawn-monitor train --dataset digits --model
  cnn --epochs 10`` (8x8 inputs, batch 64, 230 steps of about 3 ms on a CPU): steps so short that
  the curvature budget, not the planned points, decides what curvature costs;
* everything every step: every curvature probe as the defaults configure it, on every step (what
  it would cost to watch curvature naively).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from lawn_monitor import Monitor, RunStore
from lawn_monitor.probes import GNTrace, HessianTrace, OutputStats, ParamNorms, ProbeConfig, Sharpness
from lawn_monitor_trainers.models import SmallCNN


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_run(device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = SmallCNN(1, 10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt


def data(device: torch.device, batch: int, side: int, n_batches: int = 16):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n_batches, batch, 1, side, side, generator=g).to(device)
    ys = torch.randint(0, 10, (n_batches, batch), generator=g).to(device)
    return xs, ys


def train_block(model, opt, xs, ys, start: int, steps: int, monitor: Monitor | None, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        x, y = xs[i % len(xs)], ys[i % len(ys)]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(loss=loss, logits=logits, targets=y)
    sync(device)
    return time.perf_counter() - t0


def measure(name: str, device, steps: int, block: int, batch: int, side: int, probes_for) -> dict:
    xs, ys = data(device, batch, side)
    bare_model, bare_opt = make_run(device)
    model, opt = make_run(device)
    probe_batch = (xs[0], ys[0])
    warm = min(block, 5)  # first-call costs (allocator, kernels) paid outside the timing
    train_block(bare_model, bare_opt, xs, ys, 0, warm, None, device)
    with tempfile.TemporaryDirectory() as root:
        monitor = Monitor(model, opt, root=root, name=name, total_steps=steps, **probes_for(probe_batch, steps))
        bare_t, mon_t, ratios = 0.0, 0.0, []
        done = 0
        while done < steps:
            n = min(block, steps - done)
            # Alternate which goes first (ABBA), so drift within a pair cancels out.
            # The bare blocks are not the monitored run's time: keep them off its clock, or its
            # curvature budget (a share of its training time) would count them too.
            if len(ratios) % 2 == 0:
                with monitor.paused():
                    b = train_block(bare_model, bare_opt, xs, ys, done, n, None, device)
                m = train_block(model, opt, xs, ys, done, n, monitor, device)
            else:
                m = train_block(model, opt, xs, ys, done, n, monitor, device)
                with monitor.paused():
                    b = train_block(bare_model, bare_opt, xs, ys, done, n, None, device)
            bare_t, mon_t = bare_t + b, mon_t + m
            ratios.append(m / b)
            done += n
        # Read before close(), which adds one more curvature point after training.
        monitor.flush()
        curvature = RunStore(root).series(monitor.run_id, "curvature_time", points=None)["value"].sum()
        monitor.close()
    deciles = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else [ratios[0]] * 9
    return {
        "case": name,
        "device": device.type,
        "steps": steps,
        "ratio": mon_t / bare_t,
        "p10": deciles[0],
        "p90": deciles[-1],
        "bare_ms": 1000 * bare_t / steps,
        "monitored_ms": 1000 * mon_t / steps,
        "curvature": curvature / mon_t,
    }


def cheap(probe_batch, steps):
    return {"probe_config": ProbeConfig(curvature=False)}


def defaults(probe_batch, steps):
    return {"probe_batch": probe_batch, "probe_config": ProbeConfig()}


def everything(probe_batch, steps):
    x, y, cfg = *probe_batch, ProbeConfig()
    return {
        "probes": [
            ParamNorms(),
            OutputStats(),
            GNTrace(x, y, size=cfg.gn_size, groups=cfg.gn_groups),
            HessianTrace(x, y, size=cfg.hessian_size, num_probes=cfg.hessian_probes),
            Sharpness(x, y, size=cfg.sharpness_size, iters=cfg.sharpness_iters),
        ]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps of the 'defaults' run (a whole run)")
    parser.add_argument("--cheap-steps", type=int, default=2000)
    parser.add_argument("--every-steps", type=int, default=4)
    parser.add_argument("--block", type=int, default=25, help="steps per interleaved block")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--small-steps", type=int, default=230, help="steps of the 'small' run (a digits run's)")
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--cases", default="cheap,defaults,small,everything", help="comma-separated subset")
    args = parser.parse_args()
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; SmallCNN (3 conv layers), Adam, "
        f"probe batch of one training batch; 1x28x28 inputs, batch {args.batch} (small: 1x8x8, batch 64); "
        f"blocks of {args.block} steps"
    )
    print(
        f"{'case':<24}{'device':<8}{'steps':>7}{'ratio':>8}{'p10':>8}{'p90':>8}{'bare ms':>10}{'monitored ms':>14}"
        f"{'curvature':>11}"
    )
    for device in map(torch.device, devices):
        # name, probes, steps, steps per block, batch, input side
        cases = {
            "cheap": ("cheap probes", cheap, args.cheap_steps, args.block, args.batch, 28),
            "defaults": ("defaults, whole run", defaults, args.steps, args.block, args.batch, 28),
            "small": ("defaults, small steps", defaults, args.small_steps, 10, 64, 8),
            "everything": ("everything every step", everything, args.every_steps, 1, args.batch, 28),
        }
        for key in args.cases.split(","):
            name, probes_for, steps, block, batch, side = cases[key]
            r = measure(name, device, steps, block, batch, side, probes_for)
            print(
                f"{r['case']:<24}{r['device']:<8}{r['steps']:>7}{r['ratio']:>8.3f}{r['p10']:>8.3f}{r['p90']:>8.3f}"
                f"{r['bare_ms']:>10.2f}{r['monitored_ms']:>14.2f}{r['curvature']:>10.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
