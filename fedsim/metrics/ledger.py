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


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Ledger:
    """Appends one JSON line per round, Parquet row groups of client rows, TensorBoard scalars."""

    def __init__(self, run_dir: str, flush_rows: int = 65536):
        from tensorboard.summary import Writer

        self.dir = Path(run_dir)
        self._rounds = open(self.dir / "rounds.jsonl", "a", encoding="utf-8")
        self._parquet = pq.ParquetWriter(str(self.dir / "clients.parquet"), CLIENT_SCHEMA)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._flush_rows = flush_rows
        self._tb = Writer(str(self.dir / "tb"))

    def record(self, round_row: dict[str, Any], client_cols: dict[str, list]) -> None:
        """Write one round: its summary line, its client rows, its scalars."""
        row = {k: _clean(v) for k, v in round_row.items()}
        self._rounds.write(json.dumps(row) + "\n")
        self._rounds.flush()
        table = pa.table(client_cols, schema=CLIENT_SCHEMA)
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
