"""lawn-monitor: training-dynamics diagnostics for PyTorch (loss flattening, weight adaptivity, LAWN)."""
from .monitor import Monitor
from .optim import LAWN
from .store import RunStore

__all__ = ["LAWN", "Monitor", "RunStore"]
__version__ = "0.1.0"
