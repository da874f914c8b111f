"""Curvature of the loss on a fixed probe batch: plain tensor functions, tested against brute force.

* ``gn_trace_samples``: the Gauss-Newton trace proxy. For cross-entropy with labels ``y_hat``
  sampled from the model's own softmax, E||grad_theta loss(x, y_hat)||^2 = tr(J^T H_out J), the
  Gauss-Newton matrix of that sample. One backward per probe batch gives all per-sample gradient
  norms (``torch.func.vmap`` over ``torch.func.grad``); their mean estimates tr(G) and their
  spread gives its standard error.

  For networks that are piecewise linear in each layer's weights (ReLU, max-pool, linear and
  conv layers, BatchNorm in eval mode), the outputs' second derivative inside each layer's block
  vanishes almost everywhere, so each diagonal block of the Hessian equals the Gauss-Newton block
  and E[proxy] = tr(H), per layer and in total. BatchNorm in *training* mode divides by batch
  statistics that depend on the weights, which breaks piecewise linearity (and makes per-sample
  gradients ill-defined): that is why every curvature probe here evaluates the network in eval
  mode (running statistics, no dropout), a deterministic function of the weights.

* ``hutchinson_samples``: unbiased tr(H) with Rademacher vectors through Hessian-vector
  products (double backward); per layer, v_l^T (Hv)_l is unbiased for tr(H_ll) because the
  off-diagonal blocks cancel in expectation.

* ``power_iteration``: the top Hessian eigenvalue (sharpness) from Hessian-vector products.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag (not one flag for all)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def functional_state(
    model: nn.Module, names: list[str], requires_grad: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Detached leaf copies of the named parameters (sharing storage) and cloned buffers, so that
    nothing computed from them can touch the model's ``.grad`` or its BatchNorm statistics."""
    params = dict(model.named_parameters())
    leaves = {n: params[n].detach().requires_grad_(requires_grad) for n in names}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    return leaves, buffers


def sample_labels(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One label per row, drawn from the model's own predictive distribution."""
    return torch.multinomial(logits.detach().float().softmax(dim=1), 1, generator=generator).squeeze(1)


PER_SAMPLE_ELEMENTS = 2**26  # per-sample gradients held at once (256 MB of float32)


def gn_trace_samples(
    model: nn.Module, names: list[str], inputs: Tensor, labels: Tensor,
    loss_fn: LossFn = F.cross_entropy, chunk_size: int | None = None,
) -> Tensor:
    """Per-sample squared gradient norms, per parameter tensor: an (N, L) tensor.

    With ``labels`` sampled from the model's softmax (``sample_labels``), row means estimate
    each layer's Gauss-Newton trace. ``chunk_size`` samples are differentiated at once (default:
    as many as fit in PER_SAMPLE_ELEMENTS; one chunk for small models, which is fastest).
    """
    params, buffers = functional_state(model, names, requires_grad=False)  # torch.func differentiates
    if chunk_size is None:
        chunk_size = max(1, PER_SAMPLE_ELEMENTS // max(1, sum(p.numel() for p in params.values())))

    def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    with eval_mode(model):
        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, inputs, labels)
    return torch.stack([per_sample[n].flatten(1).float().square().sum(1) for n in names], dim=1)


def loss_and_grads(
    model: nn.Module, names: list[str], inputs: Tensor, targets: Tensor, loss_fn: LossFn
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """Leaves and their gradients with a graph kept for Hessian-vector products."""
    params, buffers = functional_state(model, names)
    with eval_mode(model):
        loss = loss_fn(functional_call(model, (params, buffers), (inputs,)), targets)
    leaves = [params[n] for n in names]
    return leaves, torch.autograd.grad(loss, leaves, create_graph=True)


def hvp_fn(leaves: list[Tensor], grads: tuple[Tensor, ...]) -> Callable[[list[Tensor]], list[Tensor]]:
    def hvp(v: list[Tensor]) -> list[Tensor]:
        return list(torch.autograd.grad(grads, leaves, grad_outputs=v, retain_graph=True))

    return hvp


def rademacher_like(tensors: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    return [
        torch.randint(0, 2, t.shape, generator=generator, device=t.device).to(t.dtype).mul_(2).sub_(1)
        for t in tensors
    ]


def hutchinson_samples(
    hvp: Callable[[list[Tensor]], list[Tensor]], like: list[Tensor], num_probes: int, generator: torch.Generator
) -> Tensor:
    """v_l^T (H v)_l for each of ``num_probes`` Rademacher vectors v: a (K, L) tensor.

    Column means estimate each block's trace tr(H_ll); row sums estimate tr(H).
    """
    rows = []
    for _ in range(num_probes):
        v = rademacher_like(like, generator)
        hv = hvp(v)
        rows.append(torch.stack([torch.vdot(a.flatten(), b.flatten()).float() for a, b in zip(v, hv)]))
    return torch.stack(rows)


def mean_and_se(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over dim 0 and its standard error (sample std / sqrt(n))."""
    n = samples.shape[0]
    se = samples.std(dim=0) / math.sqrt(n) if n > 1 else torch.full_like(samples[0], float("nan"))
    return samples.mean(dim=0), se


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum(torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b))


def power_iteration(
    hvp: Callable[[list[Tensor]], list[Tensor]], v0: list[Tensor], iters: int = 100, tol: float = 1e-4
) -> tuple[float, list[Tensor]]:
    """Largest-magnitude eigenvalue of the operator ``hvp`` and its unit eigenvector.

    Stops when the Rayleigh quotient changes by less than ``tol`` (relative). Each iteration
    reads one number to the host: fine on the slow cadence this runs on.
    """
    norm = _dot(v0, v0).sqrt()
    v = [t / norm for t in v0]
    eigenvalue = math.nan
    for _ in range(iters):
        hv = hvp(v)
        new = float(_dot(v, hv))
        norm = _dot(hv, hv).sqrt()
        if float(norm) == 0.0:
            return 0.0, v
        v = [t / norm for t in hv]
        if abs(new - eigenvalue) <= tol * abs(new):
            return new, v
        eigenvalue = new
    return eigenvalue, v


def stability_threshold(optimizer: torch.optim.Optimizer | None) -> float:
    """The edge-of-stability line for the optimizer's current LR (first param group).

    Gradient descent with heavy-ball momentum beta is stable on a quadratic while sharpness is
    below (2 + 2 beta) / lr (2 / lr without momentum). For Adam the line is
    (2 + 2 beta1) / ((1 - beta1) lr), which applies to the *preconditioned* sharpness.
    """
    if optimizer is None or not optimizer.param_groups:
        return math.nan
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if lr <= 0:
        return math.inf  # a zero step is stable at any sharpness
    if "betas" in group:
        beta1 = float(group["betas"][0])
        return (2 + 2 * beta1) / ((1 - beta1) * lr)
    return (2 + 2 * float(group.get("momentum", 0.0))) / lr
