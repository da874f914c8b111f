"""Recipes: every file parses into a valid config; recipes under flags; sweeps over patterns; LAMB."""

import math

import pytest
import torch

from lawn_monitor import LAWN
from lawn_monitor.optim import make_optimizer
from lawn_monitor.paper import method_name, paper_accuracy
from lawn_monitor_trainers.config import DATASETS, MODELS, ConfigError, TrainConfig, given_fields
from lawn_monitor_trainers.optimizers import OPTIMIZERS
from lawn_monitor_trainers.recipe import RECIPE_DIR, load_recipe, match_recipes, paper_value, recipe_names, recipe_why
from lawn_monitor_trainers.sweep import build_parser as sweep_parser
from lawn_monitor_trainers.sweep import recipe_grid, seed_list
from lawn_monitor_trainers.train import build_parser, config_for_cli

TABLE2 = [
    f"{d}-{m}-{b}"
    for d in ("cifar10", "cifar100")
    for m in ("sgd", "sgd-lawn", "adam", "adam-lawn")
    for b in ("b256", "b4k", "b10k")
]
TABLE2 += [f"imagenet-{m}-{b}" for m in ("sgd", "sgd-lawn", "adam", "adam-lawn") for b in ("b256", "b16k")]
TABLE1 = [f"{d}-adamp-{b}" for d in ("cifar10", "cifar100") for b in ("b256", "b10k")]


def test_every_table_cell_has_a_recipe():
    assert set(TABLE2 + TABLE1) <= set(recipe_names())
    cpu = [n for n in recipe_names() if n.startswith("cpu-")]
    methods = {n.split("-", 2)[2].rsplit("-b", 1)[0] for n in cpu}
    assert methods == {"sgd", "sgd-lawn", "adam", "adam-lawn"}
    for dataset in ("mnist", "digits", "mnist1d"):
        assert len([n for n in cpu if n.startswith(f"cpu-{dataset}-")]) == 8  # 4 methods x 2 batch sizes


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_parses_and_names_known_things(name):
    values = load_recipe(name)
    assert values["dataset"] in DATASETS and values["model"] in MODELS
    assert values["optimizer"] in OPTIMIZERS
    cfg = TrainConfig(**values, recipe=name).resolved()  # every check of the config passes
    assert cfg.name == f"{name}-s0"
    if name in TABLE2 + TABLE1:
        assert paper_value(name)["table"] == ("Table 1" if name in TABLE1 else "Table 2")
        accuracy = paper_accuracy(
            values["dataset"], method_name(values["optimizer"], values["lawn"]), values["batch_size"]
        )
        assert 60 < accuracy < 100  # the cell is one the paper reports (lawn_monitor.paper, the one copy)
        assert cfg.lawn == ("-lawn-" in name)
        assert cfg.batch_size == {"b256": 256, "b4k": 4096, "b10k": 10000, "b16k": 16384}[name.rsplit("-", 1)[1]]
        assert cfg.epochs == (90 if name.startswith("imagenet") else 300)
        assert cfg.model == ("resnet50" if name.startswith("imagenet") else "vgg19")


@pytest.mark.parametrize("name", recipe_names())
def test_every_setting_says_why(name):
    """Each setting is the paper's stated one ("paper", "paper: ...") or carries its reason."""
    values, why = load_recipe(name), recipe_why(name)
    assert set(why) == set(values), f"{name}: [why] must cover exactly its settings"
    for key, reason in why.items():
        assert isinstance(reason, str) and reason.strip(), f"{name}: {key} has an empty why"
        if not (reason == "paper" or reason.startswith("paper: ")):
            assert reason.startswith(("ours", "not a training setting")) and len(reason.split()) >= 3, (
                f"{name}: {key}: a deviation or unstated value needs its reason, got {reason!r}"
            )


SMALL_BATCH = {"cifar10": 256, "cifar100": 256, "imagenet": 256, "digits": 32, "mnist": 256, "mnist1d": 64}


@pytest.mark.parametrize("name", recipe_names())
def test_recipes_follow_the_papers_rules(name):
    """Free phase under 10 epochs; no weight decay in a LAWN free phase except SGD-LAWN's; a
    warm-up in every baseline (2-phase) and after every switch (3-phase); and no run at a large
    batch starts at its full LR at step 0."""
    r, why = load_recipe(name), recipe_why(name)
    assert r["warmup_epochs"] > 0
    if r["lawn"]:
        assert 0 < r["free_epochs"] < 10 and r["free_epochs"] <= r["epochs"] / 5
        if r["optimizer"] == "sgd":
            assert r["weight_decay"] > 0 and "keeps SGD-LAWN's tuned weight decay" in why["weight_decay"]
        else:
            assert r["weight_decay"] == 0 and why["weight_decay"].startswith("paper")
        assert r["lawn_params"] in ("ndim2", "homogeneous")
    large = r["batch_size"] > SMALL_BATCH[r["dataset"]]
    first_warmup = r.get("free_warmup_epochs", 0.0) if r["lawn"] else r["warmup_epochs"]
    assert first_warmup > 0 or not large, f"{name} starts at a large batch's full LR ({r['lr']:g}) at step 0"
    assert first_warmup <= r.get("free_epochs", r["epochs"])


def test_large_batch_lr_follows_the_scaling_rule():
    sgd, sgd_10k = load_recipe("cifar10-sgd-b256"), load_recipe("cifar10-sgd-b10k")
    assert sgd_10k["lr"] == pytest.approx(sgd["lr"] * 10000 / 256)  # linear for SGD
    adam, adam_10k = load_recipe("cifar10-adam-b256"), load_recipe("cifar10-adam-b10k")
    assert adam_10k["lr"] == pytest.approx(adam["lr"] * math.sqrt(10000 / 256), rel=1e-4)  # square root for Adam
    assert sgd["warmup_epochs"] > 0 and sgd_10k["warmup_epochs"] > 0  # the paper's 2-phase schedule
    assert load_recipe("cifar10-adam-lawn-b4k")["free_epochs"] > 0


def test_flags_override_the_recipe():
    args = build_parser().parse_args(["--recipe", "cifar10-adam-lawn-b256", "--epochs", "3", "--lr", "0.5"])
    cfg = config_for_cli(given_fields(args))
    assert (cfg.dataset, cfg.model, cfg.optimizer, cfg.lawn) == ("cifar10", "vgg19", "adam", True)
    assert cfg.epochs == 3 and cfg.lr == 0.5 and cfg.batch_size == 256 and cfg.recipe == "cifar10-adam-lawn-b256"


def test_bad_recipes_are_one_line_errors(tmp_path, monkeypatch, capsys):
    from lawn_monitor_trainers.train import main

    assert main(["--recipe", "cifar10-adam-b999", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no recipe 'cifar10-adam-b999'" in err and "cifar10-adam-b256" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "recipes"
    bad.mkdir()
    (bad / "typo.toml").write_text('dataset = "cifar10"\nlearning_rate = 0.1\n')
    (bad / "wrongtype.toml").write_text('dataset = "cifar10"\nepochs = "ten"\n')
    (bad / "choice.toml").write_text('dataset = "cifar11"\n')
    monkeypatch.setattr("lawn_monitor_trainers.recipe.RECIPE_DIR", bad)
    for name, message in [
        ("typo", "unknown or not allowed key 'learning_rate'"),
        ("wrongtype", "epochs = 'ten'"),
        ("choice", "'cifar11' is not one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_recipe(name)


def test_sweep_matches_recipes_by_pattern():
    names = match_recipes("cifar10-*")
    assert names and all(n.startswith("cifar10-") for n in names)  # not cifar100-*
    configs = recipe_grid("cpu-digits-*", {"epochs": 5}, seeds=[0, 1])
    assert len(configs) == 16 and {c.epochs for c in configs} == {5}
    assert configs[0].seed == 0 and configs[-1].seed == 1  # seeds outermost
    assert len({c.name for c in configs}) == 16
    with pytest.raises(ConfigError, match="no recipe matches 'cifar7-\\*'"):
        match_recipes("cifar7-*")
    assert seed_list("3") == [0, 1, 2] and seed_list("4,9") == [4, 9] and seed_list("7,") == [7]
    args = sweep_parser().parse_args(["--recipes", "cpu-mnist-*", "--seeds", "2", "--epochs", "4"])
    assert args.seeds == [0, 1]
    configs = recipe_grid(args.recipes, given_fields(args), args.seeds)  # as `lawn-monitor sweep` builds them
    assert len(configs) == 16 and all(c.epochs == 4 for c in configs)
    for c in configs:  # the recipe's own values hold where no flag was given
        assert c.lawn == ("-lawn-" in c.recipe) and c.optimizer == c.recipe.split("-")[2]
        assert c.batch_size == int(c.recipe.rsplit("-b", 1)[1]) and c.dataset == "mnist"


def test_sweep_rejects_grid_flags_with_recipes(capsys, tmp_path):
    from lawn_monitor_trainers.sweep import main

    assert main(["--recipes", "cpu-*", "--optimizers", "sgd", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--optimizers cannot be combined with --recipes" in err and len(err.strip().splitlines()) == 1


def test_lamb_steps_by_trust_ratio_and_wraps_in_lawn():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5))
    opt = make_optimizer("lamb", [w], lr=0.01, weight_decay=0.1)
    w0 = w.detach().clone()
    w.grad = torch.randn(6, 5)
    opt.step()
    # LAMB's first step (You et al. 2020, Alg. 2): m/sqrt(v) after bias correction is sign(g) (up
    # to eps); r = that + wd * w; the step is lr * |w| / |r| * r.
    r = w.grad.sign() + 0.1 * w0
    expected = w0 - 0.01 * (w0.norm() / r.norm()) * r
    torch.testing.assert_close(w.detach(), expected, rtol=1e-4, atol=1e-5)
    lawn = make_optimizer("lamb", [w], lr=0.01, weight_decay=0.1, lawn=True, free_steps=1)
    assert isinstance(lawn, LAWN)
    for _ in range(3):
        w.grad = torch.randn(6, 5)
        lawn.step()
    assert lawn.phase == "constrained" and lawn.param_groups[0]["weight_decay"] == 0.0
    assert float(w.norm()) == pytest.approx(float(lawn.targets[0]), rel=1e-5)
    assert RECIPE_DIR.joinpath("imagenet-lamb-lawn-b16k.toml").is_file()
