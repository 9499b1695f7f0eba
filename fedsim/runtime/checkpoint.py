"""Checkpoints: everything a run needs to continue bit for bit after any round, as plain data on disk.

Random draws come from named streams keyed by (seed, name, round, client, ...), so there is no RNG state to
save: a checkpoint holds the schedule's state (virtual clock with its pending events, counters, clients in
flight), the global adapter versions still referenced, the round records and per-device totals so far, and the
initial evaluation. Resuming truncates the ledger (rounds.jsonl, clients.parquet, TensorBoard) back to the
checkpoint's round, so nothing after it is counted twice.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from fedsim.errors import ConfigError
from fedsim.metrics.ledger import PARTS, read_client_parts

KEEP = 2  # newest checkpoints kept


def save(run_dir: Path, rnd: int, state: dict[str, Any], versions: dict[int, dict[str, np.ndarray]]) -> Path:
    """Write checkpoints/round_NNNNN atomically (temp dir, then rename) and drop all but the newest KEEP."""
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"round_{rnd:05d}"
    tmp = root / f".tmp_round_{rnd:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "state.pkl").write_bytes(pickle.dumps({**state, "round": rnd}))
    for version, tensors in versions.items():
        np.savez(tmp / f"global_v{version:05d}.npz", **tensors)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("round_*"))[:-KEEP]:
        shutil.rmtree(old)
    return final


def latest(run_dir: Path) -> tuple[dict[str, Any], dict[int, dict[str, np.ndarray]]]:
    """(state, global versions) of the newest checkpoint in run_dir."""
    found = sorted((run_dir / "checkpoints").glob("round_*"))
    if not found:
        raise ConfigError("--resume", f"{run_dir} has no checkpoint to resume from")
    path = found[-1]
    state = pickle.loads((path / "state.pkl").read_bytes())  # noqa: S301 - fedsim's own checkpoint
    versions = {}
    for f in sorted(path.glob("global_v*.npz")):
        with np.load(f) as data:
            versions[int(f.stem.removeprefix("global_v"))] = {k: data[k] for k in data.files}
    return state, versions


def truncate_ledger(run_dir: Path, rnd: int) -> list[dict[str, Any]]:
    """Cut rounds.jsonl and the client table back to rounds <= rnd; return the kept round rows."""
    rounds_path = run_dir / "rounds.jsonl"
    kept = [json.loads(line) for line in rounds_path.read_text().splitlines() if line.strip()]
    kept = [r for r in kept if r["round"] <= rnd]
    rounds_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    for name in ("clients.parquet", "clients_by_device.parquet"):
        table = read_client_parts(run_dir, name)
        if table is None:
            continue
        shutil.rmtree(run_dir / PARTS, ignore_errors=True)
        (run_dir / PARTS).mkdir()
        kept_rows = table.filter(np.asarray(table.column("round")) <= rnd)
        pq.write_table(kept_rows, run_dir / PARTS / "000000.parquet")  # the ledger continues after this part
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)
    for stale in ("report.html", "summary.json", "budget.png"):
        (run_dir / stale).unlink(missing_ok=True)
    return kept
