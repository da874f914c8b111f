"""Launchers: who runs a sweep's (or a study's) runs. ``local`` (this machine: in this process,
or ``--parallel N`` processes), ``ray`` (Ray tasks on a Ray cluster) and ``slurm`` (a Slurm job
array through submitit). A launcher never changes what a run writes: the same run names, configs
and store layout whichever runs it.

Every launcher continues a sweep that was launched before into the same store: runs that ended
(``finished``, ``diverged``) are skipped, the others continue from their last checkpoint
(``--fresh`` starts every run anew). Only the launcher chosen is imported: the core and the local
launcher never import ray or submitit.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from dataclasses import dataclass

from ..config import ConfigError, TrainConfig
from .common import Job, Outcome, plan

LAUNCHERS = ("local", "ray", "slurm")
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # launcher -> (module, pip extra)
CLUSTER_KEYS = {"gpus": int, "cpus": int, "time": (int, str), "partition": str}


@dataclass(frozen=True)
class Resources:
    """What one run asks of its worker."""

    gpus: int = 0
    cpus: int = 1
    minutes: int | None = None  # Slurm's time limit
    partition: str | None = None


def add_launcher_arguments(parser: argparse.ArgumentParser, sweep: bool = True) -> None:
    """The launcher's flags (``sweep``: also ``--fresh``; a study has its own way to carry on)."""
    group = parser.add_argument_group("launcher (where the runs train: see docs/cluster.md)")
    group.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: this machine (default); ray: Ray tasks; slurm: a Slurm job array through submitit",
    )
    if sweep:
        group.add_argument(
            "--fresh",
            action="store_true",
            help="start every run anew (default: skip the runs the store has ended, continue the stopped ones)",
        )
    group.add_argument(
        "--gpus-per-run", type=int, metavar="N", help="ray, slurm: GPUs each run holds (default 0, or the recipe's)"
    )
    group.add_argument(
        "--cpus-per-run", type=int, metavar="N", help="ray, slurm: CPUs each run holds (default 1, or the recipe's)"
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="ray: the cluster to join (host:port, or auto); default: a Ray instance started here",
    )
    group.add_argument(
        "--slurm-partition", metavar="NAME", help="slurm: the partition (default: the cluster's, or the recipe's)"
    )
    group.add_argument(
        "--slurm-time", metavar="TIME", help="slurm: time limit per run, minutes (90) or [D-]H:MM:SS (default 60)"
    )
    group.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm: any other sbatch option, e.g. account=abc (repeatable)",
    )
    group.add_argument(
        "--slurm-folder", default="slurm-logs", metavar="DIR", help="slurm: submitit's logs (default ./slurm-logs)"
    )
    group.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local"),
        default="slurm",
        help="slurm: 'local' runs the array's tasks as processes here through submitit (a dry run of the path)",
    )


def minutes(text: str | int | None) -> int | None:
    """``90`` -> 90; ``1:30:00`` -> 90; ``2-00:00:00`` (days) -> 2880."""
    if text is None:
        return None
    if isinstance(text, int):
        return text
    try:
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 1:
            return int(days or 0) * 1440 + parts[0]
        h, m, s = ([0] * (3 - len(parts)) + parts)[-3:]
        return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)
    except ValueError:
        raise ValueError(f"expected minutes (90) or [D-]H:MM:SS (1:30:00), got {text!r}") from None


minutes.__name__ = "time limit"


def _recipe_cluster(cfg: TrainConfig) -> dict:
    """The ``[cluster]`` table of the run's recipe, checked (ConfigError)."""
    if not cfg.recipe:
        return {}
    from ..recipe import _read, recipe_path

    table = _read(recipe_path(cfg.recipe)).get("cluster", {})
    for key, value in table.items():
        kind = CLUSTER_KEYS.get(key)
        if kind is None or not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(
                f"recipe {cfg.recipe}: [cluster] {key} = {value!r}: keys are gpus and cpus (int), "
                f"time (minutes or 'H:MM:SS') and partition (text)"
            )
    return table


def resources(configs: list[TrainConfig], args: argparse.Namespace) -> dict[int, Resources]:
    """Each run's resources: the flags, else its recipe's ``[cluster]`` table, else the defaults."""
    out = {}
    for i, cfg in enumerate(configs):
        table = _recipe_cluster(cfg)
        gpus = args.gpus_per_run if args.gpus_per_run is not None else table.get("gpus", 0)
        cpus = args.cpus_per_run if args.cpus_per_run is not None else table.get("cpus", 1)
        if gpus < 0 or cpus < 1:
            raise ConfigError(f"--gpus-per-run must be >= 0 and --cpus-per-run >= 1, got {gpus} and {cpus}")
        try:
            limit = minutes(args.slurm_time if args.slurm_time is not None else table.get("time", 60))
        except ValueError as exc:
            raise ConfigError(f"--slurm-time: {exc}") from None
        out[i] = Resources(gpus, cpus, limit, args.slurm_partition or table.get("partition"))
    return out


def _options(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise ConfigError(f"--slurm-option {bad[0]!r}: expected KEY=VALUE, e.g. account=abc")
    return dict(p.split("=", 1) for p in pairs)


def check_available(launcher: str) -> None:
    """ConfigError naming the extra to install when the launcher's engine is missing."""
    if launcher not in EXTRAS:
        return
    module, extra = EXTRAS[launcher]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--launcher {launcher} needs {module}: pip install 'lawn-monitor[{extra}]'") from None


def launch(
    configs: list[TrainConfig], args: argparse.Namespace, parallel: int | None
) -> tuple[list[Outcome], int | None]:
    """Plan (skip ended runs, continue stopped ones), then hand the jobs to the launcher chosen.
    Returns one outcome per config, in order, and the exit code if the launch stopped early."""
    root = configs[0].root
    check_available(args.launcher)
    res = resources(configs, args) if args.launcher != "local" else {}
    options = _options(args.slurm_option)
    jobs, outcomes, notes = plan(configs, root, fresh=args.fresh)
    for line in notes:
        print(line, flush=True)
    code = None
    if jobs and args.launcher == "local":
        from . import local

        done, code = local.launch(jobs, parallel or 1, getattr(args, "nice", 0))
        outcomes.update(done)
    elif jobs:
        jobs = [_for_worker(job, res[job.index]) for job in jobs]
        if args.launcher == "ray":
            from . import on_ray

            done, code = on_ray.launch(jobs, root, args.ray_address, res, parallel)
        else:
            from . import on_slurm

            cluster = None if args.slurm_cluster == "slurm" else args.slurm_cluster
            done, code = on_slurm.launch(jobs, root, res, cluster, args.slurm_folder, parallel, options)
        outcomes.update(done)
    return [outcomes.get(i, Outcome(cfg.name, "not started")) for i, cfg in enumerate(configs)], code


def _for_worker(job: Job, res: Resources) -> Job:
    """No progress bar (nobody sees a worker's terminal); torch threads = the CPUs it holds."""
    cfg = dataclasses.replace(job.cfg, progress=False, threads=job.cfg.threads or res.cpus)
    return dataclasses.replace(job, cfg=cfg)
