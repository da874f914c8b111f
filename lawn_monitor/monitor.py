"""The Monitor: per-step, per-layer training diagnostics for any PyTorch loop.

    monitor = Monitor(model, optimizer, config={"optimizer": "adam", "lawn": True})
    for x, y in loader:
        ...; optimizer.step()
        monitor.step(loss=loss, logits=logits, targets=y)
    monitor.close()

or, where a framework owns the loop, let the optimizer say when it stepped:

    monitor.attach(optimizer)  # records every real optimizer step (a step post-hook)
    ...; monitor.observe(loss=loss, logits=outputs, targets=y)  # each (micro-)batch, before its step

The adapters in ``lawn_monitor.integrations`` do this for Lightning and Hugging Face.

Each step runs the probes that are due; their values stay on the device. Once per flush (every
``flush_secs`` seconds or ``flush_every`` steps) all buffered values are concatenated and copied
to the host in ONE transfer, turned into long-format rows and written as one Parquet part file.
That single copy is the only point where logging makes the GPU wait.

Under torch.distributed (DDP, FSDP2) build the Monitor on every process, after wrapping the
model, and call ``step`` on every process: process 0 writes the run; the others only join the
collectives (global norms of FSDP2's shards, the global batch's output statistics) and write
nothing.

However a run ends, its status is written: ``close()``, the ``with`` block (an exception:
``failed`` with it; Ctrl-C: ``interrupted``), or, for a program that exits without either, a hook
at interpreter exit that flushes and records ``failed`` / ``interrupted``. A write that fails (a
full disk) marks the run ``failed`` with the reason and raises :class:`MonitorWriteError`; the
rows flushed before it stay readable.
"""

from __future__ import annotations

import atexit
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import sharding
from .outputs import Keys, LogitsFn, Outputs, logits_of
from .probes import Clock, OutputStats, Probe, ProbeConfig, StepContext, clean_name
from .schema import SCHEMA
from .sink import ParquetSink, new_run_id
from .storage import check_run_id, default_root


class MonitorWriteError(OSError):
    """The Monitor could not write to its store (a full disk, a lost mount): the run is marked
    ``failed`` with the reason (where run.json can still be written) and the rows of earlier
    flushes are kept. ``errno`` is the failed write's."""


# Monitors not closed yet: closed at interpreter exit by _close_at_exit (weakly held, so a
# Monitor the program dropped is not kept alive by this).
_OPEN: weakref.WeakSet[Monitor] = weakref.WeakSet()


def _close_at_exit() -> None:
    """Flush and close every Monitor a program left open as the interpreter exits, recording how
    the program ended: an uncaught exception (``sys.last_value``, set before exit hooks run) as
    ``failed`` with it, Ctrl-C as ``interrupted``, an exit without ``close()`` as ``interrupted``
    (``diverged`` if the loss had gone non-finite). SIGKILL runs no hook: the run shows as stale."""
    last = getattr(sys, "last_value", None)
    for monitor in list(_OPEN):
        if monitor._pid != os.getpid():  # a forked child exiting: the run is its parent's
            continue
        if isinstance(last, KeyboardInterrupt):
            status, error = "interrupted", "KeyboardInterrupt: the program was interrupted"
        elif last is not None:
            status, error = "failed", "".join(traceback.format_exception(last))
        else:
            status, error = None, "the program exited without Monitor.close() (call it, or use `with Monitor(...)`)"
        try:
            if status is None:
                monitor.flush()  # a non-finite loss still buffered counts
                status = "diverged" if monitor.diverged else "interrupted"
            monitor.close(status, error=error)
        except Exception as exc:  # noqa: BLE001 - at exit there is no one left to raise to
            print(f"lawn-monitor: could not close run {monitor.run_id} at exit: {exc}", file=sys.stderr)


atexit.register(_close_at_exit)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(model: nn.Module) -> dict[str, Any]:
    first = next(model.parameters(), None)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(first.device) if first is not None else "cpu",
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "host": platform.node(),
        "git_commit": _git_commit(),
        "argv": sys.argv,
    }


def _rank_and_world(process_group) -> tuple[int, int]:
    """This process's rank in ``process_group`` (default: all processes) and the group's size;
    (0, 1) without an initialized torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(process_group), dist.get_world_size(process_group)


class Monitor:
    """Watches one training run and writes it under ``<root>/<run_id>/``.

    Sharded and data-parallel training (torch.distributed initialized, more than one process in
    ``process_group``): build the Monitor on EVERY process with the same arguments (after
    ``fully_shard`` or ``DistributedDataParallel``) and call ``step`` on every process on every
    step. Rank 0 writes the run. The other ranks write nothing (``writes`` is False, ``run_id``
    and ``run_dir`` are None): they only run the probes that are ``collective``, so that rank 0's
    collectives complete:

    * under FSDP2 (parameters are DTensors), each process sums the squares of its shards and
      one all-reduce per step adds all layers' sums; norms, ratios and cosines are taken from
      the global sums (``sharding.shard_sum``). Under DDP parameters and gradients are the same
      on every process: nothing is reduced, nothing is counted twice;
    * the output statistics (``train/loss`` given as each process's mean over its share,
      ``train/acc``, ``logit_norm``, ``max_prob``, ``flat_frac``) are summed with their counts
      over ``process_group`` (one all-reduce per step), so rank 0 writes the global batch's;
    * the curvature probes run on rank 0 alone under DDP (replicated weights); under FSDP2 they
      are turned off with a warning, since their forward passes would need every process.

    Args:
        model: the model being trained (its named parameters are the layers).
        optimizer: its optimizer; read for ``lr`` and LAWN's ``phase``.
        root: store root; default ``$LAWN_MONITOR_ROOT`` or ``./runs``.
        config: everything needed to rerun (saved whole in run.json).
        name: a readable name; the run id is made from it.
        total_steps, steps_per_epoch: for progress and fractional epochs, when known.
        flush_secs, flush_every: flush when either is reached (seconds / steps).
        probe_batch: ``(inputs, targets)``, a fixed batch from the training set on which the
            curvature probes measure the loss (without one, curvature is off).
        loss_fn: the loss for curvature, ``(logits, targets) -> scalar``; default cross-entropy.
        logits_fn: takes the logits out of the model's output, for the curvature probes and
            ``step`` / ``observe``; default ``probes.logits_of`` (a tensor, an object with
            ``.logits`` such as a Hugging Face ``ModelOutput``, a dict with ``"logits"``).
            Sequence logits (B, T, V) count each position as a sample, and targets of -100 are
            left out; for a causal LM, pass targets already shifted (the next tokens).
        probe_config: cadences and budget of the default probes (``ProbeConfig``).
        probes: an explicit list of probes instead of the defaults.
        enabled: False makes every call a no-op on this process, collectives included: not for
            distributed training, where every process builds an enabled Monitor (see above).
        process_group: the processes that train this model together (default: all of them,
            when torch.distributed is initialized).
        resume_step: continue the existing run ``run_id`` after this step (its last checkpoint):
            rows it wrote after that step are removed first (``ParquetSink.reopen``), so the
            resumed run leaves no step twice and none missing. Then ``load_state_dict``.
        forward_to: a forwarder or a list of them, e.g. ``WandbForwarder(run)`` or
            ``MLflowForwarder()`` (``lawn_monitor.integrations.trackers``): each flush's rows also
            go to it (``forward(table)``). One that fails is warned about once; training goes on.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        root: str | os.PathLike | None = None,
        config: dict[str, Any] | None = None,
        name: str | None = None,
        run_id: str | None = None,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
        flush_secs: float = 2.0,
        flush_every: int | None = None,
        probe_batch: tuple[Tensor, Tensor] | None = None,
        loss_fn=None,
        logits_fn: LogitsFn = logits_of,
        probe_config: ProbeConfig | None = None,
        probes: Iterable[Probe] | None = None,
        enabled: bool = True,
        resume_step: int | None = None,
        process_group=None,
        forward_to: Any = None,
    ) -> None:
        self.enabled = enabled
        self.model = model
        self.optimizer = optimizer
        self.config = dict(config or {})
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.flush_secs = flush_secs
        self.flush_every = flush_every
        self.step_count = 0
        self.diverged = False
        self.closed = False
        self.forward_to = (
            [] if forward_to is None else list(forward_to) if isinstance(forward_to, (list, tuple)) else [forward_to]
        )
        self._forward_failed: set[int] = set()  # forwarders already warned about
        self._device_rows: list[tuple[int, float, float, Keys, Tensor]] = []
        self._host_rows: list[tuple[int, float, float, str, str, float]] = []
        self._last_flush = time.monotonic()
        self._steps_since_flush = 0
        self._last_step_at: float | None = None
        self._started_at = time.monotonic()
        self._probe_seconds = 0.0  # wall time spent in expensive probes, excluded from training time
        # The curvature budget's clock: CPU time of this process on a CPU (what the work costs,
        # which a busy machine does not inflate the way it stalls wall time), wall time elsewhere
        # (a GPU's work is timed by CUDA events in the probes). See CurvatureProbe.run.
        first = next(model.parameters(), None)
        self._budget_time = time.process_time if first is None or first.device.type == "cpu" else time.monotonic
        self._budget_start = self._budget_time()
        self._probe_budget = 0.0  # the expensive probes' time on the budget's clock
        self._first_step_seconds: float | None = None  # budget clock's training time at step 1 (warm-up)
        self._last_budget_at: float | None = None
        self._step_times: list[float] = []  # the last few steps' times on the budget's clock
        self.rank, self.world_size = _rank_and_world(process_group) if enabled else (0, 1)
        self.writes = enabled and self.rank == 0  # only rank 0 writes the run
        self.run_id = self.run_dir = None
        self.logits_fn = logits_fn
        self._outputs = Outputs()  # what observe() was given since the last recorded step
        self._samples = 0  # samples observed since the last recorded step (host ints: shapes, no sync)
        self._last_samples: int | None = None
        self._outputs_after_step = False  # see attach()
        self._own_steps = False  # the loop numbers its steps (step=N): the next one is not known ahead
        self._awaiting: tuple[int, float, float, list[Probe]] | None = None  # a step waiting for its outputs
        self._hooks: list[Any] = []
        self._warned_grads = False
        if not enabled:
            return
        self.name = name or self.config.get("name") or "run"
        if probes is None:
            cfg = probe_config or ProbeConfig()
            if cfg.curvature and probe_batch is None and self.writes:
                warnings.warn(
                    "Monitor: no probe_batch given, so curvature probes (gn_trace, hessian_trace, "
                    "sharpness) are off; pass probe_batch=(inputs, targets) to turn them on",
                    stacklevel=2,
                )
            probes = cfg.build(probe_batch, loss_fn, total_steps, logits_fn)
        self.probes = list(probes)
        if self.world_size > 1:
            for probe in self.probes:  # each process saw its share of the batch: sum the shares
                if isinstance(probe, OutputStats) and probe.reduce is None:
                    probe.reduce = sharding.all_reduce_sum(process_group)
        if any(p.expensive for p in self.probes) and any(sharding.is_sharded(p) for p in model.parameters()):
            # Their forward passes run on detached copies of the parameters, which under FSDP2 are
            # this process's shards: the model would need FSDP's all-gathers on every process in
            # step, on a schedule each process's own budget decides. Not supported yet.
            if self.writes:
                warnings.warn(
                    "Monitor: curvature probes (gn_trace, hessian_trace, sharpness) are off for "
                    "FSDP2-sharded parameters; norms, update ratios and output statistics are logged",
                    stacklevel=2,
                )
            self.probes = [p for p in self.probes if not p.expensive]
        for probe in self.probes:
            probe.attach(model, optimizer)
        if not self.writes:  # another process writes the run
            return
        self.run_id = new_run_id(self.name) if run_id is None else check_run_id(run_id)
        open_sink = ParquetSink if resume_step is None else partial(ParquetSink.reopen, keep_through_step=resume_step)
        self.step_count = resume_step or 0
        self.sink = open_sink(
            default_root() if root is None else root,
            self.run_id,
            {
                "name": self.name,
                "config": self.config,
                "env": environment(model),
                "step": resume_step or 0,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                # The model's parameter order, so heatmaps can list layers input to output.
                "layers": [clean_name(name) for name, p in model.named_parameters() if p.requires_grad],
            },
        )
        self.run_dir = self.sink.run_dir
        self._written_step = self.step_count  # rows through this step are on disk
        self._pid = os.getpid()
        _OPEN.add(self)

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The Monitor's position (step, time spent, each probe's schedule, budget and random
        state), for a training checkpoint. Flush first: rows still buffered are not in it."""
        return {
            "step": self.step_count,
            "train_seconds": time.monotonic() - self._started_at,
            "probe_seconds": self._probe_seconds,
            "budget_seconds": self._budget_time() - self._budget_start,
            "probe_budget": self._probe_budget,
            "first_step_seconds": self._first_step_seconds,
            "probes": [p.state_dict() for p in self.probes] if self.writes else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self.writes:  # the collective probes' schedules follow the step alone
            self.step_count = int(state["step"])
            return
        if len(state["probes"]) != len(self.probes):
            raise ValueError(
                f"Monitor state has {len(state['probes'])} probes, this Monitor {len(self.probes)}: "
                "resume with the probe settings of the original run"
            )
        self.step_count = int(state["step"])
        self._started_at = time.monotonic() - state["train_seconds"]
        self._probe_seconds = state["probe_seconds"]
        if "budget_seconds" in state:  # checkpoints from before the budget's own clock lack it
            self._budget_start = self._budget_time() - state["budget_seconds"]
            self._probe_budget = state["probe_budget"]
            self._first_step_seconds = state.get("first_step_seconds")
        for probe, probe_state in zip(self.probes, state["probes"]):
            probe.load_state_dict(probe_state)

    # --- logging ------------------------------------------------------------------------------

    def _epoch(self, epoch: float | None) -> float:
        if epoch is not None:
            return float(epoch)
        if self.steps_per_epoch:
            return self.step_count / self.steps_per_epoch
        return math.nan

    def step(
        self,
        loss: Tensor | None = None,
        logits: Any = None,
        targets: Tensor | None = None,
        batch_size: int | None = None,
        epoch: float | None = None,
        step: int | None = None,
    ) -> None:
        """Record one optimizer step. Call it right after ``optimizer.step()`` (and before the LR
        scheduler's step, so that ``lr`` is the rate this step used). ``step``: the step's own
        number, for loops that count their steps (they must increase); default the next one.
        Outputs given to ``observe`` since the last step are part of this one."""
        if not self.enabled:
            return
        self._own_steps = self._own_steps or step is not None
        self.observe(loss, logits, targets)
        self._record(batch_size, epoch, step)

    def observe(self, loss: Tensor | float | None = None, logits: Any = None, targets: Tensor | None = None) -> None:
        """The outputs of one (micro-)batch, for the optimizer step it is part of: under gradient
        accumulation, every micro-batch's. ``train/loss`` is the mean of the losses given,
        the output statistics are over all the samples. ``logits`` may be the model's whole
        output (see ``logits_fn``). Statistics are computed now, on the device, and only their
        sums kept, so the logits can be freed at once.

        Normally called before the step: its values wait for the next recorded step. After
        ``attach(..., outputs_after_step=True)`` a step recorded without its last outputs is
        completed by the next call."""
        if not self.enabled:
            return
        if logits is not None and not self._statistics_wanted():
            logits = None  # no output statistics at this step: the loss alone is summed (no softmax)
        if logits is not None:
            logits = self.logits_fn(logits)
        self._outputs.add(loss, logits, targets)
        if targets is not None:
            self._samples += len(targets)
        if self._awaiting is not None:
            step, epoch, wall, probes = self._awaiting
            self._awaiting = None
            ctx = StepContext(step=step, outputs=self._end_window())
            for probe in probes:
                self._run(probe, ctx, epoch, wall)

    def _statistics_wanted(self) -> bool:
        """Whether a probe that reads the outputs will run at the step these outputs belong to:
        with ``probe_every`` N, the other steps need no softmax over their logits. When the step
        is not known ahead (``step=N``, outputs after the step), always."""
        if self._own_steps or self._outputs_after_step or self._awaiting is not None:
            return True
        step = self.step_count + 1
        return any(p.uses_outputs and (p.pending or p.schedule(step)) for p in self.probes)

    def _end_window(self) -> Outputs:
        """The outputs observed for the step just recorded; the next step's start empty."""
        outputs, self._outputs = self._outputs, Outputs()
        if self._samples:
            self._last_samples = self._samples
        self._samples = 0
        return outputs

    def attach(self, optimizer: torch.optim.Optimizer | None = None, outputs_after_step: bool = False) -> Any:
        """Record every real optimizer step by itself: registers a step post-hook on
        ``optimizer`` (default the Monitor's own), which runs after each ``optimizer.step()``
        that actually happens, with the gradients still there. So under gradient accumulation
        only the steps are recorded, not the micro-batches, and a step that
        ``torch.amp.GradScaler`` skips (inf or NaN gradients) is not recorded: the scaler does
        not call ``optimizer.step()`` then. Give each batch's outputs to ``observe``.

        A wrapper that keeps torch's hooks (``LAWN``) is hooked itself, so the step recorded is
        the one it takes (after its projection); one that does not (Accelerate's
        ``AcceleratedOptimizer``) is unwrapped to the optimizer inside it (``.optimizer``),
        which steps once per real step. An optimizer passed here that the Monitor was not
        given becomes its optimizer (for ``lr``, ``phase`` and the probes), before the first step.

        ``outputs_after_step``: the framework hands over a step's last outputs only after its
        optimizer step (Lightning's ``on_train_batch_end``): the step is recorded at once, and
        its output statistics when the next ``observe`` arrives.

        Returns the hook's handle; ``close`` removes it."""
        if not self.enabled:
            return None
        if self._hooks:
            raise ValueError(
                "Monitor.attach: this Monitor records an optimizer's steps already; one Monitor watches one optimizer"
            )
        optimizer = optimizer if optimizer is not None else self.optimizer
        if optimizer is None:
            raise ValueError("Monitor.attach: no optimizer: pass the one that steps the model")
        if self.optimizer is None:
            if self.step_count:
                raise ValueError(
                    "Monitor.attach: a Monitor made without an optimizer takes one only before its "
                    "first step: pass it to Monitor(model, optimizer)"
                )
            self.optimizer = optimizer
            for probe in self.probes:
                probe.attach(self.model, optimizer)
        hooked = optimizer
        while not hasattr(hooked, "_optimizer_step_post_hooks") and hasattr(hooked, "optimizer"):
            hooked = hooked.optimizer
        if not hasattr(hooked, "register_step_post_hook") or not hasattr(hooked, "_optimizer_step_post_hooks"):
            raise TypeError(
                f"Monitor.attach: cannot hook the steps of a {type(optimizer).__name__}: pass the "
                "torch.optim.Optimizer it wraps, or call monitor.step() after each step"
            )
        self._outputs_after_step = outputs_after_step
        handle = hooked.register_step_post_hook(self._on_optimizer_step)
        self._hooks.append(handle)
        return handle

    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        self._record()

    def _record(self, batch_size: int | None = None, epoch: float | None = None, step: int | None = None) -> None:
        if step is None:
            step = self.step_count + 1
        elif step <= self.step_count:
            raise ValueError(
                f"Monitor.step(step={step}): steps must increase, and step {self.step_count} "
                "is recorded already (count optimizer steps from 1)"
            )
        self.step_count = step
        ep, wall = self._epoch(epoch), time.time()
        late = self._outputs_after_step
        samples = self._last_samples if late else (self._samples or None)
        ctx = StepContext(step=step, outputs=None if late else self._end_window())
        if not self.writes:
            # Another process writes: join the collective probes (their schedules depend on the
            # step alone, so they are due on the same steps as there) and keep nothing.
            due = [probe for probe in self.probes if probe.collective and probe.due(Clock(step, 0.0))]
            waiting = [probe for probe in due if late and probe.uses_outputs]
            for probe in due:
                if probe not in waiting:
                    probe.run(ctx)
            if waiting:
                self._awaiting = (step, ep, wall, waiting)
            return
        batch = batch_size if batch_size is not None else samples
        clock = self._clock(batch)
        if step == 1:
            self._first_step_seconds = clock.train_seconds
        probe_seconds = probe_budget = 0.0
        ran, waiting = [], []
        for probe in self.probes:
            if probe.due(clock):
                if late and probe.uses_outputs:
                    waiting.append(probe)
                    continue
                probe_seconds += self._run(probe, ctx, ep, wall)
                probe_budget += probe.last_cost if probe.expensive else 0.0
                ran.append(probe)
        if waiting:
            self._awaiting = (step, ep, wall, waiting)
        if not self._warned_grads and any(getattr(p, "missing_grads", False) for p in ran):
            self._warned_grads = True
            warnings.warn(
                f"Monitor: no parameter has a gradient at step {step}, so its grad_norm and "
                "grad_weight_cos are NaN: record the step after optimizer.step() and before "
                "zero_grad() (this warning is shown once)",
                stacklevel=3,
            )
        self._probe_seconds += probe_seconds
        self._probe_budget += probe_budget
        if probe_seconds:
            self._host_rows.append((step, ep, wall, "", "curvature_time", probe_seconds))
        budget_now = self._budget_time()
        if self._last_budget_at is not None:
            self._step_times = [*self._step_times, budget_now - self._last_budget_at - probe_budget][-20:]
        self._last_budget_at = budget_now

        host = [
            ("lr", self._lr()),
            ("phase", 1.0 if getattr(self.optimizer, "phase", "free") == "constrained" else 0.0),
        ]
        now = time.monotonic()
        if self._last_step_at is not None:
            # Wall time between calls, less this call's curvature probes; on a GPU it only
            # reflects kernel time on average, since nothing here synchronizes (the queue blocks
            # the host once it is full).
            dt = now - self._last_step_at - probe_seconds
            host.append(("step_time", dt))
            if batch is not None and dt > 0:
                host.append(("samples_per_s", batch / dt))
        self._last_step_at = now
        self._host_rows += [(step, ep, wall, "", m, float(v)) for m, v in host]

        self._steps_since_flush += 1
        if (self.flush_every and self._steps_since_flush >= self.flush_every) or (
            now - self._last_flush >= self.flush_secs
        ):
            self.flush()

    def _clock(self, batch_size: int | None = None) -> Clock:
        """The run's time so far for the budgets, on the budget's clock, less the budgeted
        probes' own, and, when the number of steps is known, the projected whole run: the time
        so far plus the steps left at the pace since step 1 (whose time holds the first step's
        one-time costs, so no projection is made from it alone)."""
        step = self.step_count
        train_seconds = self._budget_time() - self._budget_start - self._probe_budget
        typical = statistics.median(self._step_times) if self._step_times else None
        total_steps = max(self.total_steps, step) if self.total_steps else None
        if total_steps is None or step < 2:
            return Clock(step, train_seconds, None, total_steps, batch_size, typical)
        if self._first_step_seconds is not None:
            pace = (train_seconds - self._first_step_seconds) / (step - 1)
        else:  # resumed from a checkpoint that did not record it
            pace = train_seconds / step
        return Clock(step, train_seconds, train_seconds + (total_steps - step) * pace, total_steps, batch_size, typical)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not this run's training time (for the budgets and step_time): e.g.
        a benchmark's interleaved bare loop, or work of your own between steps."""
        wall, budget = time.monotonic(), self._budget_time()
        try:
            yield
        finally:
            self._started_at += time.monotonic() - wall
            self._budget_start += self._budget_time() - budget
            if self._last_budget_at is not None:
                self._last_budget_at += self._budget_time() - budget
            self._last_step_at = None

    def _run(self, probe: Probe, ctx: StepContext, epoch: float, wall: float) -> float:
        """Run one probe and keep its values; return its time in seconds if it is expensive
        (each expensive probe times itself: see ``CurvatureProbe.run``)."""
        out = probe.run(ctx)
        if out is not None and self.writes:  # a process that does not write joined a collective only
            self._device_rows.append((ctx.step, epoch, wall, *out))
        return probe.last_seconds if probe.expensive else 0.0

    def _final_curvature(self) -> None:
        """One last point of each expensive probe at the final step, unless it just ran or its
        budget has no room left for it: like an evaluation, it runs after training, not inside a
        step, and run.json says so meanwhile (``activity``), so the Live page shows "measuring
        curvature" rather than "done"."""
        clock = self._clock()
        clock.total_seconds = None  # the run is over: the budget is a share of all of it
        due = [p for p in self.probes if p.expensive and p.last_step != self.step_count and p.affordable(clock)]
        if not due or self.step_count == 0:
            return
        self.sink.heartbeat(step=self.step_count, activity="measuring curvature")
        ctx = StepContext(step=self.step_count)
        epoch = self._epoch(None)
        seconds = sum(self._run(p, ctx, epoch, time.time()) for p in due)
        self._probe_seconds += seconds
        self._probe_budget += sum(p.last_cost for p in due)
        self._host_rows.append((self.step_count, epoch, time.time(), "", "curvature_time", seconds))

    def _lr(self) -> float:
        if self.optimizer is None or not self.optimizer.param_groups:
            return math.nan
        lr = self.optimizer.param_groups[0]["lr"]
        return float(lr.item() if isinstance(lr, Tensor) else lr)

    def log(self, metrics: dict[str, float | Tensor], layer: str = "", epoch: float | None = None) -> None:
        """Record arbitrary scalars at the current step (tensors stay on the device until flush)."""
        if not self.writes or not metrics:
            return
        step, ep, wall = self.step_count, self._epoch(epoch), time.time()
        keys: Keys = []
        values: list[Tensor] = []
        for metric, value in metrics.items():
            if isinstance(value, Tensor):
                keys.append((metric, layer))
                values.append(value.detach().float().reshape(1))
            else:
                self._host_rows.append((step, ep, wall, layer, metric, float(value)))
        if values:
            device = values[0].device
            self._device_rows.append((step, ep, wall, keys, torch.cat([v.to(device) for v in values])))

    def latest(self, metric: str) -> tuple[int, Tensor] | None:
        """The newest whole-model value of a metric that a probe keeps at hand (``OutputStats``'
        ``train/loss``, ``train/acc``, ``logit_norm``, ``max_prob``, ``flat_frac``; ``ParamNorms``'
        ``update_ratio_per_lr`` and the other norms) and its step: a 0-d tensor on the device, no
        host sync (for ``LAWN(free_steps="auto")``). None before the first one, or without such a
        probe. Every process of a distributed run gets the global batch's value."""
        for probe in self.probes if self.enabled else ():
            last = getattr(probe, "last", None)
            if last is not None and (metric, "") in last[1]:
                step, keys, values = last
                return step, values[keys.index((metric, ""))]
        return None

    def annotate(self, **fields: Any) -> None:
        """Write these fields into run.json now (e.g. LAWN's ``lawn_switch``); they stay there."""
        if self.writes and not self.closed:
            self.sink.heartbeat(**fields)

    def log_eval(
        self,
        loss: float | Tensor | None = None,
        acc: float | Tensor | None = None,
        acc5: float | Tensor | None = None,
        split: str = "test",
        epoch: float | None = None,
    ) -> None:
        """Record an evaluation (``test/loss``, ``test/acc``, ``test/acc5``) at the current step;
        ``split="val"`` records the validation split's (``val/loss``, ``val/acc``)."""
        given = {"loss": loss, "acc": acc, "acc5": acc5}
        self.log({f"{split}/{k}": v for k, v in given.items() if v is not None}, epoch=epoch)
        self._last_step_at = None  # the evaluation's time is not a training step's time

    # --- flushing -----------------------------------------------------------------------------

    def flush(self, durable: bool = False) -> None:
        """Copy buffered values to the host (one transfer) and write them as one part file;
        ``durable`` also fsyncs every part written so far (before a checkpoint)."""
        if not self.writes:
            return
        if durable:
            self.flush()
            try:
                self.sink.sync()
            except OSError as exc:
                self._write_failed(exc)
            return
        device_rows, self._device_rows = self._device_rows, []
        host_rows, self._host_rows = self._host_rows, []
        self._last_flush = time.monotonic()
        self._steps_since_flush = 0
        if not device_rows and not host_rows:
            return
        cols: dict[str, list] = {"step": [], "epoch": [], "wall_time": [], "layer": [], "metric": []}
        values = np.empty(0)
        if device_rows:
            by_device: dict[torch.device, list[Tensor]] = {}
            for row in device_rows:
                by_device.setdefault(row[4].device, []).append(row[4])
            # The one sync point: a single device-to-host copy per device (normally one).
            host = {d: torch.cat(ts).detach().double().cpu().numpy() for d, ts in by_device.items()}
            offsets = {d: 0 for d in host}
            parts = []
            for step, ep, wall, keys, tensor in device_rows:
                d, n = tensor.device, tensor.numel()
                parts.append(host[d][offsets[d] : offsets[d] + n])
                offsets[d] += n
                cols["step"] += [step] * n
                cols["epoch"] += [ep] * n
                cols["wall_time"] += [wall] * n
                cols["metric"] += [k[0] for k in keys]
                cols["layer"] += [k[1] for k in keys]
            values = np.concatenate(parts)
        for step, ep, wall, layer, metric, _value in host_rows:
            cols["step"].append(step)
            cols["epoch"].append(ep)
            cols["wall_time"].append(wall)
            cols["layer"].append(layer)
            cols["metric"].append(metric)
        values = np.concatenate([values, np.array([r[5] for r in host_rows], dtype=np.float64)])
        self._check_divergence(cols["metric"], values)
        n = len(values)
        table = pa.table(
            {
                "run_id": pa.array([self.run_id] * n, pa.string()),
                "step": pa.array(cols["step"], pa.int64()),
                "epoch": pa.array(cols["epoch"], pa.float64()),
                "wall_time": pa.array(cols["wall_time"], pa.float64()),
                "layer": pa.array(cols["layer"], pa.string()),
                "metric": pa.array(cols["metric"], pa.string()),
                "value": pa.array(values, pa.float64()),
            },
            schema=SCHEMA,
        )
        try:
            self.sink.write(table)
            self.sink.heartbeat(step=self.step_count)
        except OSError as exc:
            self._write_failed(exc)
        self._written_step = self.step_count
        self._forward(table)

    def _forward(self, table: pa.Table) -> None:
        """Hand the flush's rows to each forwarder; a tracker's failure must not stop training."""
        for forwarder in self.forward_to:
            try:
                forwarder.forward(table)
            except Exception as exc:
                if id(forwarder) not in self._forward_failed:
                    self._forward_failed.add(id(forwarder))
                    warnings.warn(
                        f"forwarding to {type(forwarder).__name__} failed, training goes on (warned "
                        f"once, later flushes still try): {type(exc).__name__}: {exc}",
                        stacklevel=3,
                    )

    def _check_divergence(self, metrics: list[str], values: np.ndarray) -> None:
        """``diverged`` on the first non-finite ``train/loss`` (seen here, at the flush, so that
        no step waits for the device); the expensive probes stop, as there is nothing left to
        measure, while the cheap ones keep recording what the loop logs."""
        loss = values[np.fromiter((m == "train/loss" for m in metrics), bool, len(metrics))]
        if loss.size and not np.isfinite(loss).all() and not self.diverged:
            self.diverged = True
            for probe in self.probes:
                if probe.expensive:
                    probe.stopped = "training diverged (train/loss not finite)"

    def _write_failed(self, exc: OSError):
        """A write to the store failed: mark the run failed if run.json can still be written,
        and raise one clear error. Rows flushed before are on disk; this flush's are lost."""
        self.closed = True
        _OPEN.discard(self)
        reason = f"could not write to {self.sink.loc.url}/{self.run_id}: {exc.strerror or exc}"
        try:
            self.sink.close("failed", error=reason, step=self._written_step, activity=None)
            recorded = "the run is marked failed"
        except OSError:
            recorded = "its status could not be written either (it will show as stale)"
        raise MonitorWriteError(
            exc.errno,
            f"lawn-monitor: {reason}; {recorded} and its rows through step "
            f"{self._written_step} are kept: free space or fix the store, then "
            f"start a new run or resume from a checkpoint",
        ) from exc

    # --- ending -------------------------------------------------------------------------------

    def close(self, status: str | None = None, error: str | None = None) -> None:
        """Flush what is left and mark the run ``finished`` (or the given status)."""
        if not self.writes or self.closed:
            self.closed = True
            return
        self.flush()
        if status is None:
            status = "diverged" if self.diverged else "finished"
        if status == "finished":
            self._final_curvature()
            self.flush()
        try:
            self.sink.close(status, error=error, step=self.step_count, activity=None)
        except OSError as exc:
            self._write_failed(exc)
        self.closed = True
        for handle in self._hooks:  # a closed Monitor records nothing more
            handle.remove()
        self._hooks = []
        _OPEN.discard(self)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            if issubclass(exc_type, KeyboardInterrupt):
                self.close("interrupted")
            else:
                self.close("failed", error="".join(traceback.format_exception(exc_type, exc, tb)))
        except MonitorWriteError as write_error:  # the block's own exception is the one to raise
            warnings.warn(str(write_error), stacklevel=2)
