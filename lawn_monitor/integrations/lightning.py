"""Lightning: a ``Callback`` that records every optimizer step of ``Trainer.fit`` with a Monitor.

    class Classifier(L.LightningModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            loss = F.cross_entropy(logits, y)
            return {"loss": loss, "logits": logits.detach(), "targets": y}  # logits, targets: optional

    trainer = L.Trainer(callbacks=[LawnMonitorCallback(config=vars(args))], accumulate_grad_batches=2)
    trainer.fit(Classifier(), loader)

The Monitor is hooked to the trainer's optimizer (``Monitor.attach``), so it records exactly the
steps the optimizer takes: not the micro-batches of ``accumulate_grad_batches``, not the steps
a gradient scaler skips. ``training_step``'s loss, and its ``logits`` and ``targets`` when it
returns them, reach the Monitor in ``on_train_batch_end``, which Lightning calls after the
optimizer step: the Monitor writes those statistics for the step just recorded.

Evaluation metrics logged with ``self.log`` are named by the project's one rule
(``lawn_monitor.names``): ``val_loss`` / ``val_acc`` in validation become ``val/loss`` /
``val/acc``, ``test_loss`` / ``test_acc`` in ``trainer.test`` become ``test/loss`` /
``test/acc``. With ``gradient_clip_val`` set, the gradient norm before clipping is recorded as
``grad_norm_preclip`` (``grad_norm`` is after it: what the optimizer received).

Several optimizers (a GAN's ``configure_optimizers`` returning two, in automatic or manual
optimization): one Monitor watches them all, each named by ``optimizer_names`` (default
``opt0``, ``opt1``, ...), its whole-model metrics ``<metric>/<name>`` (``Monitor.attach``). In
manual optimization ``training_step``'s returned loss (or dict) is recorded as in automatic.

Every process builds a Monitor; under torch.distributed only rank 0 writes, the others join the
probes' collectives (see "Sharded training" in docs/integrations.md). The run ends ``finished`` with
``fit``, ``failed`` on an exception and ``interrupted`` on Ctrl-C or SIGTERM (Lightning stops a
run on SIGTERM). The Monitor's place (run id, step, probe schedules) is saved in Lightning's
checkpoints, so ``trainer.fit(..., ckpt_path=...)`` continues the same run, with no step twice.
Curvature (``probe_batch=(inputs, targets)``) calls the LightningModule's ``forward`` on the
inputs.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from ..monitor import Monitor
from ..names import split_metric


class LawnMonitorCallback(Callback):
    """Builds a Monitor when training starts and closes it when it ends.

    Args:
        eval_metrics: the stored name for each name logged in validation or test
            (``trainer.callback_metrics``), e.g. ``{"my_val_metric": "val/acc"}``; default the
            naming rule (``lawn_monitor.names``) for every logged name it covers.
        optimizer_names: a name for each of several optimizers (default ``opt0``, ``opt1``, ...).
        **monitor_kwargs: passed to ``Monitor`` (``root``, ``name``, ``config``, ``probe_batch``,
            ``probe_config``, ``logits_fn``, ...); ``total_steps`` and ``steps_per_epoch`` are
            taken from the trainer unless given.
    """

    def __init__(
        self,
        eval_metrics: dict[str, str] | None = None,
        optimizer_names: list[str] | None = None,
        **monitor_kwargs: Any,
    ) -> None:
        self.eval_metrics = eval_metrics
        self.optimizer_names = optimizer_names
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._restored: dict[str, Any] | None = None  # from a checkpoint, until training starts

    # --- the run's life ---------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = self._optimizers(trainer)
        kwargs = {**self._trainer_lengths(trainer), **self.monitor_kwargs}
        restored, self._restored = self._restored, None
        if restored is not None:
            kwargs.update(run_id=restored["run_id"], resume_step=restored["monitor"]["step"])
        # Every process builds one: under torch.distributed only rank 0 writes, the others join
        # the probes' collectives (the output statistics are the global batch's).
        self.monitor = Monitor(pl_module, optimizer, **kwargs)
        if restored is not None:
            self.monitor.load_state_dict(restored["monitor"])
        # Lightning calls on_train_batch_end after the optimizer step: the outputs come late.
        self.monitor.attach(None if isinstance(optimizer, dict) else optimizer, outputs_after_step=True)

    def _optimizers(self, trainer: pl.Trainer) -> Any:
        """The trainer's optimizer, or with several, a dict of them by name."""
        optimizers = list(trainer.optimizers)
        if not optimizers:
            raise ValueError("LawnMonitorCallback: the LightningModule has no optimizer (configure_optimizers)")
        if len(optimizers) == 1:
            return optimizers[0]
        names = self.optimizer_names or [f"opt{i}" for i in range(len(optimizers))]
        if len(names) != len(optimizers):
            raise ValueError(
                f"LawnMonitorCallback: {len(names)} optimizer_names for {len(optimizers)} optimizers: give one each"
            )
        return dict(zip(names, optimizers))

    @staticmethod
    def _trainer_lengths(trainer: pl.Trainer) -> dict[str, int]:
        lengths = {}
        batches = trainer.num_training_batches
        if isinstance(batches, int) or math.isfinite(batches):
            lengths["steps_per_epoch"] = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
        total = trainer.estimated_stepping_batches
        if math.isfinite(total):
            lengths["total_steps"] = int(total)
        return lengths

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None:
            return
        if isinstance(outputs, dict):
            loss, logits, targets = outputs.get("loss"), outputs.get("logits"), outputs.get("targets")
        else:
            loss, logits, targets = outputs, None, None
        if loss is not None and pl_module.automatic_optimization:
            # Lightning hands back the loss divided by accumulate_grad_batches (what it
            # backpropagated); the Monitor records the batch's own.
            loss = loss * trainer.accumulate_grad_batches
        self.monitor.observe(loss=loss, logits=logits, targets=targets)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Lightning calls this before it clips the gradients: their norm before clipping."""
        if self.monitor is None or not trainer.gradient_clip_val or not pl_module.automatic_optimization:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self.monitor.record_preclip(total, optimizer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._log_eval(trainer, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self._log_eval(trainer, "test")

    def _log_eval(self, trainer: pl.Trainer, split: str) -> None:
        """The evaluation's logged metrics of this split, under their stored names."""
        if self.monitor is None:
            return
        given: dict[str, Any] = {}
        for name, value in trainer.callback_metrics.items():
            if self.eval_metrics is not None:
                stored = self.eval_metrics.get(name)
                if stored in ("loss", "acc", "acc5"):  # the older form: a quantity of validation
                    stored = f"val/{stored}"
            else:
                stored = split_metric(name)
            if stored is not None and stored.startswith(f"{split}/"):
                given[stored] = value
        quantities = {name.partition("/")[2]: value for name, value in given.items()}
        known = {q: v for q, v in quantities.items() if q in ("loss", "acc", "acc5")}
        other = {name: v for name, v in given.items() if name.partition("/")[2] not in known}
        if other:
            self.monitor.log(other)
        if known:
            self.monitor.log_eval(split=split, **known)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SystemExit)):  # Ctrl-C; SIGTERM (SIGTERMException)
            self._close("interrupted")
        else:
            error = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
            self._close("failed", error=error)

    def _close(self, status: str | None = None, error: str | None = None) -> None:
        if self.monitor is not None:
            self.monitor.close(status, error=error)
            self.monitor = None

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The Monitor's place, saved in Lightning's checkpoints. Its rows so far are made
        durable first, so that a resumed run finds every row up to the checkpoint's step."""
        if self.monitor is None or not self.monitor.writes:
            return {}
        self.monitor.flush(durable=True)
        return {"run_id": self.monitor.run_id, "monitor": self.monitor.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning restores callbacks before training starts; the Monitor is built then, on
        the same run, from this state (``Monitor(run_id=..., resume_step=...)``)."""
        self._restored = dict(state_dict) if state_dict else None
