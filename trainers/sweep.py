"""Run a small grid: optimizers x LAWN on/off x batch sizes x seeds, one run after another or
N at a time.

    lawn-monitor sweep --dataset digits --model cnn --optimizers sgd,adam --lawn both \
        --batch-sizes 64,256 --seeds 0,1 --epochs 4 --free-epochs 1
    lawn-monitor sweep --recipes 'cifar10-*' --seeds 3 --data-root data
    lawn-monitor sweep --optimizers sgd,adam --lawn both --parallel 4      # all four at once

With ``--recipes`` the grid is every matching recipe (trainers/recipes/, fnmatch) x seeds, and
other flags override the recipes. ``--seeds 3`` means seeds 0, 1, 2; ``--seeds 0,5`` those two.
Every run is a normal ``train`` run in the same store; a run that fails or diverges is recorded
as such and the sweep goes on.

``--parallel 1`` (the default) trains the runs one after another in this process, with their
progress bars. ``--parallel N`` keeps N runs going at once, each its own ``lawn-monitor train``
process with one torch thread (trainers/launch/local.py); ``--nice N`` lowers their CPU
priority, so that a dashboard on the same machine stays quick while they take every core.
``--launcher ray`` and ``--launcher slurm`` hand the runs to a Ray cluster or a Slurm job array
instead (trainers/launch/, docs/cluster.md); ``--parallel`` then caps how many train at once.

Launched again into the same store, a sweep skips the runs that ended and continues the others
from their last checkpoints (``--fresh``: start all anew). Ctrl-C or SIGTERM stops the sweep: no
further run starts, and every run already training ends ``interrupted`` with what it logged
kept; the sweep waits until each has written its status and exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys

from lawn_monitor.cli import OneLineParser

from .config import ConfigError, TrainConfig, add_config_arguments, config_from_flags, given_fields
from .launch import add_launcher_arguments, launch
from .launch.common import project_dir
from .launch.local import (
    check_nice,
    config_argv,  # noqa: F401 - the flags that rebuild a config, for callers of the sweep
)
from .optimizers import OPTIMIZERS
from .recipe import config_from, match_recipes
from .train import check_root

PROJECT_DIR = project_dir()  # holds trainers/ and lawn_monitor/


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def seed_list(text: str) -> list[int]:
    """``3`` -> [0, 1, 2] (a count); ``0,5`` or ``7,`` -> those seeds."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected a count of seeds (3) or a comma-separated list (0,1,2), got {text!r}") from None


seed_list.__name__ = "seeds"


def recipe_grid(pattern: str, given: dict, seeds: list[int]) -> list[TrainConfig]:
    """Every recipe matching ``pattern`` x seeds (seed outermost), flags in ``given`` on top."""
    names = match_recipes(pattern)
    return [config_from({**given, "seed": seed}, name).resolved() for seed in seeds for name in names]


def grid(
    base: TrainConfig, optimizers: list[str], lawn: str, batch_sizes: list[int], seeds: list[int]
) -> list[TrainConfig]:
    """The sweep's configs, in the order they run (seed outermost, so a partial sweep covers all methods)."""
    for name in optimizers:
        if name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {name!r} in --optimizers: choose from {', '.join(OPTIMIZERS)}")
    lawn_values = {"both": [False, True], "on": [True], "off": [False]}[lawn]
    configs = []
    for seed, batch_size, name, use_lawn in itertools.product(seeds, batch_sizes, optimizers, lawn_values):
        cfg = dataclasses.replace(base, optimizer=name, lawn=use_lawn, batch_size=batch_size, seed=seed, name=None)
        configs.append(cfg.resolved())  # validate every cell before the first run starts
    return configs


def build_parser(prog: str = "lawn-monitor sweep") -> OneLineParser:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes",
        help="run the recipes matching this pattern, e.g. 'cifar10-*' or 'cpu-*' "
        "(instead of --optimizers/--lawn/--batch-sizes)",
    )
    parser.add_argument("--optimizers", type=_csv(str), help="comma-separated (default: sgd,adam)")
    # dest lawn_mode: "lawn" is a TrainConfig field, and given_fields() must not mistake this for it.
    parser.add_argument(
        "--lawn", dest="lawn_mode", choices=("both", "on", "off"), help="LAWN off, on, or both (default)"
    )
    parser.add_argument("--batch-sizes", type=_csv(int), help="comma-separated (default: 64)")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=[0],
        help="a count (3: seeds 0,1,2) or a comma-separated list (default: seed 0)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="train N runs at once (local: one process and one torch thread each; default 1, "
        "one after another in this process; ray, slurm: at most N at once, default all)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="local: lower the runs' CPU priority by N (Unix nice, 1-19) so that a dashboard on the same "
        "machine answers while they train (make demo: 10; default 0)",
    )
    add_launcher_arguments(parser)
    add_config_arguments(parser, skip=("optimizer", "lawn", "batch_size", "seed", "name", "recipe", "resume"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.parallel is not None and args.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1 (runs at once), got {args.parallel}")
        check_nice(args.nice, args.launcher)
        if args.recipes:
            grid_flags = [
                f
                for f, v in (
                    ("--optimizers", args.optimizers),
                    ("--lawn", args.lawn_mode),
                    ("--batch-sizes", args.batch_sizes),
                )
                if v is not None
            ]
            if grid_flags:
                raise ConfigError(f"{', '.join(grid_flags)} cannot be combined with --recipes: the recipes set them")
            configs = recipe_grid(args.recipes, given_fields(args), args.seeds)
        else:
            configs = grid(
                config_from_flags(given_fields(args)),
                args.optimizers or ["sgd", "adam"],
                args.lawn_mode or "both",
                args.batch_sizes or [64],
                args.seeds,
            )
        root = check_root(configs[0].root)
        configs = [dataclasses.replace(cfg, root=root) for cfg in configs]
        parallel = None if args.parallel is None else min(args.parallel, len(configs))
        if args.launcher == "local" and (parallel or 1) == 1:
            print(f"sweep: {len(configs)} runs", flush=True)
        outcomes, code = launch(configs, args, parallel)
    except ConfigError as exc:
        print(f"lawn-monitor sweep: error: {exc}", file=sys.stderr)
        return 2
    if outcomes:
        width = max(len(o.name) for o in outcomes)
        for o in outcomes:
            acc = "n/a" if o.test_acc is None else f"{o.test_acc:.4f}"
            print(f"  {o.name:<{width}}  {o.status:<11} test_acc={acc}" + (f"  {o.run_dir}" if o.run_dir else ""))
    if code is not None:
        return code
    return 0 if all(o.status == "finished" for o in outcomes) else 3


if __name__ == "__main__":
    sys.exit(main())
