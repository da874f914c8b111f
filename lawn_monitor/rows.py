"""The Monitor's row buffer: values wait here between flushes, those computed on the device as
device tensors, and ``take`` turns them into one Arrow table of long-format rows.

``take`` is the one point where logging makes the GPU wait: all device values are concatenated
and copied to the host in a single transfer per device (normally one).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from .outputs import Keys
from .schema import SCHEMA

DeviceRow = tuple[int, float, float, Keys, Tensor]  # step, epoch, wall time, (metric, layer) keys, values
HostRow = tuple[int, float, float, str, str, float]  # step, epoch, wall time, layer, metric, value


class RowBuffer:
    """Rows of one run not written yet."""

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.device: list[DeviceRow] = []
        self.host: list[HostRow] = []

    def __bool__(self) -> bool:
        return bool(self.device or self.host)

    def add(self, step: int, epoch: float, wall: float, keys: Keys, values: Tensor) -> None:
        """Values on the device, one per key (``(metric, layer)``); they stay there until ``take``."""
        self.device.append((step, epoch, wall, keys, values))

    def add_host(self, step: int, epoch: float, wall: float, layer: str, metric: str, value: float) -> None:
        self.host.append((step, epoch, wall, layer, metric, float(value)))

    def take(self) -> pa.Table | None:
        """Every buffered row as one table in the storage schema (None when there is none); the
        buffer starts empty again."""
        device, self.device = self.device, []
        host, self.host = self.host, []
        if not device and not host:
            return None
        cols: dict[str, list] = {"step": [], "epoch": [], "wall_time": [], "layer": [], "metric": []}
        values = _device_values(device, cols)
        for step, ep, wall, layer, metric, _value in host:
            cols["step"].append(step)
            cols["epoch"].append(ep)
            cols["wall_time"].append(wall)
            cols["layer"].append(layer)
            cols["metric"].append(metric)
        values = np.concatenate([values, np.array([r[5] for r in host], dtype=np.float64)])
        n = len(values)
        return pa.table(
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


def _device_values(rows: list[DeviceRow], cols: dict[str, list]) -> np.ndarray:
    """The device rows' values on the host (one copy per device) in row order; their keys and
    times appended to ``cols``."""
    if not rows:
        return np.empty(0)
    by_device: dict[torch.device, list[Tensor]] = {}
    for row in rows:
        by_device.setdefault(row[4].device, []).append(row[4])
    # The one sync point: a single device-to-host copy per device (normally one).
    host = {d: torch.cat(ts).detach().double().cpu().numpy() for d, ts in by_device.items()}
    offsets = {d: 0 for d in host}
    parts = []
    for step, ep, wall, keys, tensor in rows:
        d, n = tensor.device, tensor.numel()
        parts.append(host[d][offsets[d] : offsets[d] + n])
        offsets[d] += n
        cols["step"] += [step] * n
        cols["epoch"] += [ep] * n
        cols["wall_time"] += [wall] * n
        cols["metric"] += [k[0] for k in keys]
        cols["layer"] += [k[1] for k in keys]
    return np.concatenate(parts)
