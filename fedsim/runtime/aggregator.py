"""The aggregator actor: owns the global adapter, folds client updates in as they arrive, keeps the ledger.

Updates stream in (memory O(adapter), see `fedsim.strategies.fedavg`; a robust rule holds the round's
updates instead, O(cohort x adapter), see `fedsim.strategies.robust`); they are folded in the clock's arrival
order whatever order they physically arrive in, so the result is bit-identical for any number of workers. A
non-finite or empty update is quarantined (counted, never folded): one NaN must not poison the global model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fedsim.client_round import ClientResult, state_digest
from fedsim.metrics.ledger import Ledger
from fedsim.strategies.fedavg import OrderedFold, WeightedMean
from fedsim.strategies.robust import clip_norm, combine
from fedsim.strategies.server_opt import from_server_config


class Aggregator:
    """Central server state (wrapped by `ray.remote`); one instance per run."""

    def __init__(self, run_dir: str, global_state: dict[str, np.ndarray], server: dict[str, Any],
                 resume_rows: list[dict[str, Any]] | None = None, opt_state: dict[str, Any] | None = None,
                 version: int = 0):
        self.global_state = {k: np.array(v, dtype=np.float32) for k, v in global_state.items()}
        self.server = server
        self.opt = from_server_config(server)
        self.opt.restore(opt_state)
        self.opt_states = {"current": self.opt.state(), "before": None}  # around the last finished round
        self.finished = version  # the global version the run (re)starts from
        self.ledger = Ledger(run_dir, resume_rows=resume_rows)
        self.begin(0)

    def begin(self, rnd: int) -> None:
        """Start collecting the updates of round `rnd`."""
        self.round = rnd
        self.deltas = WeightedMean()
        self.held: list[dict[str, np.ndarray]] = []  # a robust rule's round: every update, in fold order
        self.clipped = 0
        self.results: dict[int, ClientResult] = {}
        self.loss_sum = 0.0
        self.loss_weight = 0.0
        self.fold = OrderedFold(self._fold)

    def _fold(self, seq: int, weight: float, norm: float, result: ClientResult, delta: dict[str, np.ndarray]) -> None:
        if result.finite and not all(np.isfinite(v).all() for v in delta.values()):
            result = dataclasses.replace(result, finite=False)  # the server checks what it folds itself
        self.results[seq] = result
        if not result.finite or weight <= 0:
            return
        if self.server["clip_norm"] is not None:
            delta, clipped = clip_norm(delta, self.server["clip_norm"])
            self.clipped += clipped
        if self.server["aggregation"] == "mean":
            self.deltas.add(weight * result.num_samples, delta, norm * result.num_samples)
        else:  # robust rules combine unweighted, as their papers define them, but a FedBuff update keeps its
            scale = weight / norm  # staleness discount (1 in sync rounds)
            self.held.append(delta if scale == 1 else {k: v * scale for k, v in delta.items()})
        self.loss_sum += norm * result.num_samples * result.loss
        self.loss_weight += norm * result.num_samples

    def put(self, seq: int, weight: float, norm: float, result: ClientResult, delta: dict[str, np.ndarray]) -> None:
        """Accept the update of the seq-th client in arrival order. Its weight in the mean is weight x samples
        over a normaliser norm x samples (FedAvg: weight = norm = 1; FedBuff: weight = staleness discount)."""
        self.fold.put(seq, seq, weight, norm, result, delta)

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Apply the round's mean delta to the global adapter; return (global, round stats)."""
        before = self.opt.state()
        s = self.server
        combined, fallback = self.deltas.mean(), False
        if s["aggregation"] != "mean" and self.held:
            combined, fallback = combine(s["aggregation"], self.held, s["trim_fraction"], s["krum_byzantine"],
                                         s["krum_select"])
        self.global_state = self.opt.step(self.global_state, combined)
        self.opt_states, self.finished = {"current": self.opt.state(), "before": before}, self.round
        ordered = [self.results[i] for i in sorted(self.results)]
        stats = {
            "aggregated": self.deltas.count + len(self.held),
            "received": len(ordered),
            "quarantined": sum(not r.finite for r in ordered),
            "clipped": self.clipped,
            "robust_fallback": bool(fallback),
            "rows_dropped": sum(r.rows_dropped for r in ordered),
            "train_loss": self.loss_sum / self.loss_weight if self.loss_weight else None,
            "results": ordered,
            "reorder_peak": self.fold.peak_waiting,
            "global_sha": state_digest(self.global_state),
        }
        return self.global_state, stats

    def server_state(self, rnd: int) -> dict[str, Any]:
        """The server optimizer's state as it was when global version `rnd` was made (a checkpoint after round
        `rnd`, or before round `rnd + 1` when that round is abandoned), as plain data."""
        if self.finished == rnd:
            return self.opt_states["current"]
        if self.finished == rnd + 1:
            return self.opt_states["before"]
        raise ValueError(f"no server-optimizer state for version {rnd} (last round finished: {self.finished})")

    def current(self) -> dict[str, np.ndarray]:
        """The global adapter now."""
        return self.global_state

    def digest(self) -> str:
        """`state_digest` of the global adapter now (the initial version's provenance)."""
        return state_digest(self.global_state)

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
