"""One rank of the sharded-training test (tests/test_sharded.py), run under torchrun, gloo on CPU:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/sharded_worker.py ROOT

Trains the same tiny float64 MLP twice, each rank on its half of every global batch: under FSDP2
(``fully_shard``: parameters are DTensors sharded on dim 0, unevenly) with Adam-LAWN and tangent
projection, then under DDP with SGD-LAWN. A Monitor is built on every rank; rank 0 writes
``ROOT/<mode>/``. Each rank also writes ``ROOT/rank<R>.json``: what it saw (whether its Monitor
writes, its all-reduce calls per Monitor step and per LAWN step, LAWN's norms against its targets)
for the test to check. ``train_unsharded`` is the one-process reference on the whole batches.
"""

from __future__ import annotations

import gc
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lawn_monitor import LAWN, Monitor, sharding
from lawn_monitor.probes import OutputStats, ParamNorms, ProbeConfig

STEPS = 6
GLOBAL_BATCH = 16
FREE_STEPS = 2  # LAWN switches at step 3: the constrained steps need the global norms too
MODES = ("fsdp", "ddp")


def make_model() -> nn.Sequential:
    # Rows 9 and 3 split 5/4 and 2/1 over two ranks: FSDP2's uneven shards.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3)).double()


def make_optimizer(mode: str, params) -> LAWN:
    if mode == "fsdp":
        return LAWN(torch.optim.Adam(params, lr=0.05), free_steps=FREE_STEPS, tangent=True)
    return LAWN(torch.optim.SGD(params, lr=0.2, momentum=0.9), free_steps=FREE_STEPS)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (GLOBAL_BATCH,), generator=g
    )


def train_unsharded(mode: str, root: Path) -> None:
    """The reference: one process, the whole global batch, its mean loss."""
    model = make_model()
    opt = make_optimizer(mode, model.parameters())
    with Monitor(model, opt, root=root, name=mode, flush_every=1000, probes=[ParamNorms(), OutputStats()]) as monitor:
        for step in range(1, STEPS + 1):
            x, y = batch(step)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss, logits=logits, targets=y)


class CountAllReduce:
    """Counts torch.distributed.all_reduce calls made from Python (the Monitor's and LAWN's;
    FSDP2 reduce-scatters and DDP reduces in C++, so neither shows here)."""

    def __init__(self) -> None:
        self.calls = 0
        self.original = dist.all_reduce

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self.original


def train_sharded(mode: str, root: Path, rank: int, world: int) -> dict:
    model = make_model()
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
    else:
        model = nn.parallel.DistributedDataParallel(model)
    opt = make_optimizer(mode, model.parameters())
    x0, y0 = batch(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # A probe batch: under FSDP2 the curvature probes must be turned off, with one warning.
        # Under DDP they run on rank 0 alone (on a schedule here, not a budget): nothing waits for it.
        monitor = Monitor(
            model,
            opt,
            root=root,
            name=mode,
            flush_every=1000,
            probe_batch=(x0[:8], y0[:8]),
            total_steps=STEPS,
            probe_config=ProbeConfig(
                gn_points=2, hessian_points=1, hessian_probes=2, sharpness_points=1, sharpness_iters=3, budget=1e6
            ),
        )
    seen = {
        "writes": monitor.writes,
        "run_dir": str(monitor.run_dir) if monitor.run_dir else None,
        "warnings": [str(w.message) for w in caught if "FSDP2" in str(w.message)],
        "monitor_all_reduces": [],
        "lawn_all_reduces": [],
    }
    share = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    for step in range(1, STEPS + 1):
        x, y = batch(step)
        x, y = x[share], y[share]
        logits = model(x)
        loss = F.cross_entropy(logits, y)  # this rank's mean: FSDP2 and DDP average the gradients
        opt.zero_grad()
        loss.backward()
        with CountAllReduce() as counter:
            opt.step()
        seen["lawn_all_reduces"].append(counter.calls)
        with CountAllReduce() as counter:
            monitor.step(loss=loss, logits=logits, targets=y)
        seen["monitor_all_reduces"].append(counter.calls)
    monitor.close()
    params = opt.constrained_params()
    full = [p.full_tensor() if sharding.is_sharded(p) else p.detach() for p in params]
    norms = torch.stack([w.detach().norm() for w in full]).float()
    seen["lawn_target_type"] = type(opt.targets).__name__
    seen["lawn_norm_rel_err"] = float(((norms - opt.targets) / opt.targets).abs().max())
    return seen


def check_mask(rank: int) -> bool:
    """``shard_sum`` over a sharded and a replicated (plain) tensor: the shard's sums add up,
    the replicated tensor's sum is counted once."""
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    fully_shard(model[0])  # model[2] stays plain: the same on every rank
    params = list(model.parameters())
    reduce = sharding.shard_sum(params)
    got = reduce(sharding.norms([sharding.local(p) for p in params]).square())
    expected = torch.stack([w.norm() for w in make_model().parameters()]).square()
    return bool(torch.allclose(got, expected, rtol=1e-12))


def main(root: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    seen = {mode: train_sharded(mode, root / mode, rank, world) for mode in MODES}
    seen["mask_ok"] = check_mask(rank)
    (root / f"rank{rank}.json").write_text(json.dumps(seen))
    # The DDP and FSDP2 modules sit in reference cycles that hold the process group: collect them
    # while it is alive. Left to interpreter exit, gloo's threads are torn down in no set order and
    # a rank aborts ("terminate called without an active exception") about one run in four.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
