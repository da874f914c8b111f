"""lawn-monitor: training-dynamics diagnostics for PyTorch (loss flattening, weight adaptivity, LAWN).

``LAWN``, ``Monitor`` and ``RunStore`` are imported on first use, so that the read side (the
dashboard, ``RunStore``, the sink in a writer process) starts without importing torch.
"""

from __future__ import annotations

import importlib

__all__ = ["LAWN", "Monitor", "RunStore"]
__version__ = "0.1.0"

_HOMES = {"LAWN": ".optim", "Monitor": ".monitor", "RunStore": ".store"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
