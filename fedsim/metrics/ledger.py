"""The cost ledger: rounds.jsonl, clients.parquet and TensorBoard scalars, streamed to disk.

Rows are appended as rounds close and flushed, so memory does not grow with the number of rounds or clients
and a crashed run keeps every round it finished.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLIENT_SCHEMA = pa.schema([
    ("round", pa.int32()),
    ("client_id", pa.int64()),
    ("device", pa.string()),
    ("network", pa.string()),
    ("status", pa.string()),
    ("failed_phase", pa.string()),
    ("quantization", pa.string()),
    ("start_s", pa.float64()),
    ("t_download_s", pa.float64()),
    ("t_compute_s", pa.float64()),
    ("t_upload_s", pa.float64()),
    ("finish_s", pa.float64()),
    ("version", pa.int64()),
    ("staleness", pa.int64()),
    ("bytes_up", pa.float64()),
    ("bytes_down", pa.float64()),
    ("energy_j", pa.float64()),
    ("num_samples", pa.int64()),
    ("trained", pa.bool_()),
    ("train_loss", pa.float64()),
])


# clients_by_device.parquet: replaces clients.parquet when the per-client rows would exceed a row limit.
DEVICE_SCHEMA = pa.schema([
    ("round", pa.int32()),
    ("device", pa.string()),
    ("status", pa.string()),
    ("clients", pa.int64()),
    ("t_download_s", pa.float64()),
    ("t_compute_s", pa.float64()),
    ("t_upload_s", pa.float64()),
    ("bytes_up", pa.float64()),
    ("bytes_down", pa.float64()),
    ("energy_j", pa.float64()),
])


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Ledger:
    """Appends one JSON line per round, Parquet row groups of client rows, TensorBoard scalars."""

    def __init__(self, run_dir: str, flush_rows: int = 65536, per_device: bool = False):
        from fedsim.metrics.tb import ScalarWriter

        self.dir = Path(run_dir)
        self._rounds = open(self.dir / "rounds.jsonl", "a", encoding="utf-8")
        self.schema = DEVICE_SCHEMA if per_device else CLIENT_SCHEMA
        name = "clients_by_device.parquet" if per_device else "clients.parquet"
        self._parquet = pq.ParquetWriter(str(self.dir / name), self.schema)
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._flush_rows = flush_rows
        self._tb = ScalarWriter(self.dir / "tb")

    def record(self, round_row: dict[str, Any], client_cols: dict[str, Any]) -> None:
        """Write one round: its summary line, its client (or per-device) rows (buffered), its scalars."""
        row = {k: _clean(v) for k, v in round_row.items()}
        self._rounds.write(json.dumps(row) + "\n")
        self._pending.append(client_cols)
        self._pending_rows += len(client_cols["round"])
        if self._pending_rows >= self._flush_rows:
            self._flush()
        self._tb.add(row["round"], {f"round/{k}": v for k, v in row.items()
                                    if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)})

    def flush(self) -> None:
        """Make everything recorded so far durable (rounds.jsonl, TensorBoard; Parquet row groups as they fill)."""
        self._rounds.flush()
        self._tb.flush()

    def _flush(self) -> None:
        if self._pending:
            cols = {f.name: pa.array(np.concatenate([np.asarray(p[f.name]) for p in self._pending]), type=f.type,
                                     from_pandas=True) for f in self.schema}
            self._parquet.write_table(pa.table(cols, schema=self.schema))
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        """Flush and close every file."""
        self._flush()
        self._parquet.close()
        self._rounds.close()
        self._tb.close()
