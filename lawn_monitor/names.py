"""The one naming rule for evaluation and training metrics, used by the loop (``log_eval``), the
framework adapters and the TensorBoard import (see "Metric names from other tools" in
docs/storage.md).

A name made of a split and a quantity, in either order, joined by ``/``, ``_`` or ``-``
(case-insensitive), is stored as ``<split>/<quantity>``:

    split:    train, training                          -> train
              val, valid, validation, eval, dev        -> val   (data held out of training:
                                                                 Lightning's val_*, HF's eval_*)
              test                                     -> test  (the test set)
    quantity: loss -> loss;  acc, accuracy -> acc;  acc5, top5, top5_acc -> acc5

so ``val_loss``, ``eval/loss``, ``eval_loss``, ``Loss/validation`` are all ``val/loss``, and
``test_acc`` is ``test/acc``. Any other name is kept as it is.
"""

from __future__ import annotations

SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "val",
    "dev": "val",
    "test": "test",
}
QUANTITIES = {"loss": "loss", "acc": "acc", "accuracy": "acc", "acc5": "acc5", "top5": "acc5", "top5_acc": "acc5"}


def split_metric(name: str) -> str | None:
    """``<split>/<quantity>`` for a name the rule covers, else None."""
    low = name.lower()
    for match in _splits(low):
        a, b = match
        if a in SPLITS and b in QUANTITIES:
            return f"{SPLITS[a]}/{QUANTITIES[b]}"
        if a in QUANTITIES and b in SPLITS:
            return f"{SPLITS[b]}/{QUANTITIES[a]}"
    return None


def _splits(name: str) -> list[tuple[str, str]]:
    """Each way to cut ``name`` in two at one separator."""
    return [(name[:i], name[i + 1 :]) for i, c in enumerate(name) if c in "/_-" and 0 < i < len(name) - 1]


def canonical(name: str) -> str:
    """The stored name: ``split_metric``'s where the rule covers it, else ``name`` itself."""
    return split_metric(name) or name
