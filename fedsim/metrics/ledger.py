"""The cost ledger: rounds.jsonl, clients.parquet and TensorBoard scalars, streamed to disk.

Rows are appended as rounds close and flushed, so memory does not grow with the number of rounds or clients
and a crashed run keeps every round it finished.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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
    ("t_download_s", pa.float64()),
    ("t_compute_s", pa.float64()),
    ("t_upload_s", pa.float64()),
    ("finish_s", pa.float64()),
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
        from tensorboard.summary import Writer

        self.dir = Path(run_dir)
        self._rounds = open(self.dir / "rounds.jsonl", "a", encoding="utf-8")
        self.schema = DEVICE_SCHEMA if per_device else CLIENT_SCHEMA
        name = "clients_by_device.parquet" if per_device else "clients.parquet"
        self._parquet = pq.ParquetWriter(str(self.dir / name), self.schema)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._flush_rows = flush_rows
        self._tb = Writer(str(self.dir / "tb"))

    def record(self, round_row: dict[str, Any], client_cols: dict[str, Any]) -> None:
        """Write one round: its summary line, its client (or per-device) rows, its scalars."""
        row = {k: _clean(v) for k, v in round_row.items()}
        self._rounds.write(json.dumps(row) + "\n")
        self._rounds.flush()
        table = pa.table({f.name: pa.array(client_cols[f.name], type=f.type, from_pandas=True) for f in self.schema},
                         schema=self.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self._flush_rows:
            self._flush()
        for key, value in row.items():
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"round/{key}", value, step=row["round"])
        self._tb.flush()

    def _flush(self) -> None:
        if self._pending:
            self._parquet.write_table(pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        """Flush and close every file."""
        self._flush()
        self._parquet.close()
        self._rounds.close()
        self._tb.close()
