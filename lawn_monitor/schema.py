"""The storage contract in code (docs/storage.md describes it for readers outside Python): the
columns of every Parquet file, the statuses a writer records in run.json, and how rows are
encoded. Owned here, so that the writer (sink), the compactor and the readers share one copy.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("wall_time", pa.float64()),
        ("layer", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)

# What a writer records; ``pruned``: a tuner stopped the run early as hopeless (lawn-monitor tune).
STATUSES = ("running", "finished", "failed", "diverged", "interrupted", "pruned")
# What a reader may show besides: ``stale`` (a running run whose writer stopped beating) and
# ``damaged`` (its run.json is unusable): never written, judged when the store is read.
READ_STATUSES = (*STATUSES, "stale", "damaged")


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """Encode a table as Parquet: dictionaries for the repetitive text columns only, and
    min/max statistics only on the columns queries filter by (twice as fast to write as the
    defaults, and no larger)."""
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression="zstd",
        row_group_size=row_group_size,
        use_dictionary=["run_id", "layer", "metric"],
        write_statistics=["step", "layer", "metric"],
        # No Arrow schema in the file: text reads back as plain strings (the storage
        # contract), even from compacted files that were built from dictionaries.
        store_schema=False,
    )
    return buf.getvalue()
