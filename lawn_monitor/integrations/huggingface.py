"""Hugging Face: a ``transformers.TrainerCallback`` that records every optimizer step of a
``Trainer`` with a Monitor.

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[LawnMonitorCallback(config=...)])
    trainer.train()

Steps are recorded in ``on_optimizer_step``: once per real step under
``gradient_accumulation_steps``, none for a step the fp16 gradient scaler skipped, numbered as
the Trainer numbers them (``state.global_step``). The loss, logits and labels of each training
forward are taken from the model's own output (a forward hook, in training mode only): a causal
LM's labels are shifted to the next tokens, as its loss does, and labels of -100 are left out.
Evaluation's metrics are named by the project's one rule (``lawn_monitor.names``): the
Trainer's ``eval_loss`` / ``eval_accuracy`` (its ``eval_dataset``, data held out of training)
become ``val/loss`` / ``val/acc``; ``trainer.evaluate(test_data, metric_key_prefix="test")``
gives ``test/loss`` / ``test/acc``. With ``max_grad_norm`` set (the Trainer's default is 1.0),
the norm the Trainer logs as ``grad_norm`` is the norm before clipping: it is recorded as
``grad_norm_preclip`` on each logging step (``logging_steps``); the Monitor's ``grad_norm`` is
the norm after clipping, what the optimizer received.
Every process builds a Monitor; under torch.distributed only rank 0 writes (the others join the
probes' collectives); the run ends ``finished`` when
training ends. Curvature (``probe_batch=(input_ids, targets)``) calls the model on the input
ids; for a causal LM the targets are the next tokens, e.g.
``F.pad(input_ids[:, 1:], (0, 1), value=-100)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TrainerCallback
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..monitor import Monitor
from ..names import split_metric
from ..outputs import IGNORE_INDEX


def is_causal_lm(model: nn.Module) -> bool:
    """Whether the model predicts the next token (its loss shifts the labels by one)."""
    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def next_token_targets(labels: Tensor) -> Tensor:
    """Labels (B, T) as the targets of each position's logits in a causal LM: the next token,
    and ``IGNORE_INDEX`` at the last position, which predicts nothing seen."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


class LawnMonitorCallback(TrainerCallback):
    """Builds a Monitor when training begins and closes it when training ends.

    Args:
        shift_labels: whether the labels are shifted to the next token (causal LMs); default
            from the model's class (``is_causal_lm``).
        **monitor_kwargs: passed to ``Monitor`` (``root``, ``name``, ``config``, ``probe_batch``,
            ``probe_config``, ``logits_fn``, ...); ``total_steps`` is the Trainer's ``max_steps``.
    """

    def __init__(self, shift_labels: bool | None = None, **monitor_kwargs: Any) -> None:
        self.shift_labels = shift_labels
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        kwargs = {"total_steps": state.max_steps or None, **self.monitor_kwargs}
        if args.num_train_epochs and state.max_steps:
            kwargs.setdefault("steps_per_epoch", max(1, round(state.max_steps / args.num_train_epochs)))
        # Every process builds one: under torch.distributed only rank 0 writes, the others join
        # the probes' collectives (the output statistics are the global batch's).
        self.monitor = Monitor(model, optimizer, **kwargs)
        if self.shift_labels is None:
            self.shift_labels = is_causal_lm(model)
        if self.monitor.enabled:
            self._hook = model.register_forward_hook(self._observe, with_kwargs=True)

    @torch.no_grad()
    def _observe(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Each training forward's outputs, for the step they are part of."""
        if not module.training or self.monitor is None:
            return  # evaluation, or the curvature probes (which run in eval mode)
        labels = kwargs.get("labels")
        try:
            logits = self.monitor.logits_fn(output)
        except TypeError:
            logits = None
        if logits is None or labels is None or labels.is_floating_point() or logits.shape[:-1] != labels.shape:
            # No class labels to compare with (e.g. regression): the model's own loss only.
            loss = getattr(output, "loss", None)
            self.monitor.observe(loss=loss)
            return
        targets = next_token_targets(labels) if self.shift_labels else labels
        # The mean cross-entropy of this batch, not the model's ``loss``: under gradient
        # accumulation the Trainer has the model divide its summed loss by the tokens of the
        # whole accumulated batch (num_items_in_batch), not by this micro-batch's.
        flat_logits, flat_targets = logits.detach().float().flatten(0, -2), targets.flatten()
        loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX)
        self.monitor.observe(loss=loss, logits=logits, targets=targets)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # Right after optimizer.step(), before the LR scheduler's step and zero_grad(): the
        # gradients are still there (on_step_end comes after zero_grad, too late).
        if self.monitor is None or getattr(optimizer, "step_was_skipped", False):
            return  # a step the fp16 gradient scaler skipped (inf or NaN gradients)
        self.monitor.step(step=state.global_step + 1)  # the Trainer counts it after this event

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.monitor is None or not metrics:
            return
        by_split: dict[str, dict[str, float]] = {}
        for name, value in metrics.items():
            stored = split_metric(name)
            if stored is not None and isinstance(value, (int, float)):
                split, _, quantity = stored.partition("/")
                by_split.setdefault(split, {})[quantity] = value
        for split, given in by_split.items():
            self.monitor.log_eval(split=split, **given)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The Trainer logs the value clip_grad_norm_ returned: the norm before clipping, a host
        # float already (the Trainer synchronized for it), at the step just taken.
        if self.monitor is not None and logs and isinstance(logs.get("grad_norm"), (int, float)):
            if self.monitor.step_count == state.global_step:
                self.monitor.log({"grad_norm_preclip": float(logs["grad_norm"])})

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
