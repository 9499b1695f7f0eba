"""The aggregator actor: owns the global adapter, folds client updates in as they arrive, keeps the ledger.

Updates stream in (memory O(adapter), see `fedsim.strategies.fedavg`); they are folded in the clock's arrival
order whatever order they physically arrive in, so the result is bit-identical for any number of workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.metrics.ledger import Ledger
from fedsim.strategies.fedavg import OrderedFold, WeightedMean, apply_update


class Aggregator:
    """Central server state (wrapped by `ray.remote`); one instance per run."""

    def __init__(self, run_dir: str, global_state: dict[str, np.ndarray], server_lr: float,
                 resume_rows: list[dict[str, Any]] | None = None):
        self.global_state = {k: np.array(v, dtype=np.float32) for k, v in global_state.items()}
        self.server_lr = server_lr
        self.ledger = Ledger(run_dir, resume_rows=resume_rows)
        self.begin(0)

    def begin(self, rnd: int) -> None:
        """Start collecting the updates of round `rnd`."""
        self.round = rnd
        self.deltas = WeightedMean()
        self.losses: dict[int, float] = {}
        self.loss_sum = 0.0
        self.fold = OrderedFold(self._fold)

    def _fold(self, seq: int, weight: float, loss: float, delta: dict[str, np.ndarray]) -> None:
        self.deltas.add(weight, delta)
        self.loss_sum += weight * loss
        self.losses[seq] = loss

    def put(self, seq: int, result: tuple) -> None:
        """Accept the update of the seq-th client in arrival order: (num_samples, loss, delta)."""
        weight, loss, delta = result
        self.fold.put(seq, seq, weight, loss, delta)

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Apply the round's weighted mean delta to the global adapter; return (global, round stats)."""
        self.global_state = apply_update(self.global_state, self.deltas.mean(), self.server_lr)
        stats = {
            "aggregated": self.deltas.count,
            "train_loss": self.loss_sum / self.deltas.weight if self.deltas.count else None,
            "client_losses": [self.losses[i] for i in sorted(self.losses)],
            "reorder_peak": self.fold.peak_waiting,
        }
        return self.global_state, stats

    def current(self) -> dict[str, np.ndarray]:
        """The global adapter now."""
        return self.global_state

    def record(self, round_row: dict[str, Any], client_cols: dict[str, list]) -> None:
        """Append a closed round to the ledger and make it durable (a crash keeps every finished round)."""
        self.ledger.record(round_row, client_cols)
        self.ledger.flush(parquet=True)

    def flush(self) -> None:
        """Returns once every round recorded before it is on disk (rounds are flushed as they are recorded)."""
        self.ledger.flush(parquet=True)

    def close(self) -> None:
        """Flush and close the ledger files."""
        self.ledger.close()
