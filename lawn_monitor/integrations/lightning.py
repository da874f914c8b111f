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
optimizer step: the Monitor writes those statistics for the step just recorded. Validation
metrics logged as ``val_loss`` / ``val_acc`` (``self.log``) are recorded as ``test/loss`` /
``test/acc``. Every process builds a Monitor; under torch.distributed only rank 0 writes, the
others join the probes' collectives (see "Sharded training" in docs/integrations.md). The run ends
``finished`` with ``fit``, ``failed`` on an exception and ``interrupted`` on Ctrl-C. The Monitor's place (run id, step,
probe schedules) is saved in Lightning's checkpoints, so ``trainer.fit(..., ckpt_path=...)``
continues the same run, with no step twice. Curvature (``probe_batch=(inputs, targets)``) calls the LightningModule's
``forward`` on the inputs.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from ..monitor import Monitor


class LawnMonitorCallback(Callback):
    """Builds a Monitor when training starts and closes it when it ends.

    Args:
        eval_metrics: the Monitor's evaluation metric (``loss``, ``acc``, ``acc5``) for each
            name logged in validation (``trainer.callback_metrics``).
        **monitor_kwargs: passed to ``Monitor`` (``root``, ``name``, ``config``, ``probe_batch``,
            ``probe_config``, ``logits_fn``, ...); ``total_steps`` and ``steps_per_epoch`` are
            taken from the trainer unless given.
    """

    def __init__(self, eval_metrics: dict[str, str] | None = None, **monitor_kwargs: Any) -> None:
        self.eval_metrics = eval_metrics if eval_metrics is not None else {"val_loss": "loss", "val_acc": "acc"}
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._restored: dict[str, Any] | None = None  # from a checkpoint, until training starts

    # --- the run's life ---------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"LawnMonitorCallback watches one optimizer; this LightningModule has "
                f"{len(trainer.optimizers)}: build a Monitor per optimizer by hand"
            )
        optimizer = trainer.optimizers[0]
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
        self.monitor.attach(optimizer, outputs_after_step=True)

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

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        given = {kind: metrics[name] for name, kind in self.eval_metrics.items() if name in metrics}
        if given:
            self.monitor.log_eval(**given)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
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
