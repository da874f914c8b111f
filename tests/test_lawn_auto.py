"""LAWN's choices beyond the fixed free phase: the automatic switch at the onset of loss flattening
(``free_steps="auto"``), which tensors it constrains (``params="homogeneous"``), and the free
phase's warm-up. Small synthetic runs under a real Monitor, read back with RunStore."""

import copy

import pytest
import torch
from torch import nn

from lawn_monitor import LAWN, Monitor, RunStore
from lawn_monitor.optim import AutoSwitch, homogeneous_params, lawn_factor, lawn_schedule
from lawn_monitor.probes import ProbeConfig

NO_CURVATURE = ProbeConfig(curvature=False)


def memorize(
    root,
    lr: float,
    noisy: bool = False,
    auto: AutoSwitch | None = None,
    steps: int = 80,
    seed: int = 0,
    state_at: int | None = None,
):
    """A tiny MLP fits 32 random samples with Adam; ``noisy`` draws new labels every step (nothing
    to memorize: the loss never flattens). Returns (run id, the LAWN, its state at ``state_at``)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4))
    x, y = torch.randn(32, 10), torch.randint(0, 4, (32,))
    opt = LAWN(
        torch.optim.Adam(model.parameters(), lr=lr),
        free_steps="auto",
        auto=auto or AutoSwitch(max_steps=60, threshold=0.5, window=5, min_steps=10),
    )
    monitor = Monitor(
        model,
        opt,
        root=root,
        config={"lawn": True, "free_epochs": "auto"},
        name="auto",
        total_steps=steps,
        probe_config=NO_CURVATURE,
    )
    opt.monitor = monitor
    sched = lawn_schedule(opt, total_steps=steps, free_steps="auto", warmup_steps=5)
    saved = None
    for step in range(steps):
        if noisy:
            y = torch.randint(0, 4, (32,))
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss.detach(), logits=logits.detach(), targets=y)
        sched.step()
        if state_at is not None and step + 1 == state_at:
            saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    monitor.close("finished")
    return monitor.run_id, opt, saved


def test_auto_switches_at_the_onset_of_flattening_and_says_why(tmp_path):
    run_id, opt, _ = memorize(tmp_path, lr=3e-2)
    assert opt.phase == "constrained"
    info = opt.switch_info
    assert info["rule"] == "auto" and "flat_frac" in info["reason"] and ">= 0.5" in info["reason"]
    assert 10 < info["step"] <= 60 and opt.free_steps == info["step"] - 1
    store = RunStore(tmp_path)
    assert store.run_info(run_id)["lawn_switch"] == info  # in run.json
    assert int(store.switch_steps(run_id)["step"].iloc[0]) == info["step"]  # shown as a fixed switch is
    flat = store.series(run_id, "flat_frac")
    before = flat[flat["step"] < info["step"]].tail(5)["value"].mean()
    assert before >= 0.5 > flat[flat["step"] <= 10]["value"].mean()


def test_auto_does_not_switch_without_flattening_until_max_steps(tmp_path):
    run_id, opt, _ = memorize(tmp_path / "noisy", lr=1e-3, noisy=True)  # random labels: nothing flattens
    assert opt.switch_info["rule"] == "auto" and opt.switch_info["step"] == 61
    assert "max_steps 60 reached" in opt.switch_info["reason"]
    assert RunStore(tmp_path / "noisy").run_info(run_id)["lawn_switch"]["step"] == 61
    # a max that is never reached: still free at the end
    _, opt, _ = memorize(tmp_path / "long", lr=1e-3, noisy=True, auto=AutoSwitch(max_steps=500, window=5), steps=40)
    assert opt.phase == "free" and opt.switch_info is None and opt.free_steps is None


def test_auto_never_switches_before_min_steps(tmp_path):
    _, opt, _ = memorize(tmp_path, lr=3e-2, auto=AutoSwitch(max_steps=70, window=5, min_steps=50))
    assert opt.switch_info["rule"] == "auto" and 51 <= opt.switch_info["step"] <= 56


def test_schedule_warms_up_from_the_auto_switch(tmp_path):
    _, opt, _ = memorize(tmp_path, lr=3e-2)
    switch = opt.switch_info["step"]
    # the first constrained step (step number `switch`, index switch - 1) starts the warm-up
    assert lawn_factor(switch - 1, 80, opt.free_steps, 5) == pytest.approx(0.2)


def test_auto_state_resumes_to_the_same_switch(tmp_path):
    _, ref, saved = memorize(tmp_path / "a", lr=3e-2, state_at=12)
    auto = saved["opt"]["lawn"]["auto"]
    assert auto["count"] > 0 and auto["seen"] >= 11 and auto["window"] == 5  # mid-window, carried
    torch.manual_seed(0)
    opt = LAWN(
        torch.optim.Adam(
            [
                nn.Parameter(torch.zeros(64, 10)),
                nn.Parameter(torch.zeros(64)),
                nn.Parameter(torch.zeros(4, 64)),
                nn.Parameter(torch.zeros(4)),
            ],
            lr=3e-2,
        ),
        free_steps="auto",
        auto=AutoSwitch(max_steps=1),
    )
    opt.load_state_dict(saved["opt"])
    assert opt.auto == ref.auto and opt._auto_count == auto["count"] and opt.step_count == 12
    with pytest.raises(ValueError, match="free_steps='auto'"):
        LAWN(
            torch.optim.Adam(
                [
                    nn.Parameter(torch.zeros(64, 10)),
                    nn.Parameter(torch.zeros(64)),
                    nn.Parameter(torch.zeros(4, 64)),
                    nn.Parameter(torch.zeros(4)),
                ]
            ),
            free_steps=5,
        ).load_state_dict(saved["opt"])


def test_auto_needs_a_rule_and_a_monitor():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="AutoSwitch"):
        LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps="auto")
    with pytest.raises(ValueError, match="min_steps"):
        AutoSwitch(max_steps=5, min_steps=9)
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps="auto", auto=AutoSwitch(max_steps=5))
    model(torch.randn(4, 3)).sum().backward()
    with pytest.raises(ValueError, match="Monitor"):
        opt.step()


def test_homogeneous_params_are_the_last_norm_scale_and_what_follows():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )
    chosen = homogeneous_params(model)
    assert [id(p) for p in chosen] == [id(model[4].weight), id(model[8].weight), id(model[10].weight)]
    opt = LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=0, params="homogeneous", model=model)
    assert [id(p) for p in opt.constrained_params()] == [id(p) for p in chosen] and opt.param_choice == "homogeneous"
    mlp = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))  # no norm layer: homogeneous as a whole
    assert [id(p) for p in homogeneous_params(mlp)] == [id(mlp[0].weight), id(mlp[2].weight)]
    with pytest.raises(ValueError, match="model="):
        LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=0, params="homogeneous")
    with pytest.raises(ValueError, match="'ndim2', 'homogeneous', 'all'"):
        LAWN(torch.optim.SGD(model.parameters(), lr=0.1), free_steps=0, params="everything")


def test_free_phase_warmup():
    assert [lawn_factor(s, 100, 20, 10, free_warmup_steps=4) for s in (0, 1, 3, 4, 19)] == pytest.approx(
        [0.25, 0.5, 1.0, 1.0, 1.0]
    )
    assert lawn_factor(20, 100, 20, 10, free_warmup_steps=4) == pytest.approx(0.1)  # then the switch's warm-up
    assert lawn_factor(50, 100, None, 10, free_warmup_steps=4) == 1.0  # auto, not decided yet: free


# --- onset rules: they fire as flattening sets in, and never without it ----------------------


def separable(root, auto: AutoSwitch | None, noise: float = 0.0, steps: int = 150, lr: float = 2e-2):
    """An MLP learns a linearly separable teacher's labels (256 points) with Adam and no weight
    decay, batches of 32: the loss flattens. ``noise``: that share of each batch's labels drawn
    at random anew (nothing to memorize: it never flattens). Without ``auto``, plain Adam: the
    reference of how the free phase goes on (LAWN's free phase is Adam bit for bit). Returns
    (LAWN or None, the smoothed flat_frac by step)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = (x @ torch.randn(10, 4, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lawn = None if auto is None else LAWN(opt, free_steps="auto", auto=auto)
    monitor = Monitor(model, lawn or opt, root=root, name="onset", total_steps=steps, probe_config=NO_CURVATURE)
    if lawn is not None:
        lawn.monitor = monitor
    for _ in range(steps):
        idx = torch.randint(0, 256, (32,), generator=g)
        xb, yb = x[idx], y[idx]
        if noise:
            yb = torch.where(torch.rand(32, generator=g) < noise, torch.randint(0, 4, (32,), generator=g), yb)
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        (lawn or opt).zero_grad()
        loss.backward()
        (lawn or opt).step()
        monitor.step(loss=loss.detach(), logits=logits.detach(), targets=yb)
    monitor.close("finished")
    flat = RunStore(root).series(monitor.run_id, "flat_frac", points=None)
    return lawn, flat.set_index("step")["value"].rolling(10).mean()


ONSET_RULES = {
    "flat_frac": AutoSwitch(max_steps=140, window=5, min_steps=10, threshold=0.05, patience=3),
    "logit_growth": AutoSwitch(max_steps=140, window=5, min_steps=10, rule="logit_growth", acc=0.95, growth=1.25),
}


@pytest.mark.slow
def test_onset_rules_fire_before_half_the_batch_is_flat_and_never_without_flattening(tmp_path):
    _, reference = separable(tmp_path / "adam", auto=None)
    half = int(reference[reference >= 0.5].index.min())  # the old rule's moment: half the batch flat
    assert 40 <= half <= 140, half
    for name, auto in ONSET_RULES.items():
        lawn, flat = separable(tmp_path / name, auto=auto)
        switch = lawn.switch_info
        assert switch["rule"] == "auto" and "max_steps" not in switch["reason"], (name, switch)
        assert switch["step"] < half, (name, switch, half)
        assert reference.loc[switch["step"] - 1] < 0.5  # the same run up to the switch: still mostly unflat
        lawn, flat = separable(tmp_path / f"{name}-noise", auto=auto, noise=0.3)
        assert flat.max() < 0.05  # label noise: nothing flattens
        assert "max_steps 140 reached" in lawn.switch_info["reason"], (name, lawn.switch_info)
