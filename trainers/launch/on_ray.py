"""``--launcher ray``: each run a Ray task holding ``--cpus-per-run`` CPUs and ``--gpus-per-run``
GPUs, on the cluster at ``--ray-address`` (``ray.init(address=...)``; ``auto`` finds one started
with ``ray start`` on this machine) or, without it, on a Ray instance started here for the sweep.

Ray places the tasks where their CPUs and GPUs are free: adding machines to the cluster adds runs
in flight. Every node needs lawn-monitor installed (the same version) and the store's root
reachable (``s3://`` or a shared file system) with its credentials in the node's environment.

Ctrl-C or SIGTERM: tasks not started yet are cancelled, and ``ray.cancel`` raises
KeyboardInterrupt in each running one, which ends its run ``interrupted``. A task whose worker
dies (node lost, process killed) is not retried: its run shows ``stale`` (its lock stops
beating) and the next launch of the same sweep continues it from its last checkpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from . import Resources
from .common import Job, Outcome, Stop, Watch, run_one

CANCEL_WAIT_S = 300.0  # after Ctrl-C: how long to wait for the running tasks to write their status


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRay:
    """A Ray instance on this machine for one launch: ``ray start --head`` in a session of its
    own, so that a Ctrl-C on the launching terminal (which signals the terminal's whole process
    group) reaches only the launcher, which then stops the runs cleanly, as on a cluster."""

    def __init__(self) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        temp = os.environ.get("RAY_TMPDIR", "/tmp/ray")
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
        argv += ["--node-ip-address", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1]]
        argv += ["--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp]
        self.log = tempfile.TemporaryFile()  # what `ray start` says, shown only if it fails
        # On 127.0.0.1 only, for this launch: no token to share between `ray start` and this process.
        os.environ["RAY_AUTH_MODE"] = "disabled"
        self.proc = subprocess.Popen(argv, start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT)

    def join(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"ray start failed: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                ray.init(address=self.address, log_to_driver=False)
                return
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def stop(self) -> None:
        self.proc.terminate()  # `ray start --block` stops the instance's processes on SIGTERM
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@contextmanager
def connect(address: str | None) -> Iterator[str]:
    """Join the cluster at ``address``, or a Ray instance started here for the launch; yields
    which. A process already joined to Ray (a test, a notebook) stays joined, as it was."""
    if ray.is_initialized():
        yield "the instance this process joined"
        return
    local = None if address else LocalRay()
    try:
        if local is None:
            ray.init(address=address, log_to_driver=False)  # workers' output stays in Ray's logs
        else:
            local.join()
        yield f"cluster {address}" if address else "a local instance"
    finally:
        ray.shutdown()
        if local is not None:
            local.stop()


class RaySweep:
    def __init__(self, jobs: list[Job], root: str, res: dict[int, Resources], parallel: int | None) -> None:
        self.queue = list(jobs)
        self.watch = Watch(root, jobs)
        self.res = res
        self.task = ray.remote(max_retries=0)(run_one)
        self.parallel = parallel or len(jobs)
        self.flight: dict[Any, Job] = {}
        self.outcomes: dict[int, Outcome] = {}
        self.stop = Stop()
        self.cancelled_at: float | None = None

    def submit(self) -> None:
        while self.queue and len(self.flight) < self.parallel and self.stop.signum is None:
            job = self.queue.pop(0)
            res, job.started = self.res[job.index], time.monotonic()
            self.flight[self.task.options(num_cpus=res.cpus, num_gpus=res.gpus).remote(job.cfg)] = job

    def collect(self, ref: Any) -> None:
        job = self.flight.pop(ref)
        try:
            self.outcomes[job.index] = self.watch.ended(job, ray.get(ref))
        except ray.exceptions.TaskCancelledError:
            self.outcomes[job.index] = self.watch.ended(job, None, "cancelled before it started")
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.RayError) as exc:
            self.outcomes[job.index] = self.watch.ended(job, None, f"its worker died: {type(exc).__name__}")

    def cancel(self) -> None:
        if self.cancelled_at is not None:
            if self.stop.repeated:
                self.stop.repeated = False
                names = ", ".join(job.cfg.name for job in self.flight.values())
                self.watch.say(f"sweep: still waiting for {names} to write their status", err=True)
            return
        self.cancelled_at = os.times().elapsed
        self.watch.say(
            f"sweep: stopping {len(self.flight)} runs (each ends 'interrupted', what it logged kept); "
            f"{len(self.queue)} not started",
            err=True,
        )
        for job in self.queue:
            self.outcomes[job.index] = Outcome(job.cfg.name, "not started")
        self.queue = []
        for ref in self.flight:
            ray.cancel(ref)

    def run(self) -> tuple[dict[int, Outcome], int | None]:
        with self.stop:
            while self.queue or self.flight:
                self.submit()
                ready, _ = ray.wait(list(self.flight), num_returns=1, timeout=0.2)
                for ref in ready:
                    self.collect(ref)
                self.watch.poll(list(self.flight.values()))
                if self.stop.signum is not None:
                    self.cancel()
                    if os.times().elapsed - self.cancelled_at > CANCEL_WAIT_S:  # stuck: end their workers
                        self.cancelled_at = float("inf")
                        for ref in self.flight:
                            ray.cancel(ref, force=True)
        return self.outcomes, self.stop.code


def launch(
    jobs: list[Job],
    root: str,
    address: str | None,
    res: dict[int, Resources],
    parallel: int | None,
) -> tuple[dict[int, Outcome], int | None]:
    with connect(address) as joined:
        resources = ray.cluster_resources()
        print(
            f"sweep: {len(jobs)} runs on Ray ({joined}: "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)",
            flush=True,
        )
        return RaySweep(jobs, root, res, parallel).run()
