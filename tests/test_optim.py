"""LAWN's exactness against the plain optimizer and its own invariants, checked step by step."""

import copy

import pytest
import torch
from torch import nn

from lawn_monitor import LAWN
from lawn_monitor.optim import (
    lawn_factor,
    lawn_schedule,
    make_optimizer,
    project_to_norm,
    tangent_project,
    warmup_decay,
    warmup_decay_factor,
)

OPTIMIZER_NAMES = ["sgd", "adam", "adamw", "adamp"]


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def train_steps(model, opt, data, after_step=None):
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step:
            after_step()


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_free_phase_is_bit_identical_to_the_inner_optimizer(name):
    data = batches(12)
    plain_model, lawn_model = tiny_model(), tiny_model()
    plain = make_optimizer(name, plain_model.parameters(), lr=1e-2, weight_decay=1e-3)
    lawn = make_optimizer(name, lawn_model.parameters(), lr=1e-2, weight_decay=1e-3, lawn=True, free_steps=12)
    assert isinstance(lawn, LAWN)
    train_steps(plain_model, plain, data)
    train_steps(lawn_model, lawn, data)
    assert lawn.phase == "free"
    for a, b in zip(plain_model.parameters(), lawn_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
@pytest.mark.parametrize("tangent", [False, True])
def test_constrained_norms_equal_targets_after_every_step(name, tangent):
    model = tiny_model()
    opt = make_optimizer(name, model.parameters(), lr=5e-2, weight_decay=1e-2, lawn=True, free_steps=3, tangent=tangent)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    biases = [p for p in model.parameters() if p.ndim < 2]
    norms_at_switch = []
    checked = []

    def check():
        if opt.step_count == 3:
            norms_at_switch.extend(float(w.detach().norm()) for w in weights)
        if opt.phase == "constrained":
            for w, t, t0 in zip(weights, opt.targets, norms_at_switch):
                assert float(t) == pytest.approx(t0, rel=1e-6)  # targets are the norms at the switch
                assert float(w.norm()) == pytest.approx(float(t), rel=1e-5)
            checked.append(opt.step_count)

    train_steps(model, opt, batches(15), after_step=check)
    assert checked == list(range(4, 16))
    assert len(opt.targets) == len(weights) and len(biases) > 0
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    assert opt.free_weight_decay == [1e-2]


def test_biases_are_untouched_by_the_constraint():
    """With plain SGD a bias moves by exactly -lr * grad, before and after the switch."""
    model = tiny_model()
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=2)
    for x, y in batches(6):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim == 1}
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.ndim == 1}
        opt.step()
        for n, p in model.named_parameters():
            if p.ndim == 1:
                torch.testing.assert_close(p.detach(), before[n] - 0.1 * grads[n], rtol=0, atol=1e-7)
    assert opt.phase == "constrained"


def test_param_selection_and_validation():
    model = tiny_model()
    first = model[0].weight
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=0, params=[first])
    assert opt.constrained_params() == [first]
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=0, params=lambda p: p.ndim == 1)
    assert all(p.ndim == 1 for p in opt.constrained_params())
    with pytest.raises(ValueError, match="free_steps"):
        LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=-1)
    with pytest.raises(ValueError, match="belong"):
        LAWN(torch.optim.SGD(model[0].parameters(), lr=0.1), free_steps=0, params=[model[2].weight])
    with pytest.raises(ValueError, match="Optimizer"):
        LAWN(model, free_steps=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", model.parameters(), lr=0.1)


def test_switch_now_and_reset_moments():
    model = tiny_model()
    opt = LAWN(torch.optim.Adam(model.parameters(), lr=1e-2), free_steps=1000, reset_moments=True)
    train_steps(model, opt, batches(3))
    assert len(opt.state) > 0 and opt.phase == "free"
    opt.switch()
    assert opt.phase == "constrained" and len(opt.state) == 0
    train_steps(model, opt, batches(2))
    for w, t in zip(opt.constrained_params(), opt.targets):
        assert float(w.norm()) == pytest.approx(float(t), rel=1e-5)


@pytest.mark.parametrize("save_at", [2, 7])  # in the free phase, and in the constrained phase
@pytest.mark.parametrize("name", ["sgd", "adam", "adamp"])
def test_state_dict_round_trip_continues_bit_identically(name, save_at):
    data = batches(12)
    model = tiny_model()
    opt = make_optimizer(name, model.parameters(), lr=1e-2, weight_decay=1e-3, lawn=True, free_steps=4, tangent=True)
    sched = lawn_schedule(opt, total_steps=12, free_steps=4, warmup_steps=2)

    def run(m, o, s, part):
        for x, y in part:
            loss = nn.functional.cross_entropy(m(x), y)
            o.zero_grad()
            loss.backward()
            o.step()
            s.step()

    run(model, opt, sched, data[:save_at])
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    run(model, opt, sched, data[save_at:])

    resumed = tiny_model(seed=123)  # different init: everything must come from the state dicts
    resumed.load_state_dict(saved["model"])
    opt2 = make_optimizer(name, resumed.parameters(), lr=1e-2, weight_decay=1e-3, lawn=True, free_steps=4, tangent=True)
    sched2 = lawn_schedule(opt2, total_steps=12, free_steps=4, warmup_steps=2)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    run(resumed, opt2, sched2, data[save_at:])

    assert opt2.phase == opt.phase == "constrained" and opt2.step_count == opt.step_count == 12
    assert torch.equal(opt2.targets, opt.targets)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_lr_scheduler_and_grad_scaler_accept_lawn():
    model = tiny_model()
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), free_steps=2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for x, y in batches(4):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    assert opt.step_count == 4 and opt.phase == "constrained"
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)
    assert opt.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"]  # shared, not copied
    for w, t in zip(opt.constrained_params(), opt.targets):
        assert float(w.norm()) == pytest.approx(float(t), rel=1e-5)


def test_lawn_is_an_optimizer_set_up_by_torch():
    """LAWN runs Optimizer.__init__ (no copy of torch's private hook registries): hooks on LAWN
    fire once per LAWN step in both phases, and the inner optimizer keeps its very groups and
    state, even when it has stepped before it was wrapped."""
    model = tiny_model()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_steps(model, inner, batches(1))
    groups, state = inner.param_groups, inner.state
    moments = {id(p): s["exp_avg"].clone() for p, s in state.items()}
    opt = LAWN(inner, free_steps=2)
    assert opt.param_groups is inner.param_groups is groups and opt.state is inner.state is state
    assert {id(p): s["exp_avg"] for p, s in opt.state.items()}.keys() == moments.keys()
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o.step_count)))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o.step_count)))
    train_steps(model, opt, batches(4))
    assert calls == [(when, n) for n in range(4) for when, n in (("pre", n), ("post", n + 1))]
    assert opt.phase == "constrained"
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_closure_is_supported():
    model = tiny_model()
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=1, tangent=True)
    x, y = batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        assert torch.isfinite(opt.step(closure))


def test_project_to_norm_and_tangent_project():
    torch.manual_seed(0)
    ws = [torch.randn(5, 7), torch.randn(3, 3, 2)]
    targets = torch.tensor([2.0, 0.5])
    project_to_norm(ws, targets)
    assert [float(w.norm()) for w in ws] == pytest.approx([2.0, 0.5], rel=1e-6)
    gs = [torch.randn_like(w) for w in ws]
    tangent_project(ws, gs)
    for w, g in zip(ws, gs):
        assert float((w * g).sum()) == pytest.approx(0.0, abs=1e-5)


def test_schedules():
    assert warmup_decay_factor(0, 100, 10) == pytest.approx(0.1)
    assert warmup_decay_factor(9, 100, 10) == pytest.approx(1.0)
    assert warmup_decay_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert warmup_decay_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    # LAWN: constant through the free phase, then warm-up from the switch, then decay
    assert [lawn_factor(s, 100, 20, 10) for s in (0, 19)] == [1.0, 1.0]
    assert lawn_factor(20, 100, 20, 10) == pytest.approx(0.1)
    assert lawn_factor(29, 100, 20, 10) == pytest.approx(1.0)
    assert lawn_factor(99, 100, 20, 10, "linear") < 0.02
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(ValueError, match="decay"):
        warmup_decay(opt, 10, 0, decay="exp")
