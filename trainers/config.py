"""The training configuration: one typed dataclass, turned into the command line and saved whole
with every run (``run.json`` -> ``config``), so that any run can be rerun from its record."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from lawn_monitor.optim import OPTIMIZERS

DATASETS = ("digits", "mnist1d", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")
MODELS = ("cnn", "mlp", "vgg19", "resnet18", "resnet50")


class ConfigError(ValueError):
    """A bad combination of options; its message is the one line the user sees."""


def _defaults(attr: str) -> str:
    """``sgd 0.1, adam 0.003, ...``: the optimizers' defaults for --help."""
    return ", ".join(f"{name} {getattr(spec, attr):g}" for name, spec in OPTIMIZERS.items())


def _opt(help: str, **kw) -> Any:
    return field(metadata={"help": help, **kw.pop("meta", {})}, **kw)


@dataclass
class TrainConfig:
    dataset: str = _opt("data set", default="digits", meta={"choices": DATASETS})
    model: str = _opt("model: cnn (28x28 or 8x8 images), mlp (anything, flattened), vgg19 (32x32 RGB)",
                      default="cnn", meta={"choices": MODELS})
    optimizer: str = _opt("inner optimizer", default="adam", meta={"choices": tuple(OPTIMIZERS)})
    lawn: bool = _opt("wrap the optimizer in LAWN (constrain weight norms after the free phase)", default=False)
    free_epochs: float = _opt("epochs of the free phase before LAWN freezes the norms", default=1.0)
    epochs: int = _opt("training epochs", default=10)
    batch_size: int = _opt("global batch size (samples per optimizer step)", default=64)
    lr: float | None = _opt("peak learning rate (default: the optimizer's, " + _defaults("lr") + ")", default=None)
    weight_decay: float | None = _opt("weight decay in the free phase (LAWN turns it off at the switch); default: the "
                                      "optimizer's, " + _defaults("weight_decay"), default=None)
    momentum: float = _opt("SGD momentum", default=0.9)
    warmup_epochs: float = _opt("LR warm-up epochs (after the switch for LAWN, from step 0 otherwise)", default=0.0)
    decay: str = _opt("LR decay after warm-up", default="cosine", meta={"choices": ("cosine", "linear", "none")})
    tangent: bool = _opt("LAWN: remove the radial gradient component in the constrained phase", default=False)
    reset_moments: bool = _opt("LAWN: reset the inner optimizer's moments at the switch", default=False)
    seed: int = _opt("random seed (weights, data order)", default=0)
    data_root: str = _opt("folder with torchvision-layout data (mnist, cifar10, cifar100)", default="data")
    download: bool = _opt("let torchvision download CIFAR when the machine is online", default=False)
    root: str | None = _opt("store root (default: $LAWN_MONITOR_ROOT or ./runs)", default=None)
    name: str | None = _opt("run name (default: made from optimizer, LAWN, batch size, seed)", default=None)
    device: str = _opt("cpu, cuda, cuda:N, or auto (cuda if present); under torchrun each rank takes cuda:LOCAL_RANK",
                       default="auto")
    amp: str = _opt("mixed precision: bf16 autocasts the forward pass (no loss scaling needed), off keeps fp32",
                    default="off", meta={"choices": ("off", "bf16")})
    channels_last: bool = _opt("store conv weights and images NHWC (faster convolutions on recent GPUs)", default=False)
    compile: bool = _opt("torch.compile the model (first steps are slow while it compiles)", default=False)
    workers: int = _opt("DataLoader worker processes per rank (CIFAR on CPU, ImageNet)", default=4)
    threads: int = _opt("torch CPU threads (intra-op); 0 = torch's default, one per core. "
                        "`sweep --parallel N` gives each run 1", default=0)
    recipe: str | None = _opt("start from trainers/recipes/NAME.toml; flags given here override it", default=None)
    resume: str | None = _opt("continue run RUN_ID from its last checkpoint (<root>/RUN_ID/checkpoint.pt)",
                              default=None)
    flush_secs: float = _opt("seconds between metric flushes to Parquet", default=2.0)
    probe_every: int = _opt("cheap probes (norms, update ratios, output stats) every N steps", default=1)
    curvature: bool = _opt("curvature probes (gn_trace, hessian_trace, sharpness)", default=True,
                           meta={"negate": "--no-curvature"})
    probe_size: int = _opt("samples in the fixed probe batch the curvature is measured on (the GN trace and the "
                           "sharpness use the first 16, Hutchinson the first 32)", default=32)
    gn_points: int = _opt("Gauss-Newton trace proxy: points over the run, dense early (held to the budget)",
                          default=32)
    hessian_points: int = _opt("Hutchinson tr(H): points over the run, dense early (held to the budget)", default=3)
    hessian_probes: int = _opt("Rademacher vectors per Hutchinson estimate", default=20)
    sharpness_points: int = _opt("top Hessian eigenvalue: points over the run, dense early (held to the budget)",
                                 default=8)
    curvature_budget: float = _opt("curvature may take at most this fraction of training time (it takes a few "
                                   "percent where steps take tens of ms; short CPU runs use most of it)", default=0.4)
    progress: bool = _opt("show a progress bar", default=True, meta={"negate": "--no-progress"})

    def resolved(self) -> "TrainConfig":
        """Fill optimizer-dependent defaults and check combinations; raises ConfigError."""
        cfg = dataclasses.replace(self)
        if cfg.lr is None:
            cfg.lr = OPTIMIZERS[cfg.optimizer].lr
        if cfg.weight_decay is None:
            cfg.weight_decay = OPTIMIZERS[cfg.optimizer].weight_decay
        if cfg.name is None and cfg.recipe:
            cfg.name = f"{Path(cfg.recipe).name.removesuffix('.toml')}-s{cfg.seed}"  # a path recipe: its file's name
        if cfg.name is None:
            cfg.name = f"{cfg.optimizer}{'-lawn' if cfg.lawn else ''}-b{cfg.batch_size}-s{cfg.seed}"
        checks = [
            (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
            (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
            (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
            (cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}"),
            (cfg.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {cfg.warmup_epochs}"),
            (cfg.flush_secs > 0, f"--flush-secs must be > 0, got {cfg.flush_secs}"),
            (min(cfg.probe_every, cfg.gn_points, cfg.hessian_points, cfg.sharpness_points) >= 1,
             "--probe-every, --gn-points, --hessian-points and --sharpness-points must be >= 1"),
            (cfg.probe_size >= 2, f"--probe-size must be >= 2 (the GN trace's standard error needs two groups), "
                                  f"got {cfg.probe_size}"),
            (cfg.hessian_probes >= 2, f"--hessian-probes must be >= 2 (for a standard error), got {cfg.hessian_probes}"),
            (cfg.curvature_budget > 0, f"--curvature-budget must be > 0, got {cfg.curvature_budget}"),
            (cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}"),
            (cfg.threads >= 0, f"--threads must be >= 0 (0: torch's default), got {cfg.threads}"),
        ]
        if cfg.lawn:
            checks.append((0 <= cfg.free_epochs < cfg.epochs,
                           f"--free-epochs ({cfg.free_epochs:g}) must be >= 0 and less than --epochs "
                           f"({cfg.epochs}): LAWN needs epochs left after the free phase"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return cfg


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong and where to look), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per field. Flags the user does not give stay out of the namespace (the field's
    default is only shown in --help), so that a recipe's values hold unless a flag overrides them."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        if f.type in (bool, "bool"):
            if f.default:
                parser.add_argument(meta["negate"], dest=f.name, action="store_false", help=meta["help"],
                                    default=argparse.SUPPRESS)
            else:
                parser.add_argument(flag, action="store_true", help=meta["help"], default=argparse.SUPPRESS)
            continue
        kind = {"int": int, "float": float, "str": str}[str(f.type).split(" |")[0].strip("'")]
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=meta.get("choices"),
                            metavar=None if "choices" in meta else kind.__name__.upper(),
                            help=meta["help"] if f.default is None else f"{meta['help']} (default: {f.default})")


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the user gave as flags."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    return TrainConfig(**{**given_fields(args), **overrides})
