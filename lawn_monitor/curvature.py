"""Curvature of the loss on a fixed probe batch: plain tensor functions, tested against brute force.

Every function here evaluates the network in eval mode (BatchNorm with its running statistics,
no dropout), a deterministic function of the weights: the curvature measured is that of the
eval-mode loss on the probe batch, not of the train-mode loss the optimizer descends (which
normalizes by batch statistics that themselves depend on the weights).

* ``gn_trace_groups``: the Gauss-Newton trace proxy, tr(J^T H_out J) with H_out = diag(p) - p p^T
  the Hessian of softmax cross-entropy in the logits. Rademacher vectors v are pushed through a
  square root S of H_out (``sqrt_output_hessian_times``), so E||J^T S v||^2 = tr(J^T H_out J),
  without sampling labels. The probe batch is split into groups, one forward each; a second
  independent draw of the vectors on each group (a second backward) gives the standard error
  (``paired_se``).

  Why not sample labels from the model's softmax (E||grad loss(x, y_hat)||^2 is the same trace)?
  Once most samples are confidently right, a typical draw takes the predicted label everywhere
  and reads a tiny gradient, and the rare unlikely label that would make up the average is
  missing from almost every call: the median call falls far below the truth while its standard
  error looks small (tests/test_curvature.py keeps that failure as a regression test).

  For networks that are piecewise linear in each layer's weights (ReLU, max-pool, linear and
  conv layers, BatchNorm in eval mode: an affine map), the outputs' second derivative inside
  each layer's block vanishes almost everywhere, so each diagonal block of the Hessian equals the
  Gauss-Newton block and the proxy's expectation is tr(H), per layer and in total.

* ``hutchinson_samples``: unbiased tr(H) with Rademacher vectors through Hessian-vector
  products (double backward); per layer, v_l^T (Hv)_l is unbiased for tr(H_ll) because the
  off-diagonal blocks cancel in expectation. Right for any network, at the cost of many products.

* ``lanczos_top``: the top Hessian eigenvalue (sharpness) from a few Hessian-vector products.

The model's output goes through ``logits_fn`` (default ``outputs.logits_of``: a tensor, a Hugging
Face ``ModelOutput``, a dict with ``"logits"``). Sequence logits (B, T, V) count each position as
a sample; positions whose target is -100 are left out (``mask``, ``F.cross_entropy``'s default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .outputs import logits_of

LossFn = Callable[[Tensor, Tensor], Tensor]
LogitsFn = Callable[[object], Tensor]


def _logits(output: object, logits_fn: LogitsFn | None) -> Tensor:
    return (logits_fn or logits_of)(output)


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


def sqrt_output_hessian_times(logits: Tensor, signs: Tensor) -> Tensor:
    """``S v`` for each row, with S = diag(sqrt p) - p sqrt(p)^T and p = softmax(logits).

    S S^T = diag(p) - p p^T is the Hessian of softmax cross-entropy with respect to the logits,
    the same whatever the label, so for Rademacher ``signs`` v, E ||J^T S v||^2 = tr(J^T H_out J).
    No label is drawn: a confidently right sample contributes its small curvature every time,
    not a rare large gradient when an unlikely label happens to be drawn.
    """
    p = logits.detach().float().softmax(dim=-1)
    s = p.sqrt()
    sv = s * signs.float()
    return (sv - p * sv.sum(dim=-1, keepdim=True)).to(logits.dtype)


@torch.no_grad()
def output_shape(model: nn.Module, inputs: Tensor, logits_fn: LogitsFn | None = None) -> tuple[int, ...]:
    """The shape of one sample's logits: (C,), or (T, V) for a sequence (one sample's forward
    in eval mode, on copies of the buffers like every probe)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params, buffers = functional_state(model, names, requires_grad=False)
    with eval_mode(model):
        return tuple(_logits(functional_call(model, (params, buffers), (inputs[:1],)), logits_fn).shape[1:])


def gn_trace_groups(
    model: nn.Module,
    names: list[str],
    inputs: Tensor,
    signs: Tensor,
    logits_fn: LogitsFn | None = None,
    mask: Tensor | None = None,
    second: Tensor | None = None,
) -> Tensor:
    """Each group's estimate of each layer's Gauss-Newton trace of softmax cross-entropy: (K, L);
    with ``second`` (independent signs shaped as ``signs``) also the estimates from those, on the
    same forward pass (one more backward per group): (2, K, L).

    ``inputs`` (K * m samples, or more: the rest is left out) are split into K groups of m;
    ``signs`` (K, m, *logits shape) are Rademacher vectors, one per sample. Group k's estimate is
    ||g_k||^2 / m per layer, with g_k the gradient of sum_n <logits_n, stopgrad(S_n v_n)> over its
    samples, i.e. sum_n J_n^T S_n v_n: its cross terms between samples vanish in expectation
    because their v are independent, so it is unbiased for the group's mean per-sample GN trace
    (the trace of the GN matrix of the mean loss). One ordinary backward per group, on detached
    copies of the weights: no per-sample gradients held, any module that autograd handles works.
    m = 1 is the per-sample form (no cross terms, the least spread, N backward passes).

    Sequence logits (B, T, V) make each position a sample: m counts the group's positions, those
    where ``mask`` (B, T) is False left out (their S v is zeroed).
    """
    groups, size = signs.shape[:2]
    params, buffers = functional_state(model, names)
    leaves = [params[n] for n in names]
    masks = mask[: groups * size].split(size) if mask is not None else [None] * groups
    rows: list[Tensor] = []
    with eval_mode(model):
        for x, v, m in zip(inputs[: groups * size].split(size), signs, masks):
            logits = _logits(functional_call(model, (params, buffers), (x,)), logits_fn)
            sv = sqrt_output_hessian_times(logits, v)
            count = logits[..., 0].numel()  # samples, or positions of a sequence
            if m is not None:
                count = m.sum().float()
            draws = [sv] if second is None else [sv, sqrt_output_hessian_times(logits, second[len(rows)])]
            row = []
            for i, s in enumerate(draws):
                if m is not None:
                    s = s * m.unsqueeze(-1).to(s.dtype)
                grads = torch.autograd.grad(
                    logits,
                    leaves,
                    grad_outputs=s,
                    allow_unused=True,
                    materialize_grads=True,
                    retain_graph=i < len(draws) - 1,
                )
                row.append(torch.stack(torch._foreach_norm(grads)).float().square() / count)
            rows.append(torch.stack(row))
    out = torch.stack(rows)  # (K, draws, L)
    return out[:, 0] if second is None else out.transpose(0, 1)


def loss_and_grads(
    model: nn.Module,
    names: list[str],
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    logits_fn: LogitsFn | None = None,
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """Leaves and their gradients with a graph kept for Hessian-vector products. Sequence logits
    (B, T, V) and targets (B, T) reach ``loss_fn`` flattened, (B*T, V) and (B*T,)."""
    params, buffers = functional_state(model, names)
    # Hessian-vector products differentiate this graph twice: attention must take the math
    # kernel, as the fused ones (flash, memory-efficient) have no double backward.
    with eval_mode(model), sdpa_kernel(SDPBackend.MATH):
        logits = _logits(functional_call(model, (params, buffers), (inputs,)), logits_fn)
        if logits.ndim > 2:
            logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        loss = loss_fn(logits, targets)
    leaves = [params[n] for n in names]
    return leaves, torch.autograd.grad(loss, leaves, create_graph=True)


def hvp_fn(leaves: list[Tensor], grads: tuple[Tensor, ...]) -> Callable[[list[Tensor]], list[Tensor]]:
    def hvp(v: list[Tensor]) -> list[Tensor]:
        return list(torch.autograd.grad(grads, leaves, grad_outputs=v, retain_graph=True))

    return hvp


def rademacher(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Independent random signs (+1 or -1, each with probability 1/2)."""
    return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype).mul_(2).sub_(1)


def rademacher_like(tensors: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    return [rademacher(t.shape, generator, t.device, t.dtype) for t in tensors]


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


def t_quantile_975(dof: int) -> float:
    """Student's t 97.5% quantile with ``dof`` degrees of freedom (Cornish-Fisher expansion in
    1/dof about the normal's 1.96: within 0.3% of the exact value from 3 degrees of freedom on)."""
    z = 1.959964
    return (
        z
        + (z**3 + z) / (4 * dof)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * dof**4)
    )


def paired_se(first: Tensor, second: Tensor) -> Tensor:
    """A standard error for ``first.mean(0)`` as an estimate of this probe batch's own value, from
    ``second``: an independent draw of the random vectors on the same rows' samples.

    ``first[k] - second[k]`` has mean 0 and twice the variance of ``first[k]`` given the samples,
    whatever they are, so sum_k (first[k] - second[k])^2 / (2 K^2) estimates the variance of the
    mean with K degrees of freedom. Groups of different samples differ in their expectations
    (once the loss flattens, a group with one unflat sample reads 100x one without): the spread
    between groups measures that, which is no error of this batch's trace, and a t-interval from K
    values at +-2 SE covers less than 90% (K = 4: 88%). The result is scaled by
    ``t_quantile_975(K) / 2``, so that +-2 of it is a 95% interval."""
    k = first.shape[0]
    variance = (first - second).square().sum(dim=0) / (2 * k * k)
    return variance.sqrt() * (t_quantile_975(k) / 2)


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum(torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b))


def lanczos_top(
    hvp: Callable[[list[Tensor]], list[Tensor]], v0: list[Tensor], iters: int = 20, tol: float = 0.1
) -> tuple[float, list[Tensor], int]:
    """The largest eigenvalue of the symmetric operator ``hvp``, its unit eigenvector, and the
    number of products taken: the top Ritz pair of the Krylov space grown from ``v0`` (Lanczos).

    Stops once the Ritz pair's residual ||A y - theta y|| is below ``tol * |theta|`` (the
    eigenvalue's error is then about the residual squared over the gap to the next eigenvalue),
    or after ``iters`` products. From a warm start (the last call's vector) a few products
    suffice; for as many products its estimate is at least power iteration's Rayleigh quotient,
    and it converges much faster where the top eigenvalues are close. Every basis vector is kept
    (``iters`` copies of the parameters) and orthogonalized against all the others, so rounding
    cannot bring back directions already found. Each step reads two numbers to the host: fine on
    the slow cadence this runs on. NaN (and ``v0`` back, normalized) where the products are not
    finite.
    """
    norm = _dot(v0, v0).sqrt()
    basis = [[t / norm for t in v0]]
    alphas: list[float] = []
    betas: list[float] = []
    for step in range(iters):
        w = hvp(basis[-1])
        alphas.append(float(_dot(w, basis[-1])))
        for b in basis:  # full reorthogonalization (Gram-Schmidt against every basis vector)
            c = _dot(w, b)
            w = [x - c * y for x, y in zip(w, b)]
        beta = float(_dot(w, w).sqrt())
        if not (math.isfinite(alphas[-1]) and math.isfinite(beta)):  # a diverged network: no eigenvalue
            return math.nan, basis[0], len(alphas)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        eigenvalues, eigenvectors = np.linalg.eigh(T)
        value, ritz = float(eigenvalues[-1]), eigenvectors[:, -1]
        residual = beta * abs(ritz[-1])
        if residual <= tol * abs(value) or step == iters - 1:
            break
        betas.append(beta)
        basis.append([x / beta for x in w])
    vector = [sum(float(c) * b[i] for c, b in zip(ritz, basis)) for i in range(len(v0))]
    return value, vector, len(alphas)


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
