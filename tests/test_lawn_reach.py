"""What LAWN constrains (``params``: ``ndim2``, ``homogeneous``, ``all``), on the trainer's BatchNorm
CNN (``cnn_bn``): each choice holds exactly the tensors it names at their norms from the switch, after
every constrained step, and leaves every other tensor free to move."""

import pytest
import torch
from torch import nn

from lawn_monitor import LAWN
from lawn_monitor.optim import PARAM_CHOICES
from trainers.models import SmallCNN, build_model


def expected(model: SmallCNN, choice: str) -> set[str]:
    names = dict(model.named_parameters())
    if choice == "ndim2":  # every conv and linear weight
        return {n for n, p in names.items() if p.ndim >= 2}
    if choice == "homogeneous":  # the last BatchNorm's scale, and the classifier's weight after it
        last_bn = max(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
        return {f"{last_bn}.weight", "classifier.weight"}
    return set(names)  # all: weights, biases, BatchNorm scales and shifts


@pytest.mark.parametrize("choice", PARAM_CHOICES)
def test_each_choice_holds_exactly_the_tensors_it_names(choice):
    torch.manual_seed(0)
    model = build_model("cnn_bn", (1, 8, 8), 10)
    assert isinstance(model, SmallCNN) and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    # Adam with a large LR and weight decay: every tensor's norm moves each step unless held.
    opt = LAWN(
        torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.1), free_steps=3, params=choice, model=model
    )
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in opt.constrained_params()} == expected(model, choice)
    norms = []
    for _ in range(7):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        norms.append({n: float(p.detach().norm()) for n, p in model.named_parameters()})
    targets = dict(zip((names[id(p)] for p in opt.constrained_params()), opt.targets.tolist()))
    after = norms[3:]  # the 4 constrained steps
    for name in names.values():
        if name in targets:
            assert all(step[name] == pytest.approx(targets[name], rel=1e-5, abs=1e-7) for step in after), name
        else:
            assert max(abs(step[name] - after[0][name]) for step in after) > 1e-4 * max(after[0][name], 1.0), name


def test_cnn_bn_is_the_cnn_with_batchnorm_and_needs_images():
    plain, bn = build_model("cnn", (1, 28, 28), 10), build_model("cnn_bn", (1, 28, 28), 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3
    assert bn(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="--model cnn_bn needs images"):
        build_model("cnn_bn", (40,), 10, "mnist1d")
