"""Curvature probes against brute force on toys: exact Hessian, exact Gauss-Newton, exact spectrum."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from lawn_monitor import LAWN, Monitor, RunStore
from lawn_monitor import curvature as C
from lawn_monitor.probes import GNTrace, HessianTrace, OutputStats, ParamNorms, ProbeConfig, Sharpness, log_spaced


def toy(activation: type[nn.Module], seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), activation(), nn.Linear(6, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def flat_fn(model, out_fn):
    """A function of one flat parameter vector, and the slices of each parameter tensor in it."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()

    def fn(flat):
        params = {n: flat[a:b].view(s) for n, s, a, b in zip(names, shapes, bounds[:-1], bounds[1:])}
        return out_fn(functional_call(model, params, ()))

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return fn, flat, list(zip(bounds[:-1], bounds[1:]))


def exact_hessian_traces(model, x, y):
    fn, flat, slices = flat_fn(model, lambda call: None)
    names = [n for n, _ in model.named_parameters()]

    def loss(flat_params):
        params = {n: flat_params[a:b].view(p.shape) for n, (a, b), p in zip(names, slices, model.parameters())}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    H = hessian(loss)(flat)
    return [float(H[a:b, a:b].diagonal().sum()) for a, b in slices], H


def exact_gn_traces(model, x):
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    sizes = [p.numel() for p in model.parameters()]
    bounds = torch.tensor([0] + sizes).cumsum(0).tolist()
    slices = list(zip(bounds[:-1], bounds[1:]))

    def logits(flat_params):
        params = {n: flat_params[a:b].view(p.shape) for n, (a, b), p in zip(names, slices, model.parameters())}
        return functional_call(model, params, (x,))

    J = jacrev(logits)(flat)  # (N, C, P)
    p = logits(flat).softmax(dim=1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # softmax-CE Hessian w.r.t. logits
    traces = []
    for a, b in slices:
        Jl = J[:, :, a:b]
        traces.append(float(torch.einsum("ncp,ncd,ndp->", Jl, A, Jl) / len(x)))
    return traces


def test_hutchinson_is_within_4_se_of_the_exact_trace_and_se_shrinks_like_inverse_sqrt():
    model, x, y = toy(nn.Tanh)  # smooth: its Hessian is not its Gauss-Newton matrix
    exact, H = exact_hessian_traces(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    leaves, grads = C.loss_and_grads(model, names, x, y, F.cross_entropy)
    hvp = C.hvp_fn(leaves, grads)
    samples = C.hutchinson_samples(hvp, leaves, 400, torch.Generator().manual_seed(0))
    mean, se = C.mean_and_se(samples)
    for layer in range(len(exact)):
        assert abs(float(mean[layer]) - exact[layer]) <= 4 * float(se[layer]) + 1e-12, layer
    total, total_se = C.mean_and_se(samples.sum(1))
    assert abs(float(total) - sum(exact)) <= 4 * float(total_se)
    # A Rademacher probe's variance is 2 * sum_{i != j} H_ij^2: the reported SE must match it.
    off_diagonal = H - torch.diag(H.diagonal())
    theory_se = math.sqrt(2 * float(off_diagonal.square().sum()) / len(samples))
    assert float(total_se) == pytest.approx(theory_se, rel=0.2)

    few = C.hutchinson_samples(hvp, leaves, 100, torch.Generator().manual_seed(1))
    many = C.hutchinson_samples(hvp, leaves, 1600, torch.Generator().manual_seed(2))
    ratio = float(C.mean_and_se(few.sum(1))[1] / C.mean_and_se(many.sum(1))[1])
    assert 3.0 < ratio < 5.3  # sqrt(1600 / 100) = 4


def test_gn_proxy_matches_exact_gauss_newton_and_hessian_on_a_piecewise_linear_mlp():
    model, x, y = toy(nn.ReLU)
    exact_gn = exact_gn_traces(model, x)
    exact_h, _ = exact_hessian_traces(model, x, y)
    # Piecewise linear in each layer's weights: each diagonal block of H equals that of G.
    assert exact_h == pytest.approx(exact_gn, rel=1e-9, abs=1e-12)

    names = [n for n, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(0)
    estimates, ses = [], []
    for _ in range(50):
        labels = C.sample_labels(model(x), generator)
        mean, se = C.mean_and_se(C.gn_trace_samples(model, names, x, labels))
        estimates.append(mean)
        ses.append(se)
    estimates, ses = torch.stack(estimates), torch.stack(ses)
    mean = estimates.mean(0)
    se = (ses.square().mean(0) / len(estimates)).sqrt()  # SE of the mean of 50 independent proxies
    for layer, exact in enumerate(exact_gn):
        assert abs(float(mean[layer]) - exact) <= 4 * float(se[layer]), layer
    # The reported SE covers the spread of repeated proxies (it may be larger: it also holds the
    # spread between samples of the batch).
    assert (ses.mean(0) >= 0.5 * estimates.std(0)).all()


def test_power_iteration_finds_the_top_eigenvalue():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    eigenvalues = torch.cat([torch.tensor([10.0, 6.0], dtype=torch.float64), torch.linspace(-3, 3, 28, dtype=torch.float64)])
    A = q @ torch.diag(eigenvalues) @ q.T

    def hvp(v):
        return [(A @ v[0].flatten()).view_as(v[0])]

    value, vector = C.power_iteration(hvp, [torch.randn(30, dtype=torch.float64)], iters=500, tol=1e-8)
    assert value == pytest.approx(10.0, rel=1e-3)
    assert abs(float(vector[0] @ q[:, 0])) == pytest.approx(1.0, abs=1e-3)


def test_sharpness_probe_matches_the_exact_hessian_and_logs_the_threshold(tmp_path):
    model, x, y = toy(nn.Tanh)
    _, H = exact_hessian_traces(model, x, y)
    eig = torch.linalg.eigvalsh(H)
    top = float(eig[eig.abs().argmax()])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    probe = Sharpness(x, y, every_n=1, iters=1000, tol=1e-9)
    probe.attach(model, opt)
    keys, values = probe.compute(None)
    got = dict(zip(keys, values.tolist()))
    assert got[("sharpness", "")] == pytest.approx(top, rel=1e-3)
    assert got[("sharpness_threshold", "")] == pytest.approx((2 + 2 * 0.9) / 0.05)
    assert C.stability_threshold(torch.optim.Adam(model.parameters(), lr=1e-3)) == pytest.approx(3.8 / (0.1 * 1e-3))


class BNNet(nn.Module):
    """BatchNorm and dropout: training mode touches running statistics and the global RNG."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


def train_bn(tmp_path, with_curvature: bool):
    torch.manual_seed(0)
    model = BNNet()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 1, 6, 6, generator=g), torch.randint(0, 5, (64,), generator=g)
    opt = LAWN(torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3), free_steps=3)
    probes = [ParamNorms(), OutputStats()]
    if with_curvature:
        common = dict(every_n=1)
        probes += [GNTrace(x[:16], y[:16], **common), HessianTrace(x[:16], y[:16], num_probes=4, **common),
                   Sharpness(x[:16], y[:16], iters=5, **common)]
    monitor = Monitor(model, opt, root=tmp_path / str(with_curvature), probes=probes, flush_every=3)
    for step in range(8):
        idx = torch.randint(0, 64, (16,))  # global RNG: a probe that used it would shift these
        logits = model(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss, logits=logits, targets=y[idx])
    monitor.close()
    return model, opt, torch.get_rng_state(), monitor


def test_curvature_probes_never_change_training(tmp_path):
    plain_model, plain_opt, plain_rng, _ = train_bn(tmp_path, with_curvature=False)
    model, opt, rng, monitor = train_bn(tmp_path, with_curvature=True)
    for (name, a), b in zip(plain_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name  # weights and BN running statistics, bit for bit
    assert torch.equal(plain_rng, rng)
    for a, b in zip(plain_model.parameters(), model.parameters()):
        assert torch.equal(a.grad, b.grad)
    sa, sb = plain_opt.state_dict(), opt.state_dict()
    assert torch.equal(sa["lawn"]["targets"], sb["lawn"]["targets"])
    for key, state in sa["inner"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, sb["inner"]["state"][key][name]), (key, name)
    metrics = set(RunStore(monitor.run_dir.parent).metrics(monitor.run_id))
    assert {"gn_trace", "gn_trace_se", "hessian_trace", "hessian_trace_se", "sharpness",
            "sharpness_threshold", "sharpness_precond", "curvature_time"} <= metrics


def test_schedules_and_budget():
    due = log_spaced(10, 1000)
    steps = [s for s in range(1, 1001) if due(s)]
    assert steps[0] == 1 and steps[-1] == 1000 and len(steps) == 10
    assert steps[1] - steps[0] < steps[-1] - steps[-2]  # dense early, sparse late
    assert [s for s in range(1, 70) if log_spaced(5)(s)] == [1, 2, 4, 8, 16, 32, 64]

    probe = Sharpness(torch.zeros(4), torch.zeros(4), every_n=1, budget=0.1, iters=10)
    # Before its first call the cost is estimated: 41 probe-batch steps at 0.01 s x (4 / 8).
    assert probe.estimate(step_seconds=0.01, batch_size=8) == pytest.approx(0.205)
    assert not probe.due(1, train_seconds=2.0, step_seconds=0.01, batch_size=8)
    assert probe.due(1, train_seconds=2.1, step_seconds=0.01, batch_size=8)
    probe.charge(1.0)
    assert not probe.due(2, train_seconds=10.0)  # 1 s spent + 1 s next > 10% of 10 s
    assert probe.due(3, train_seconds=20.0)  # pending since step 2, and now within budget


def test_finished_run_gets_a_final_curvature_point_however_tight_the_budget(tmp_path):
    model, x, y = toy(nn.ReLU)
    model.float()
    x = x.float()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = ProbeConfig(budget=1e-9, hessian_probes=4, sharpness_iters=3)
    monitor = Monitor(model, opt, root=tmp_path, probe_batch=(x, y), probe_config=cfg, total_steps=5)
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)
    monitor.close()
    store = RunStore(tmp_path)
    for metric in ("gn_trace", "hessian_trace", "sharpness"):
        steps = store.series(monitor.run_id, metric)["step"].tolist()
        assert steps[-1] == 5 and len(steps) <= 2, metric  # maybe the first call, then the final one


def test_monitor_says_once_that_curvature_is_off_without_a_probe_batch(tmp_path):
    model = nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="curvature probes .* are off"):
        Monitor(model, None, root=tmp_path).close()
    cfg = ProbeConfig(curvature=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Monitor(model, None, root=tmp_path, probe_config=cfg).close()
