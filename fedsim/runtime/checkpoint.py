"""Checkpoints: everything a run needs to continue bit for bit after any round, as plain data on disk.

Random draws come from named streams keyed by (seed, name, round, client, ...), so there is no RNG state to
save: a checkpoint holds the schedule's state (virtual clock with its pending events, counters, clients in
flight), the global adapter versions still referenced (npz), the server optimizer's state that goes with the
checkpoint's version (float64 moments, in state.pkl), the per-device totals so far, and the initial
evaluation. It holds no round rows: those are in rounds.jsonl, and `truncate_ledger` returns them when it cuts
the ledger (rounds.jsonl, client rows, TensorBoard) back to the checkpoint's round on resume, so a checkpoint's
size does not grow with the rounds and nothing after it is counted twice.

A checkpoint directory `round_NNNNN` is complete or absent: it is written as `.tmp_round_NNNNN` (every file
fsynced) and renamed into place; old ones are renamed away before they are deleted.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.atomic import atomic_file, atomic_write_bytes, fsync_dir
from fedsim.errors import ConfigError
from fedsim.metrics.ledger import cut_parts, truncate_rounds

KEEP = 2  # newest checkpoints kept


def _rounds(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first (by round number, not by name)."""
    return sorted(root.glob("round_*"), key=lambda p: int(p.name.removeprefix("round_")))


def save(run_dir: Path, rnd: int, state: dict[str, Any], versions: dict[int, dict[str, np.ndarray]]) -> Path:
    """Write checkpoints/round_NNNNN atomically (files fsynced in a temp dir, then one rename) and drop all but
    the newest KEEP. Call it only after the ledger is flushed through `rnd` (`Ledger.flush(parquet=True)`).

    `state` must not hold the round rows (a checkpoint that did would grow with every round).
    """
    if "rows" in state:
        raise ValueError("a checkpoint holds no round rows: they are in rounds.jsonl (see truncate_ledger)")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(exist_ok=True)
    for leftover in [*root.glob(".tmp_round_*"), *root.glob(".old_round_*")]:  # of a crash
        shutil.rmtree(leftover)
    final, tmp = root / f"round_{rnd:05d}", root / f".tmp_round_{rnd:05d}"
    tmp.mkdir()
    atomic_write_bytes(tmp / "state.pkl", pickle.dumps({**state, "round": rnd}))
    for version, tensors in versions.items():
        with atomic_file(tmp / f"global_v{version:05d}.npz") as f:
            np.savez(f, **tensors)
    if final.exists():  # saved again at the same round
        _drop(final, root)
    os.replace(tmp, final)
    fsync_dir(root)
    for path in _rounds(root)[:-KEEP]:
        _drop(path, root)
    return final


def _drop(path: Path, root: Path) -> None:
    """Delete a checkpoint: rename it out of `round_*` first, so a crash mid-delete never leaves a partial one."""
    gone = root / f".old_{path.name}"
    os.replace(path, gone)
    fsync_dir(root)
    shutil.rmtree(gone)


def newest_round(run_dir: Path) -> int | None:
    """Round of the newest complete checkpoint in run_dir, or None."""
    root = Path(run_dir) / "checkpoints"
    found = _rounds(root) if root.is_dir() else []
    return int(found[-1].name.removeprefix("round_")) if found else None


def latest(run_dir: Path) -> tuple[dict[str, Any], dict[int, dict[str, np.ndarray]]]:
    """(state, global versions) of the newest complete checkpoint in run_dir (temp leftovers are skipped)."""
    found = _rounds(Path(run_dir) / "checkpoints") if (Path(run_dir) / "checkpoints").is_dir() else []
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
    """Cut the ledger back to rounds <= rnd and return the kept round rows (parsed from rounds.jsonl).

    rounds.jsonl is rewritten atomically (a torn last line is dropped); the client rows are cut without a crash
    window that loses or doubles a row (`fedsim.metrics.ledger.cut_parts`); TensorBoard scalars and the files
    derived from the finished run (report, summary, figure) are deleted: the resumed run rewrites them. Running
    it again after a crash part way through gives the same result.
    """
    run_dir = Path(run_dir)
    kept = truncate_rounds(run_dir, rnd)
    cut_parts(run_dir, rnd)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)
    for stale in ("report.html", "summary.json", "budget.png"):
        (run_dir / stale).unlink(missing_ok=True)
    return kept
