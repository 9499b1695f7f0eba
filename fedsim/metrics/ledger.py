"""The cost ledger: rounds.jsonl, clients.parquet and TensorBoard scalars, streamed to disk.

Rows are appended as rounds close and flushed, so memory does not grow with the number of rounds or clients
and a crashed run keeps every round it finished.
"""

from __future__ import annotations

import json
import math
import shutil
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


PARTS = ".clients_parts"  # complete Parquet files of client rows, merged into the client table at close


def read_client_parts(run_dir: Path, name: str) -> pa.Table | None:
    """Every client row on disk: the merged table (if a previous invocation closed it) and the part files."""
    tables = [pq.read_table(run_dir / name)] if (run_dir / name).is_file() else []
    tables += [pq.read_table(p) for p in sorted((run_dir / PARTS).glob("*.parquet"))]
    return pa.concat_tables(tables) if tables else None


class Ledger:
    """Appends one JSON line per round, client (or per-device) rows, TensorBoard scalars.

    Client rows go out as complete Parquet part files (a Parquet file is readable only once closed, so one
    growing file would be lost in a crash) and are merged into clients.parquet (or clients_by_device.parquet)
    at close. `resume_rows` continues a run cut back to a checkpoint (see `fedsim.runtime.checkpoint`).
    """

    def __init__(self, run_dir: str, flush_rows: int = 65536, per_device: bool = False,
                 resume_rows: list[dict[str, Any]] | None = None):
        from fedsim.metrics.tb import ScalarWriter

        self.dir = Path(run_dir)
        self._rounds = open(self.dir / "rounds.jsonl", "a", encoding="utf-8")
        self.schema = DEVICE_SCHEMA if per_device else CLIENT_SCHEMA
        self.name = "clients_by_device.parquet" if per_device else "clients.parquet"
        (self.dir / PARTS).mkdir(exist_ok=True)
        self._part = len(list((self.dir / PARTS).glob("*.parquet")))
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._flush_rows = flush_rows
        self._tb = ScalarWriter(self.dir / "tb")
        for row in resume_rows or []:
            self._scalars(row)

    def record(self, round_row: dict[str, Any], client_cols: dict[str, Any]) -> None:
        """Write one round: its summary line, its client (or per-device) rows (buffered), its scalars."""
        row = {k: _clean(v) for k, v in round_row.items()}
        self._rounds.write(json.dumps(row) + "\n")
        self._pending.append(client_cols)
        self._pending_rows += len(client_cols["round"])
        if self._pending_rows >= self._flush_rows:
            self._flush()
        self._scalars(row)

    def _scalars(self, row: dict[str, Any]) -> None:
        self._tb.add(row["round"], {f"round/{k}": v for k, v in row.items()
                                    if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)})

    def flush(self, parquet: bool = False) -> None:
        """Make everything recorded so far durable: rounds.jsonl, TensorBoard, and (`parquet`) pending client rows
        as a part file (otherwise they go out every `flush_rows` rows)."""
        self._rounds.flush()
        self._tb.flush()
        if parquet:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            cols = {f.name: pa.array(np.concatenate([np.asarray(p[f.name]) for p in self._pending]), type=f.type,
                                     from_pandas=True) for f in self.schema}
            pq.write_table(pa.table(cols, schema=self.schema), self.dir / PARTS / f"{self._part:06d}.parquet")
            self._part += 1
        self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        """Flush, merge the client-row parts into one table, close every file."""
        self._flush()
        table = read_client_parts(self.dir, self.name)
        pq.write_table(table if table is not None else self.schema.empty_table(), self.dir / self.name)
        shutil.rmtree(self.dir / PARTS, ignore_errors=True)
        self._rounds.close()
        self._tb.close()
