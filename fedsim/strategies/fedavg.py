"""Streaming FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data") with a deterministic fold order.

Clients send deltas (local - global). The server keeps one running float64 weighted sum of the size of the
adapter, so memory does not grow with the cohort. Floating-point addition is not associative, so to give the
same bits whatever the number of workers or the order in which updates physically arrive, updates are folded
in a fixed sequence (the clock's arrival order): an update that arrives before its predecessors waits in a
small reorder buffer, bounded by the number of updates in flight, not by the cohort.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray]


class WeightedMean:
    """Running sum_i w_i * x_i over dicts of arrays (float64) and the normaliser sum_i m_i.

    `mean()` is sum_i w_i x_i / sum_i m_i. FedAvg uses m_i = w_i = n_i (samples). FedBuff (Nguyen et al. 2022,
    Algorithm 1) discounts a stale update by s(tau_i) *without* renormalising the discount away:
    w_i = n_i * s(tau_i), m_i = n_i, so with equal n_i the step is (1/K) sum_i s(tau_i) x_i, the paper's
    server update, and a buffer of stale updates takes a smaller step than a fresh one.
    """

    def __init__(self) -> None:
        self.total: Tensors | None = None
        self.weight = 0.0
        self.norm = 0.0
        self.count = 0

    def add(self, weight: float, tensors: Tensors, norm: float | None = None) -> None:
        """Fold one client's tensors in with weight `weight` and normaliser `norm` (default: the weight)."""
        norm = weight if norm is None else norm
        if weight <= 0 or norm <= 0:
            raise ValueError("weight and norm must be positive")
        if self.total is None:
            self.total = {k: np.zeros(v.shape, np.float64) for k, v in tensors.items()}
        for k, v in tensors.items():
            self.total[k] += weight * v.astype(np.float64)
        self.weight += weight
        self.norm += norm
        self.count += 1

    def mean(self) -> Tensors | None:
        """sum w_i x_i / sum m_i, or None if nothing was added."""
        if self.total is None:
            return None
        return {k: v / self.norm for k, v in self.total.items()}


class OrderedFold:
    """Feed items tagged with sequence numbers 0..n-1 in any order; `fold` sees them in sequence order."""

    def __init__(self, fold) -> None:
        self._fold = fold
        self._next = 0
        self._waiting: dict[int, Any] = {}
        self.peak_waiting = 0

    def put(self, seq: int, *item: Any) -> None:
        """Accept item `seq`; fold it and every waiting successor that is now next in line."""
        if seq < self._next or seq in self._waiting:
            raise ValueError(f"sequence number {seq} given twice")
        self._waiting[seq] = item
        self.peak_waiting = max(self.peak_waiting, len(self._waiting))
        while self._next in self._waiting:
            self._fold(*self._waiting.pop(self._next))
            self._next += 1

    @property
    def folded(self) -> int:
        """How many items have been folded so far."""
        return self._next


def apply_update(global_state: Tensors, mean_delta: Tensors | None, server_lr: float) -> Tensors:
    """New global = global + server_lr * weighted mean delta (server_lr = 1 is plain FedAvg)."""
    if mean_delta is None:
        return global_state
    return {k: (v + server_lr * mean_delta[k]).astype(v.dtype) for k, v in global_state.items()}
