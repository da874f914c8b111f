"""Two measurements behind docs/metrics-notes.md, on a CPU in about a minute each:

    python benchmarks/metric_checks.py gn-se        # gn_trace_se coverage, the old SE against the new
    python benchmarks/metric_checks.py sharpness    # the top eigenvalue's spread by probe-batch size

``gn-se``: a ReLU MLP memorizing 16 random samples (untrained, then trained with Adam until 90% of
them are flat), its exact Gauss-Newton traces from full Jacobians, and 400 calls of the estimator
(4 groups of 4, two draws of the vectors per group): the share of rows (6 layers and the total)
whose +-2 SE holds the exact value, with the SE from the spread between groups (before) and from
the paired draws (``curvature.paired_se``, now).

``sharpness``: a digits MLP trained 15 epochs with Adam; the top Hessian eigenvalue of 12 random
batches of each size against the full batch's (1,024 samples).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

from lawn_monitor import curvature as C


def memorizer(flattened: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5000 if flattened else 0):
        loss = F.cross_entropy(model(x), y, reduction="none")
        if (loss < 1e-3).double().mean() >= 0.9:
            break
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return model, x, y


def exact_gn(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Each parameter tensor's GN trace and the total, from the full Jacobian."""
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    bounds = np.cumsum([0, *sizes])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def logits(f):
        params = {n: f[a:b].view(p.shape) for n, a, b, p in zip(names, bounds, bounds[1:], model.parameters())}
        return functional_call(model, params, (x,))

    J = jacrev(logits)(flat)
    p = logits(flat).softmax(1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    per = [
        float(torch.einsum("ncp,ncd,ndp->", J[..., a:b], A, J[..., a:b]) / len(x)) for a, b in zip(bounds, bounds[1:])
    ]
    return np.array([*per, sum(per)])


def gn_se(calls: int = 400) -> None:
    for flattened in (False, True):
        model, x, _ = memorizer(flattened)
        exact, names = exact_gn(model, x), [n for n, _ in model.named_parameters()]
        g = torch.Generator().manual_seed(3)
        old_hit, new_hit = [], []
        for _ in range(calls):
            first, second = (C.rademacher((4, 4, 4), g, torch.device("cpu")) for _ in range(2))
            a, b = C.gn_trace_groups(model, names, x, first, second=second)
            a, b = (torch.cat([t, t.sum(1, keepdim=True)], 1) for t in (a, b))
            estimate = a.mean(0).double().numpy()
            old, new = C.mean_and_se(a)[1].double().numpy(), C.paired_se(a, b).double().numpy()
            old_hit += list(np.abs(estimate - exact) <= 2 * old)
            new_hit += list(np.abs(estimate - exact) <= 2 * new)
        print(
            f"flattened={flattened}: {len(old_hit)} rows, +-2 SE coverage "
            f"before {np.mean(old_hit):.3f}, now {np.mean(new_hit):.3f}"
        )


def sharpness() -> None:
    from trainers.data import _digits

    torch.manual_seed(0)
    xtr, ytr, _, _ = _digits()
    x, y = xtr.flatten(1)[:1024], ytr[:1024]
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for idx in torch.randperm(len(x)).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    names, g = [n for n, _ in model.named_parameters()], torch.Generator().manual_seed(0)

    def top(xb, yb, iters=20):
        leaves, grads = C.loss_and_grads(model, names, xb, yb, F.cross_entropy)
        return C.lanczos_top(C.hvp_fn(leaves, grads), C.rademacher_like(leaves, g), iters, 0.01)[0]

    full = top(x, y, 30)
    print(f"full batch (1024 samples): {full:.3g}")
    for size in (16, 32, 64, 128, 256):
        started = time.process_time()
        v = np.array([top(x[i], y[i]) for i in (torch.randperm(1024, generator=g)[:size] for _ in range(12))])
        cost = (time.process_time() - started) / 12
        print(
            f"{size} samples: min {v.min():.3g} median {np.median(v):.3g} max {v.max():.3g} "
            f"sd/full {v.std() / full:.2f} ({cost:.2f} s CPU per call)"
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"gn-se": gn_se, "sharpness": sharpness}[sys.argv[1] if len(sys.argv) > 1 else "gn-se"]()
