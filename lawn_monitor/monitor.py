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
from torch import Tensor, nn

from .budget import BudgetClock
from .names import SPLITS
from .optimizers import Optimizers, check_name, hookable, optimizer_params
from .outputs import Keys, LogitsFn, Outputs, logits_of, normalized_flags, normalized_kind
from .probes import Clock, ParamNorms, Probe, ProbeConfig, StepContext, clean_name
from .ranks import Awaiting, Ranks
from .rows import RowBuffer
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


def _forwarders(forward_to: Any) -> list[Any]:
    """Monitor's ``forward_to`` as a list: none, one forwarder, or a list or tuple of them."""
    if forward_to is None:
        return []
    if isinstance(forward_to, (list, tuple)):
        return list(forward_to)
    return [forward_to]


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
        self.optimizers = Optimizers(optimizer)
        self.optimizer = self.optimizers.first  # the first (lr, phase and curvature read it)
        self.config = dict(config or {})
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.flush_secs = flush_secs
        self.flush_every = flush_every
        self.step_count = 0
        self.diverged = False
        self.closed = False
        self.forward_to = _forwarders(forward_to)
        self._forward_failed: set[int] = set()  # forwarders already warned about
        self._last_flush = time.monotonic()
        self._steps_since_flush = 0
        self._last_step_at: float | None = None  # wall time of the last recorded step (step_time)
        first = next(model.parameters(), None)
        self.budget_clock = BudgetClock(cpu=first is None or first.device.type == "cpu")
        self.ranks = Ranks(process_group, enabled)
        self.rank, self.world_size, self.writes = self.ranks.rank, self.ranks.world_size, self.ranks.writes
        self.run_id: str | None = None
        self.run_dir: Any = None  # Path, or an object-store URL
        self.rows = RowBuffer(None)
        self.logits_fn = logits_fn
        self._init_step_state()
        if not enabled:
            return
        self.name = name or self.config.get("name") or "run"
        self.probes = self._build_probes(probes, probe_config, probe_batch, loss_fn, logits_fn)
        if self.writes:  # otherwise another process writes the run
            self._open_run(root, run_id, resume_step)

    def _init_step_state(self) -> None:
        """What the Monitor gathers between recorded steps, how the loop hands it the steps, and
        what it has warned about once."""
        self._outputs = Outputs()  # what observe() was given since the last recorded step
        self._samples = 0  # samples observed since the last recorded step (host ints: shapes, no sync)
        self._last_samples: int | None = None
        self._outputs_after_step = False  # see attach()
        self._own_steps = False  # the loop numbers its steps (step=N): the next one is not known ahead
        self._awaiting: Awaiting | None = None  # a step waiting for its outputs
        self._hooks: list[Any] = []
        self._auto = False  # attach(): the optimizers' hooks record the steps
        self._norms_schedule: Any = None  # with several optimizers: the schedule of each one's ParamNorms
        self._preclip: dict[str, Tensor] = {}  # gradient norms before clipping, for the next step
        self._warned_grads = self._warned_lr = False
        self._logit_flags: Tensor | bool | None = None  # the first logits' normalized_flags; True once read

    def _build_probes(self, probes, probe_config, probe_batch, loss_fn, logits_fn) -> list[Probe]:
        if probes is None:
            cfg = probe_config or ProbeConfig()
            if cfg.curvature and probe_batch is None and self.writes:
                warnings.warn(
                    "Monitor: no probe_batch given, so curvature probes (gn_trace, hessian_trace, "
                    "sharpness) are off; pass probe_batch=(inputs, targets) to turn them on",
                    stacklevel=3,
                )
            probes = cfg.build(probe_batch, loss_fn, self.total_steps, logits_fn)
        built = self.ranks.prepare(list(probes), self.model)
        if self.optimizers.several:
            built = self._split_norms(built)
        for probe in built:
            probe.attach(self.model, self.optimizer)
        for name, optimizer in self.optimizers.named.items():
            if name:
                self._watch(name, optimizer)
        return built

    def _split_norms(self, probes: list[Probe]) -> list[Probe]:
        """With several optimizers, the model's ``ParamNorms`` becomes one per optimizer
        (``_watch``), each run at its own optimizer's step: the others are left here."""
        whole = [p for p in probes if isinstance(p, ParamNorms) and p.optimizer_name is None]
        if whole:
            self._norms_schedule = whole[0].schedule
        return [p for p in probes if p not in whole]

    def _watch(self, name: str, optimizer: Any) -> Any:
        """Watch one of several named optimizers: a step post-hook measures its parameters'
        norms right after each of its steps (while the gradients are the ones it stepped with)."""
        if self.enabled and self._norms_schedule is not None:
            probe = ParamNorms(self._norms_schedule, optimizer_name=name)
            probe.attach(self.model, optimizer)
            self.optimizers.norms[name] = probe
        handle = hookable(optimizer).register_step_post_hook(partial(self._on_step_of, name))
        self._hooks.append(handle)
        return handle

    def _on_step_of(self, name: str, optimizer: Any, args: Any, kwargs: Any) -> None:
        """One of several optimizers stepped. Under ``attach`` a step is recorded when every
        optimizer has stepped once, or before one steps a second time (a GAN's critic taking
        five steps to the generator's one)."""
        if self.closed:
            return
        if self._auto and name in self.optimizers.stepped:
            self._record()
        probe = self.optimizers.norms.get(name)
        step = self.step_count + 1
        if probe is not None and probe.due(Clock(step, 0.0)):
            out = probe.run(StepContext(step=step))
            if out is not None and self.writes:
                self.optimizers.captured[name] = out
        self.optimizers.stepped.add(name)
        if self._auto and self.optimizers.stepped == set(self.optimizers.named):
            self._record()

    def _open_run(self, root: str | os.PathLike | None, run_id: str | None, resume_step: int | None) -> None:
        """Create the run (or reopen it at ``resume_step``) in the store; rank 0 only."""
        self.run_id = new_run_id(self.name) if run_id is None else check_run_id(run_id)
        self.rows.run_id = self.run_id
        open_sink = ParquetSink if resume_step is None else partial(ParquetSink.reopen, keep_through_step=resume_step)
        self.step_count = resume_step or 0
        self.sink = open_sink(
            default_root() if root is None else root,
            self.run_id,
            {
                "name": self.name,
                "config": self.config,
                "env": environment(self.model),
                "step": resume_step or 0,
                "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                # The model's parameter order, so heatmaps can list layers input to output.
                "layers": [clean_name(name) for name, p in self.model.named_parameters() if p.requires_grad],
            },
        )
        self.run_dir = self.sink.run_dir
        self._written_step = self.step_count  # rows through this step are on disk
        self._pid = os.getpid()
        _OPEN.add(self)
        self._forward()  # the trackers learn the run's id and config

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The Monitor's position (step, time spent, each probe's schedule, budget and random
        state), for a training checkpoint. Flush first: rows still buffered are not in it."""
        return {
            "step": self.step_count,
            **self.budget_clock.state_dict(),
            "probes": [p.state_dict() for p in self.probes] if self.writes else [],
            "optimizer_probes": self.optimizers.state_dict() if self.writes else [],
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
        self.budget_clock.load_state_dict(state)
        for probe, probe_state in zip(self.probes, state["probes"]):
            probe.load_state_dict(probe_state)
        self.optimizers.load_state_dict(state.get("optimizer_probes", []))

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
            if self._logit_flags is None and self.writes:
                self._logit_flags = normalized_flags(logits)  # read at the next flush (no sync here)
        self._outputs.add(loss, logits, targets)
        if targets is not None:
            self._samples += len(targets)
        if self._awaiting is not None:
            step, epoch, wall, probes = self._awaiting
            self._awaiting = None
            ctx = StepContext(step=step, outputs=self._end_window())
            for probe in probes:
                self._run(probe, ctx, epoch, wall)

    def _check_logits(self) -> None:
        """At the first flush after the first logits: warn if they were log-probabilities or
        probabilities (read at the flush, where the host waits for the device anyway)."""
        if not isinstance(self._logit_flags, Tensor):
            return
        kind = normalized_kind(self._logit_flags)
        self._logit_flags = True
        if kind is None:
            return
        if kind == "log-probabilities":
            effect = (
                "logit_norm is then the norm of the log-probabilities (large and meaningless); train/acc, "
                "max_prob and flat_frac are the same either way"
            )
        else:
            effect = "the softmax of probabilities is not the model's: max_prob, flat_frac and logit_norm are wrong"
        warnings.warn(
            f"Monitor: the logits given look like {kind} (a {'log_' if kind[0] == 'l' else ''}softmax's "
            f"output): {effect}; pass the scores before the {'log_' if kind[0] == 'l' else ''}softmax, "
            "or a logits_fn that returns them (this warning is shown once)",
            stacklevel=5,
        )

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

    def attach(self, optimizer: Any = None, outputs_after_step: bool = False, name: str | None = None) -> Any:
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

        Several optimizers (a GAN): give each a ``name`` (``attach(opt_d, name="D")``,
        ``attach(opt_g, name="G")``), or build the Monitor with them
        (``Monitor(model, {"D": opt_d, "G": opt_g})``) and call ``attach()``. A step is then
        recorded once every optimizer has stepped, or before one steps a second time.

        ``outputs_after_step``: the framework hands over a step's last outputs only after its
        optimizer step (Lightning's ``on_train_batch_end``): the step is recorded at once, and
        its output statistics when the next ``observe`` arrives.

        Returns the hook's handle; ``close`` removes it."""
        if not self.enabled:
            return None
        self._outputs_after_step = outputs_after_step
        if name is not None or self.optimizers.several:
            return self._attach_named(optimizer, name)
        if self._hooks:
            raise ValueError(
                "Monitor.attach: this Monitor records an optimizer's steps already; to watch several "
                "optimizers with one Monitor, name each: attach(opt_d, name='D'), attach(opt_g, name='G')"
            )
        optimizer = optimizer if optimizer is not None else self.optimizer
        if optimizer is None:
            raise ValueError("Monitor.attach: no optimizer: pass the one that steps the model")
        hooked = hookable(optimizer)
        if self.optimizer is None:
            self._adopt("", optimizer)
        handle = hooked.register_step_post_hook(self._on_optimizer_step)
        self._hooks.append(handle)
        return handle

    def _adopt(self, name: str, optimizer: Any) -> None:
        """An optimizer the Monitor was not built with: its own from now on (before the first step)."""
        if self.step_count:
            raise ValueError(
                "Monitor.attach: a Monitor takes a new optimizer only before its first step: pass it "
                "to Monitor(model, optimizer) (several: Monitor(model, {'D': opt_d, 'G': opt_g}))"
            )
        first = self.optimizer is None
        self.optimizers.named[name] = optimizer
        if first:
            self.optimizer = optimizer
            for probe in self.probes:
                probe.attach(self.model, optimizer)

    def _attach_named(self, optimizer: Any, name: str | None) -> Any:
        """``attach`` with several named optimizers."""
        self._auto = True
        if name is None:  # the Monitor was built with its optimizers: their hooks record from now on
            if optimizer is not None and all(optimizer is not o for o in self.optimizers.named.values()):
                raise ValueError("Monitor.attach: this Monitor watches named optimizers: pass name= for a new one")
            return None
        if optimizer is None:
            raise ValueError(f"Monitor.attach(name={name!r}): pass the optimizer too")
        if "" in self.optimizers.named:
            raise ValueError(
                "Monitor.attach: this Monitor's optimizer has no name: name every optimizer, e.g. "
                "Monitor(model, {'D': opt_d, 'G': opt_g}) or attach(opt, name=...) for each"
            )
        if check_name(name) in self.optimizers.named:
            raise ValueError(f"Monitor.attach: an optimizer named {name!r} is watched already")
        hookable(optimizer)  # fails before anything changes
        if not self.optimizers.named and self._norms_schedule is None:
            self.probes = self._split_norms(self.probes)
        self._adopt(name, optimizer)
        return self._watch(name, optimizer)

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
        captured, preclip, self._preclip = self.optimizers.take(), self._preclip, {}
        if not self.writes:  # another process writes: join the collective probes, keep nothing
            self._awaiting = self.ranks.join(self.probes, ctx, ep, wall, late)
            return
        batch = batch_size if batch_size is not None else samples
        probe_seconds, probe_budget = self._run_due(ctx, ep, wall, batch, late)
        for keys, values in captured.values():  # each optimizer's norms, taken at its own step
            self.rows.add(step, ep, wall, keys, values)
        if preclip:
            self.rows.add(step, ep, wall, [(m, "") for m in preclip], torch.stack(list(preclip.values())))
        self.budget_clock.charge(probe_seconds, probe_budget)
        if probe_seconds:
            self.rows.add_host(step, ep, wall, "", "curvature_time", probe_seconds)
        self.budget_clock.stepped(probe_budget)
        now = time.monotonic()
        self._record_host(step, ep, wall, batch, now, probe_seconds)
        self._steps_since_flush += 1
        if (self.flush_every and self._steps_since_flush >= self.flush_every) or (
            now - self._last_flush >= self.flush_secs
        ):
            self.flush()

    def _run_due(
        self, ctx: StepContext, epoch: float, wall: float, batch: int | None, late: bool
    ) -> tuple[float, float]:
        """Run the probes due at ``ctx.step`` (those reading outputs still to come wait for
        them); return the expensive ones' time in wall seconds and on the budget's clock."""
        clock = self.budget_clock.clock(ctx.step, self.total_steps, batch)
        if ctx.step == 1:
            self.budget_clock.first_step_seconds = clock.train_seconds
        probe_seconds = probe_budget = 0.0
        ran, waiting = [], []
        for probe in self.probes:
            if not probe.due(clock):
                continue
            if late and probe.uses_outputs:
                waiting.append(probe)
                continue
            probe_seconds += self._run(probe, ctx, epoch, wall)
            probe_budget += probe.last_cost if probe.expensive else 0.0
            ran.append(probe)
        if waiting:
            self._awaiting = (ctx.step, epoch, wall, waiting)
        if not self._warned_grads and any(getattr(p, "missing_grads", False) for p in ran):
            self._warned_grads = True
            warnings.warn(
                f"Monitor: no parameter has a gradient at step {ctx.step}, so its grad_norm and "
                "grad_weight_cos are NaN: record the step after optimizer.step() and before "
                "zero_grad() (this warning is shown once)",
                stacklevel=4,
            )
        return probe_seconds, probe_budget

    def _record_host(
        self, step: int, epoch: float, wall: float, batch: int | None, now: float, probe_seconds: float
    ) -> None:
        """The step's values known on the host: ``lr``, ``phase``, ``step_time``, ``samples_per_s``."""
        host = self.optimizers.host_values()
        if self.optimizer is None and not self._warned_lr:
            self._warned_lr = True
            warnings.warn(
                "Monitor: no optimizer, so lr is recorded as NaN (and update_ratio_per_lr too): pass "
                "it as Monitor(model, optimizer) or monitor.attach(optimizer) (this warning is shown once)",
                stacklevel=4,
            )
        if self._last_step_at is not None:
            # Wall time between calls, less this call's curvature probes; on a GPU it only
            # reflects kernel time on average, since nothing here synchronizes (the queue blocks
            # the host once it is full).
            dt = now - self._last_step_at - probe_seconds
            host.append(("step_time", dt))
            if batch is not None and dt > 0:
                host.append(("samples_per_s", batch / dt))
        self._last_step_at = now
        for metric, value in host:
            self.rows.add_host(step, epoch, wall, "", metric, value)

    def _clock(self, batch_size: int | None = None):
        """The budget's clock at the current step (``BudgetClock.clock``)."""
        return self.budget_clock.clock(self.step_count, self.total_steps, batch_size)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not this run's training time (for the budgets and step_time): e.g.
        a benchmark's interleaved bare loop, or work of your own between steps."""
        try:
            with self.budget_clock.paused():
                yield
        finally:
            self._last_step_at = None

    def _run(self, probe: Probe, ctx: StepContext, epoch: float, wall: float) -> float:
        """Run one probe and keep its values; return its time in seconds if it is expensive
        (each expensive probe times itself: see ``CurvatureProbe.run``)."""
        out = probe.run(ctx)
        if out is not None and self.writes:  # a process that does not write joined a collective only
            self.rows.add(ctx.step, epoch, wall, *out)
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
        self.budget_clock.charge(seconds, sum(p.last_cost for p in due))
        self.rows.add_host(self.step_count, epoch, time.time(), "", "curvature_time", seconds)

    def clip_grad_norm_(
        self, max_norm: float, parameters: Any = None, norm_type: float = 2.0, optimizer: Any = None, **kwargs: Any
    ) -> Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over the model's parameters (or ``parameters``, or
        ``optimizer``'s), recording the norm before clipping as ``grad_norm_preclip`` at the next
        step (``grad_norm_preclip/<name>`` for one of several named optimizers). ``grad_norm`` is
        the norm after clipping: the gradient the optimizer received. Returns torch's value (the
        total norm before clipping, a tensor: nothing waits for the device). Call it where you
        would call torch's, between ``backward()`` and ``optimizer.step()``."""
        if parameters is None:
            parameters = self.model.parameters() if optimizer is None else optimizer_params(optimizer)
        total = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type, **kwargs)
        self.record_preclip(total, optimizer)
        return total

    def record_preclip(self, total: Tensor | float, optimizer: Any = None) -> None:
        """Record ``total``, the gradient norm before clipping (as a framework computed it), at the
        next recorded step: ``grad_norm_preclip``, or ``grad_norm_preclip/<name>`` for ``optimizer``
        when it is one of several named ones."""
        if not self.writes:
            return
        name = next((n for n, o in self.optimizers.named.items() if o is optimizer), "") if optimizer else ""
        value = total.detach().float().reshape(()) if isinstance(total, Tensor) else torch.tensor(float(total))
        if self._preclip:
            value = value.to(next(iter(self._preclip.values())).device)
        self._preclip["grad_norm_preclip" + (f"/{name}" if name else "")] = value

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
                self.rows.add_host(step, ep, wall, layer, metric, float(value))
        if values:
            device = values[0].device
            self.rows.add(step, ep, wall, keys, torch.cat([v.to(device) for v in values]))

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
        """Record an evaluation at the current step: ``<split>/loss``, ``<split>/acc``,
        ``<split>/acc5``, where ``split`` is ``test`` (the test set, the default) or ``val`` (a
        validation split held out of the training data; ``validation`` and ``eval`` mean it too:
        ``lawn_monitor.names``)."""
        split = SPLITS.get(split.lower(), split)
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
        table = self.rows.take()
        self._last_flush = time.monotonic()
        self._steps_since_flush = 0
        if table is None:
            return
        self._check_divergence(table)
        self._check_logits()
        try:
            self.sink.write(table)
            self.sink.heartbeat(step=self.step_count)
        except OSError as exc:
            self._write_failed(exc)
        self._written_step = self.step_count
        self._forward(table)

    def _forward(self, table: pa.Table | None = None) -> None:
        """Hand the flush's rows to each forwarder (None: the run's id and config, to those
        that take them: ``start``); a tracker's failure must not stop training."""
        for forwarder in self.forward_to:
            try:
                if table is not None:
                    forwarder.forward(table)
                elif hasattr(forwarder, "start"):
                    forwarder.start(self.run_id, self.config)
            except Exception as exc:
                if id(forwarder) not in self._forward_failed:
                    self._forward_failed.add(id(forwarder))
                    warnings.warn(
                        f"forwarding to {type(forwarder).__name__} failed, training goes on (warned "
                        f"once, later flushes still try): {type(exc).__name__}: {exc}",
                        stacklevel=3,
                    )

    def _check_divergence(self, table: pa.Table) -> None:
        """``diverged`` on the first non-finite ``train/loss`` (seen here, at the flush, so that
        no step waits for the device); the expensive probes stop, as there is nothing left to
        measure, while the cheap ones keep recording what the loop logs."""
        metrics = table.column("metric").to_numpy(zero_copy_only=False)
        loss = table.column("value").to_numpy()[metrics == "train/loss"]
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
