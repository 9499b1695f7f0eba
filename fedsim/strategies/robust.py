"""Robust combination of client updates (pure numpy): norm clipping, coordinate-wise median, trimmed mean,
(multi-)Krum.

* clipping scales an update to at most `max_norm` in L2 over all its tensors (the bound DP-FedAvg and robust
  aggregation both start from; McMahan et al. 2018);
* coordinate-wise median and beta-trimmed mean: Yin et al. 2018 ("Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates"): per coordinate, the median, or the mean after dropping the
  floor(beta * n) largest and smallest values;
* Krum / multi-Krum: Blanchard et al. 2017 ("Machine Learning with Adversaries: Byzantine Tolerant Gradient
  Descent"): each update's score is the sum of squared distances to its n - f - 2 nearest others; Krum keeps
  the lowest-scoring update, multi-Krum averages the m lowest.

These rules need every update of the round at once (they are not streaming): the aggregator holds the cohort,
O(cohort x adapter) memory, and says so. Updates are combined unweighted, as the papers define them.
"""

from __future__ import annotations

import math

import numpy as np

Tensors = dict[str, np.ndarray]


def clip_norm(update: Tensors, max_norm: float) -> tuple[Tensors, bool]:
    """`update` scaled to L2 norm <= max_norm over all tensors; (update, whether it was clipped)."""
    norm = math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in update.values()))
    if norm <= max_norm:
        return update, False
    scale = max_norm / norm
    return {k: (v * scale).astype(v.dtype) for k, v in update.items()}, True


def _stack(updates: list[Tensors], key: str) -> np.ndarray:
    return np.stack([np.asarray(u[key], dtype=np.float64) for u in updates])


def median(updates: list[Tensors]) -> Tensors:
    """Coordinate-wise median (Yin et al. 2018)."""
    return {k: np.median(_stack(updates, k), axis=0) for k in updates[0]}


def trimmed_mean(updates: list[Tensors], beta: float) -> Tensors:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018): drop the floor(beta n) smallest and largest."""
    n = len(updates)
    cut = int(math.floor(beta * n))
    if 2 * cut >= n:
        raise ValueError(f"trimming {cut} from each side of {n} updates leaves none")
    return {k: np.sort(_stack(updates, k), axis=0)[cut : n - cut].mean(axis=0) for k in updates[0]}


def krum_scores(updates: list[Tensors], f: int) -> np.ndarray:
    """Krum score of each update: the sum of squared distances to its n - f - 2 nearest other updates."""
    n = len(updates)
    flat = np.stack([np.concatenate([np.asarray(u[k], np.float64).ravel() for k in sorted(u)]) for u in updates])
    sq = (flat**2).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    nearest = max(n - f - 2, 1)
    return np.sort(dist, axis=1)[:, :nearest].sum(axis=1)


def krum(updates: list[Tensors], f: int, m: int = 1) -> tuple[Tensors, np.ndarray]:
    """Multi-Krum (Blanchard et al. 2017): the mean of the m updates with the lowest Krum scores (m = 1: Krum);
    returns it and the indices chosen (ties broken by arrival order)."""
    chosen = np.argsort(krum_scores(updates, f), kind="stable")[: max(1, min(m, len(updates)))]
    return {k: np.mean(_stack([updates[i] for i in chosen], k), axis=0) for k in updates[0]}, chosen


def combine(rule: str, updates: list[Tensors], trim: float = 0.1, byzantine: int = 1,
            select: int = 1) -> tuple[Tensors, bool]:
    """The robust rule a scenario names (`median`, `trimmed_mean`, `krum`) over one round's updates; returns
    (combined update, whether it fell back to the median). A round short of updates (failures, quarantine)
    falls back to the coordinate-wise median where Krum's guarantee (n >= 2f + 3) or the trimming (at least one
    update cut from each side) would not hold; multi-Krum averages at most n - f updates."""
    n = len(updates)
    if rule == "median" or (rule == "krum" and n < 2 * byzantine + 3) or \
            (rule == "trimmed_mean" and trim > 0 and math.floor(trim * n) == 0):
        return median(updates), rule != "median"
    if rule == "trimmed_mean":
        return trimmed_mean(updates, trim), False
    if rule == "krum":
        return krum(updates, byzantine, min(select, n - byzantine))[0], False
    raise ValueError(f"unknown robust rule {rule!r}")
