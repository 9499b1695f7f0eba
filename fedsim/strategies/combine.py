"""How one server step's client updates combine into one update: the combination part of a strategy.

Each combiner takes updates one at a time in the clock's arrival order and gives the combined update at the end:

* `MeanCombiner` streams (memory O(adapter) whatever the cohort): the weighted mean of FedAvg (McMahan et al.
  2017) and FedBuff (Nguyen et al. 2022), or DP-FedAvg's noised fixed-denominator sum (McMahan et al. 2018);
  it also sums SCAFFOLD's control-variate deltas.
* `RobustCombiner` is buffered (memory O(cohort x adapter), and it says so): median, trimmed mean, Krum.
* `SecAggCombiner` streams masked inputs in modular arithmetic and learns only their sum (Bonawitz et al. 2017).

DP-FedAvg (McMahan et al. 2018, Algorithm 1 with the fixed-denominator estimator): every update is clipped to L2
norm S (by the server here, or by the client when it noises or masks its own update), and the step is
(sum_i clip(Delta_i) + N(0, z^2 S^2 I)) / K with K the expected cohort (clients_per_round): the Gaussian noise
has standard deviation z S / K on the mean, and one client moves the mean by at most S / K.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedsim.strategies.fedavg import WeightedMean
from fedsim.strategies.robust import clip_norm, combine

Tensors = dict[str, np.ndarray]
WEIGHT_KEY = "secagg.weight"  # the client's own aggregation weight, masked along with its update


@dataclass(frozen=True)
class DPNoise:
    """The Gaussian mechanism of one step: noise std `std` (z x S) added to the sum, divided by `expected`."""

    clip: float  # S
    std: float  # z x S on the sum (0 when the clients added their shares themselves)
    expected: int  # K, the fixed denominator
    rng: np.random.Generator
    client_share: float = 0.0  # the std each client added itself (noise "client")
    needed: int = 0  # the sum those shares were sized for (t): a smaller sum gets the missing shares here


def dp_mean(total: Tensors, dp: DPNoise, count: int) -> Tensors:
    """DP-FedAvg's step (sum + N(0, std^2)) / K over `count` summed updates, the noise drawn per tensor in name
    order. With client-side shares, a sum of fewer than t updates (quarantine left it short) gets the missing
    shares' variance from the server, so the released sum always carries z^2 S^2."""
    std = dp.std
    if dp.client_share > 0 and count < dp.needed:
        std = float(np.hypot(std, dp.client_share * np.sqrt(dp.needed - count)))
    out = {}
    for k in sorted(total):
        noise = dp.rng.normal(0.0, std, total[k].shape) if std > 0 else 0.0
        out[k] = (total[k] + noise) / dp.expected
    return out


class Combiner(Protocol):
    """One step's combination rule; `holds_cohort` says whether its memory grows with the cohort."""

    holds_cohort: bool

    def add(self, client: int, weight: float, norm: float, payload: dict[str, Tensors]) -> bool:
        """Fold client `client`'s usable update (payload: "delta", optionally "control", or "masked"); True if
        it was clipped."""

    def result(self) -> tuple[Tensors | None, Tensors | None, dict[str, Any]]:
        """(combined update or None, summed control deltas or None, statistics)."""


class MeanCombiner:
    """Streaming weighted mean (or DP sum), plus the sum of SCAFFOLD's control deltas."""

    holds_cohort = False

    def __init__(self, clip: float | None = None, dp: DPNoise | None = None):
        self.clip, self.dp = clip, dp
        self.mean = WeightedMean()
        self.control: WeightedMean | None = None

    def add(self, client: int, weight: float, norm: float, payload: dict[str, Tensors]) -> bool:
        """Clip (robust `server.clip_norm` or DP's S when the server clips), then fold in."""
        delta, clipped = payload["delta"], False
        if self.clip is not None:
            delta, clipped = clip_norm(delta, self.clip)
        self.mean.add(weight, delta, norm)
        if "control" in payload:
            self.control = self.control or WeightedMean()
            self.control.add(1.0, payload["control"])
        return clipped

    def result(self) -> tuple[Tensors | None, Tensors | None, dict[str, Any]]:
        """The weighted mean sum w_i x_i / sum m_i, or with DP (sum + noise) / K; the control deltas' sum."""
        control = None if self.control is None else self.control.total
        if self.dp is None or self.mean.total is None:
            return self.mean.mean(), control, {"aggregated": self.mean.count}
        return dp_mean(self.mean.total, self.dp, self.mean.count), control, {"aggregated": self.mean.count}


class RobustCombiner:
    """A robust rule over the whole step's updates (`fedsim.strategies.robust`), unweighted as the papers define
    them except for FedBuff's staleness discount (weight / norm, 1 in sync rounds)."""

    holds_cohort = True

    def __init__(self, rule: str, clip: float | None, trim: float, byzantine: int, select: int):
        self.rule, self.clip, self.args = rule, clip, (trim, byzantine, select)
        self.held: list[Tensors] = []

    def add(self, client: int, weight: float, norm: float, payload: dict[str, Tensors]) -> bool:
        """Clip if asked, discount, hold."""
        delta, clipped = payload["delta"], False
        if self.clip is not None:
            delta, clipped = clip_norm(delta, self.clip)
        scale = weight / norm
        self.held.append(delta if scale == 1 else {k: v * scale for k, v in delta.items()})
        return clipped

    def result(self) -> tuple[Tensors | None, Tensors | None, dict[str, Any]]:
        """The rule's combination (or the median when the step is too small for it)."""
        if not self.held:
            return None, None, {"aggregated": 0}
        combined, fallback = combine(self.rule, self.held, *self.args)
        return combined, None, {"aggregated": len(self.held), "robust_fallback": bool(fallback)}


class SecAggCombiner:
    """Secure aggregation's server side: a modular running sum of masked inputs, unmasked once per step.

    Clients encode (w_i x Delta_i, w_i) in fixed point and mask them (`fedsim.strategies.secagg`); the server
    sums what the survivors (U2) sent, reconstructs the masks of the survivors and of the clients that dropped
    after sharing keys, and decodes the sum: it never holds an individual update in the clear.
    """

    holds_cohort = False

    def __init__(self, protocol, dp: DPNoise | None = None):
        self.protocol, self.dp = protocol, dp
        self.total: Tensors | None = None
        self.survivors: list[int] = []

    def add(self, client: int, weight: float, norm: float, payload: dict[str, Tensors]) -> bool:
        """Add one survivor's masked input (mod 2^bits); the weight travels inside it."""
        from fedsim.strategies.secagg import masked_add

        self.total = masked_add(self.total, payload["masked"])
        self.survivors.append(client)
        return False

    def result(self) -> tuple[Tensors | None, Tensors | None, dict[str, Any]]:
        """Unmask, decode, divide by the summed weights (or DP: noise, then the fixed denominator)."""
        from fedsim.strategies.secagg import SecAggAborted

        stats: dict[str, Any] = {"aggregated": len(self.survivors), "secagg_dropouts":
                                 len(self.protocol.cohort) - len(self.survivors)}
        if self.total is None:
            return None, None, stats
        try:
            plain = self.protocol.unmask(self.total, self.survivors)
        except SecAggAborted:
            return None, None, {**stats, "aggregated": 0, "secagg_aborted": True}
        decoded = {k: self.protocol.codec.decode(v) for k, v in plain.items()}
        weight = float(decoded.pop(WEIGHT_KEY)[0])
        if self.dp is not None:
            return dp_mean(decoded, self.dp, len(self.survivors)), None, stats
        return {k: v / weight for k, v in decoded.items()}, None, stats
