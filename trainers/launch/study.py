"""``lawn-monitor tune --launcher ray|slurm``: a study's workers as Ray tasks or Slurm array
tasks, all on one Optuna storage (a database URL every machine reaches; SQLite for one machine).

Each worker runs trials one after another (trainers/tune.py ``tune`` with one process) until the
study holds ``--trials`` finished ones; ``--parallel N`` starts N workers, so adding machines
adds trials in flight. Every trial is a normal run in the store, tagged with ``study`` and
``trial``. The launching terminal gets one line per trial, read from the storage: where it
started (host, pid) and how it ended. Ctrl-C cancels the workers: each trial training ends its
run ``interrupted`` and its trial is queued again with the same parameters by the next launch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import time
from typing import Any

from ..config import TrainConfig
from ..train import USER_ERRORS
from . import Resources, check_available, resources
from .common import Stop, worker_signals


def study_worker(
    base: TrainConfig, method: str, options: dict[str, Any], worker: int, catch_signals: bool
) -> dict[str, Any]:
    """One worker of the study, on its machine: trials until the study is full."""
    from ..tune import tune

    where = {"host": socket.gethostname(), "pid": os.getpid(), "worker": worker}
    try:
        with worker_signals(catch_signals):
            tune(base, method, parallel=1, worker=worker, **options)
    except USER_ERRORS as exc:
        return {**where, "status": "error", "error": str(exc)}
    except KeyboardInterrupt:
        return {**where, "status": "interrupted"}
    except Exception as exc:  # noqa: BLE001 - the trial's traceback is in its run.json
        return {**where, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {**where, "status": "done"}


class TrialWatch:
    """One line per trial on the launching terminal, read from the study's storage."""

    def __init__(self, study: Any) -> None:
        self.study = study
        self.said: dict[int, str] = {}

    def poll(self) -> None:
        from optuna.trial import TrialState

        for trial in self.study.get_trials(deepcopy=False):
            attrs, state = trial.user_attrs, trial.state
            if "pid" not in attrs:  # not set up yet (the objective sets host, then pid)
                continue
            if trial.number not in self.said and (state == TrialState.RUNNING or state.is_finished()):
                self.said[trial.number] = "started"  # also for a trial that ran between two looks
                print(f"trial {trial.number}: started on {attrs.get('host', '?')} (pid {attrs['pid']})", flush=True)
            if state.is_finished() and self.said.get(trial.number) != "ended":
                self.said[trial.number] = "ended"
                value = "" if trial.value is None else f", val_acc {trial.value:.4f}"
                run = f", run {attrs['run_id']}" if attrs.get("run_id") else ""
                print(f"trial {trial.number}: {state.name.lower()} on {attrs['host']}{value}{run}", flush=True)


def _on_ray(workers: list[tuple], res: Resources, address: str | None, watch: TrialWatch, stop: Stop) -> list[dict]:
    import ray

    from .on_ray import connect

    with connect(address):
        task = ray.remote(max_retries=0)(study_worker).options(num_cpus=res.cpus, num_gpus=res.gpus)
        refs = [task.remote(*w, False) for w in workers]
        results, cancelled = [], False
        while refs:
            ready, refs = ray.wait(refs, num_returns=1, timeout=0.5)
            for ref in ready:
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayError as exc:
                    results.append({"status": "lost", "error": type(exc).__name__})
            watch.poll()
            if stop.signum is not None and not cancelled:
                cancelled = True
                for ref in refs:
                    ray.cancel(ref)
        return results


def _on_slurm(workers: list[tuple], res: Resources, args: argparse.Namespace, watch: TrialWatch, stop: Stop) -> list:
    import submitit
    from submitit.core.utils import UncompletedJobError

    cluster = None if args.slurm_cluster == "slurm" else args.slurm_cluster
    executor = submitit.AutoExecutor(folder=os.path.join(args.slurm_folder, "%j"), cluster=cluster)
    executor.update_parameters(
        name="lawn-monitor-tune",
        gpus_per_node=res.gpus,
        cpus_per_task=res.cpus,
        timeout_min=res.minutes,
        slurm_partition=res.partition,
    )
    with executor.batch():
        subs = [executor.submit(study_worker, *w, True) for w in workers]
    results, cancelled = [], False
    while subs:
        for sub in [s for s in subs if s.done()]:
            subs.remove(sub)
            try:
                results.append(sub.result())
            except UncompletedJobError as exc:
                results.append({"status": "lost", "error": str(exc).strip().splitlines()[0]})
        watch.poll()
        if stop.signum is not None and not cancelled:
            cancelled = True
            for sub in subs:
                sub.cancel(check=False)
        time.sleep(0.5)
    return results


def launch_study(base: TrainConfig, method: str, args: argparse.Namespace, root: str) -> int:
    """``lawn-monitor tune`` through Ray or Slurm; returns the exit code."""
    from ..tune import load, open_study, show, storage_url, study_name

    check_available(args.launcher)
    base = dataclasses.replace(base, root=root, progress=False)
    res = resources([base], args)[0]
    base = dataclasses.replace(base, threads=base.threads or res.cpus)
    name = args.study or study_name(base, method)
    url = storage_url(root, args.storage)
    open_study(name, url, base, method)  # made once here, checked against its settings, before any worker
    workers = max(1, args.parallel)
    options = {"trials": args.trials, "root": root, "study": name, "storage": url, "pruner": args.pruner}
    options["seed"] = args.sampler_seed
    jobs = [(base, method, options, i) for i in range(workers)]
    print(
        f"tune: study {name!r} in {url}: {workers} workers on {args.launcher}, up to {args.trials} trials", flush=True
    )
    watch = TrialWatch(load(name, url))
    with Stop() as stop:
        if args.launcher == "ray":
            results = _on_ray(jobs, res, args.ray_address, watch, stop)
        else:
            results = _on_slurm(jobs, res, args, watch, stop)
        watch.poll()
    for r in sorted(results, key=lambda r: r.get("worker", -1)):
        error = f": {r['error']}" if r.get("error") else ""
        print(f"worker {r.get('worker', '?')}: {r['status']} on {r.get('host', '?')}{error}", flush=True)
    if stop.code is not None:
        print("tune interrupted: run the same command again to carry on", file=sys.stderr)
        return stop.code
    show(root, args.storage, name)
    return 0 if all(r["status"] == "done" for r in results) else 1
