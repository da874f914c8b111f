"""``--launcher slurm``: the runs as a Slurm job array through submitit, each array task one run.

``--slurm-partition``, ``--slurm-time`` (minutes, or ``H:MM:SS``), ``--gpus-per-run`` and
``--cpus-per-run`` come from the flags, else from the recipes' ``[cluster]`` table (``gpus``,
``cpus``, ``time``, ``partition``); runs that ask for different resources go in separate arrays.
``--slurm-option KEY=VALUE`` passes any other ``sbatch`` option (``account=abc``, ``qos=high``).
submitit writes each task's log and pickles under ``--slurm-folder``; it must be on a file system
the compute nodes share (Slurm's working directory is too), and so must the store's root, or it
is ``s3://``.

The launcher stays attached: it prints where each run started and how it ended. Ctrl-C (or
SIGTERM) cancels the array (``scancel``): tasks not started are dropped, running ones get
SIGTERM and end their run ``interrupted``. A task that Slurm kills (time limit past its grace,
node failure) leaves its run ``stale``; the next launch continues it from its last checkpoint.
``--slurm-cluster local`` runs the same path with submitit's local executor (processes on this
machine), to try a sweep before sending it to the queue.
"""

from __future__ import annotations

import os
import time
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError

from . import Resources
from .common import Job, Outcome, Stop, Watch, run_one


class SlurmSweep:
    def __init__(self, jobs: list[Job], root: str, executor: submitit.Executor, groups: dict[tuple, list[Job]]):
        self.watch = Watch(root, jobs)
        self.executor = executor
        self.groups = groups
        self.flight: dict[Any, Job] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.stop = Stop()
        self.cancelled_at: float | None = None

    def submit(self, params: dict) -> None:
        for res, jobs in self.groups.items():
            self.executor.update_parameters(
                gpus_per_node=res.gpus,
                cpus_per_task=res.cpus,
                timeout_min=res.minutes,
                slurm_partition=res.partition,
                **params,
            )
            with self.executor.batch():  # one job array
                submitted = [self.executor.submit(run_one, job.cfg, True) for job in jobs]
            for sub, job in zip(submitted, jobs, strict=True):
                self.flight[sub], job.started = job, time.monotonic()
            ids = sorted({str(s.job_id).split("_")[0] for s in submitted})
            self.watch.say(
                f"sweep: job array {', '.join(ids)}: {len(jobs)} runs, {res.gpus} GPUs and {res.cpus} CPUs each"
            )

    def collect(self, sub: Any) -> None:
        job = self.flight.pop(sub)
        try:
            self.outcomes[job.index] = self.watch.ended(job, sub.result())
        except UncompletedJobError as exc:
            state = getattr(sub, "state", "?")
            lost = "cancelled before it started" if state.startswith("CANCELLED") and not job.announced else None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.outcomes[job.index] = self.watch.ended(job, None, lost or f"its task ended {state}: {first}")

    def cancel(self) -> None:
        if self.cancelled_at is not None:
            return
        self.cancelled_at = time.monotonic()
        self.watch.say(
            f"sweep: cancelling {len(self.flight)} array tasks (running runs end 'interrupted', what they logged kept)",
            err=True,
        )
        for sub in self.flight:
            sub.cancel(check=False)

    def run(self, params: dict) -> tuple[dict[int, Outcome], int | None]:
        with self.stop:
            self.submit(params)
            while self.flight:
                for sub in [s for s in self.flight if s.done()]:
                    self.collect(sub)
                self.watch.poll(list(self.flight.values()))
                if self.stop.signum is not None:
                    self.cancel()
                time.sleep(0.5)
        return self.outcomes, self.stop.code


def launch(
    jobs: list[Job],
    root: str,
    resources: dict[int, Resources],
    cluster: str | None,
    folder: str,
    parallel: int | None,
    options: dict[str, str],
) -> tuple[dict[int, Outcome], int | None]:
    """``resources``: what each job asks for, by its grid place; one job array per kind."""
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"), cluster=cluster)
    groups: dict[Resources, list[Job]] = {}
    for job in jobs:
        groups.setdefault(resources[job.index], []).append(job)
    params: dict[str, Any] = {"name": "lawn-monitor-sweep"}
    if executor.cluster == "slurm":
        params["slurm_additional_parameters"] = options
        if parallel:
            params["slurm_array_parallelism"] = parallel
    print(f"sweep: {len(jobs)} runs through submitit ({executor.cluster}), logs in {folder}", flush=True)
    return SlurmSweep(jobs, root, executor, groups).run(params)
