"""Forward the Monitor's whole-model scalars to the tracker you already use (W&B, MLflow).

    run = wandb.init(project="lawn")
    monitor = Monitor(model, optimizer, forward_to=WandbForwarder(run))

    with mlflow.start_run():
        monitor = Monitor(model, optimizer, forward_to=MLflowForwarder())

The store keeps every value (per layer too); the tracker gets the whole-model ones (layer ``""``:
``train/loss``, ``lr``, ``grad_norm``, ``test/acc``, values of ``monitor.log``, ...) with their
steps. They are sent once per flush (every ``flush_secs``, 2 s by default), after the flush's
rows are on the host and in the store: forwarding adds no device sync and no per-step call.

The run's config goes with the first flush: W&B's ``run.config`` (nested as given, plus
``lawn_monitor_run_id``), MLflow's params (nested keys joined with ``.``: ``lawn.free_epochs``;
values as text, cut at MLflow's 6000 characters) and the tag ``lawn_monitor.run_id``, so the
tracker's run says which run of the store it is.

A forwarder is any object with ``forward(table)``, called with each flush's rows (a pyarrow
Table in the store's SCHEMA), and optionally ``start(run_id, config)``, called once when the
Monitor opens its run. If it raises, the Monitor warns once per forwarder and goes on:
a tracker's outage never stops training. wandb and mlflow are imported only by their
forwarder, so the core never needs them.

W&B: the steps are W&B's own (``run.log(values, step=step)``), and W&B drops a step lower than
one already logged. So let the Monitor be the only one to pass ``step=``: log your own values
through ``monitor.log(...)`` (forwarded too) or without a step.

MLflow: the ``[mlflow]`` extra installs ``mlflow-skinny`` with ``sqlalchemy`` and ``alembic``,
which its local ``sqlite:///mlflow.db`` store needs (MLflow's recommended local store; its
``file:`` store is in maintenance mode and refuses to open without ``MLFLOW_ALLOW_FILE_STORE``).
A tracking server (``http://...``) needs neither. A metric name may only hold letters, digits,
``_ - . / `` and spaces, and no empty, ``.`` or ``..`` path part; any other character becomes
``_`` (the colon too, which Windows refuses) and such parts are dropped: ``top1@val`` ->
``top1_val``. Values go in batches of at most 1000 (MLflow's limit per request), each with its
step and wall time; infinities are stored by MLflow as the largest float.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

MLFLOW_BATCH = 1000  # MLflow's limit on metrics per log_batch request
MLFLOW_PARAMS = 100  # MLflow's limit on params per log_batch request
MLFLOW_PARAM_LENGTH = 6000  # MLflow's limit on a param's value, in characters


def flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b": "value"}``, values as text (MLflow's params)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = str(value)[:MLFLOW_PARAM_LENGTH]
    return flat


def whole_model(table: pa.Table) -> list[tuple[int, float, dict[str, float]]]:
    """The whole-model rows (layer ``""``) of a flush as ``(step, wall_time, {metric: value})``
    in step order; a metric given twice at one step keeps the value written last."""
    rows = table.filter(pc.equal(table["layer"], ""))
    by_step: dict[int, tuple[float, dict[str, float]]] = {}
    for step, wall, metric, value in zip(
        rows["step"].to_pylist(), rows["wall_time"].to_pylist(), rows["metric"].to_pylist(), rows["value"].to_pylist()
    ):
        wall_then, values = by_step.setdefault(step, (wall, {}))
        values[metric] = value
        by_step[step] = (max(wall_then, wall), values)
    return [(step, wall, values) for step, (wall, values) in sorted(by_step.items())]


def mlflow_name(name: str) -> str:
    """``name`` as a valid MLflow metric name (see the module docstring)."""
    clean = re.sub(r"[^/\w.\- ]", "_", name)
    parts = [p for p in clean.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


class WandbForwarder:
    """Log each flush's whole-model scalars to a W&B run: ``run.log(values, step=step)``.

    Args:
        run: the run (from ``wandb.init``); default the current ``wandb.run``.
        prefix: put before every name (e.g. ``"lawn/"``) to keep them apart from your own.
    """

    def __init__(self, run=None, prefix: str = "") -> None:
        if run is None:
            try:
                import wandb
            except ImportError:
                raise ImportError("WandbForwarder needs wandb: pip install wandb") from None
            run = wandb.run
        if run is None:
            raise ValueError("WandbForwarder: no W&B run; call wandb.init(...) first or pass run=")
        self.run = run
        self.prefix = prefix
        self.config: dict | None = None  # sent with the first flush

    def start(self, run_id: str, config: dict) -> None:
        self.config = {**config, "lawn_monitor_run_id": run_id}

    def forward(self, table: pa.Table) -> None:
        if self.config is not None:
            self.run.config.update(self.config, allow_val_change=True)
            self.config = None
        for step, _, values in whole_model(table):
            self.run.log({self.prefix + k: v for k, v in values.items()}, step=step)


class MLflowForwarder:
    """Log each flush's whole-model scalars to an MLflow run, in batches (``log_batch``).

    Args:
        run_id: the run; default the run active (``mlflow.start_run``) at each flush.
        prefix: put before every name (e.g. ``"lawn/"``).
    """

    def __init__(self, run_id: str | None = None, prefix: str = "") -> None:
        try:
            import mlflow  # noqa: F401  (fail here, before training, if it is missing)
        except ImportError:
            raise ImportError("MLflowForwarder needs mlflow: pip install mlflow") from None

        self.run_id = run_id
        self.prefix = prefix
        self._client: Any = None  # an mlflow.MlflowClient, made on the first flush
        self._start: tuple[str, dict] | None = None  # the store's run id and config, sent with the first flush

    def start(self, run_id: str, config: dict) -> None:
        self._start = (run_id, config)

    def _send_config(self, run_id: str) -> None:
        from mlflow.entities import Param, RunTag

        lawn_run_id, config = self._start  # type: ignore[misc]
        params = [Param(mlflow_name(k), v) for k, v in flat_config(config).items()]
        self._client.log_batch(run_id, params=params[:MLFLOW_PARAMS], tags=[RunTag("lawn_monitor.run_id", lawn_run_id)])
        for i in range(MLFLOW_PARAMS, len(params), MLFLOW_PARAMS):
            self._client.log_batch(run_id, params=params[i : i + MLFLOW_PARAMS])
        self._start = None

    def forward(self, table: pa.Table) -> None:
        import mlflow
        from mlflow.entities import Metric

        run_id = self.run_id
        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise RuntimeError("MLflowForwarder: no active MLflow run; call mlflow.start_run() or pass run_id=")
            run_id = active.info.run_id
        if self._client is None:
            self._client = mlflow.MlflowClient()
        if self._start is not None:
            self._send_config(run_id)
        metrics = []
        for step, wall, values in whole_model(table):
            stamp = int(1000 * (wall if math.isfinite(wall) else time.time()))  # milliseconds
            metrics += [Metric(mlflow_name(self.prefix + name), value, stamp, step) for name, value in values.items()]
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self._client.log_batch(run_id, metrics=metrics[i : i + MLFLOW_BATCH])
