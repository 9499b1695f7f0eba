"""Server optimizers: how the server applies the round's aggregated client update (pure numpy).

The mean client delta Delta_t (local - global, i.e. a negative pseudo-gradient) is fed to a server optimizer,
as in Reddi et al. 2021 ("Adaptive Federated Optimization", Algorithm 2), in sync rounds and FedBuff steps
alike:

* ``sgd``      x <- x + eta * Delta                                   (FedAvg when eta = 1; McMahan et al. 2017)
* ``momentum`` v <- beta * v + Delta;  x <- x + eta * v                (FedAvgM; Hsu et al. 2019)
* ``adagrad``  m <- b1 m + (1 - b1) Delta;  v <- v + Delta^2;          x <- x + eta m / (sqrt(v) + tau)
* ``adam``     m <- b1 m + (1 - b1) Delta;  v <- b2 v + (1 - b2) Delta^2
* ``yogi``     m <- b1 m + (1 - b1) Delta;  v <- v - (1 - b2) Delta^2 sign(v - Delta^2)

(FedAdagrad / FedAdam / FedYogi: Reddi et al. 2021, with m_{-1} = 0, v_{-1} = tau^2 and no bias correction, as
in the paper's Algorithm 2.) A step is a pure function of (state, x, Delta): the state before a step stays
valid, so a checkpoint can hold the state of either side of the last step. State is float64; the global
adapter stays float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.scenario.schema import ServerConfig
from fedsim.strategies.fedavg import apply_update

Tensors = dict[str, np.ndarray]
KINDS = ("sgd", "momentum", "adagrad", "adam", "yogi")


class ServerOptimizer:
    """One of KINDS with its hyper-parameters; `step` returns the new global and keeps the new state."""

    def __init__(self, kind: str = "sgd", lr: float = 1.0, momentum: float = 0.9, beta1: float = 0.9,
                 beta2: float = 0.99, tau: float = 1e-3):
        if kind not in KINDS:
            raise ValueError(f"unknown server optimizer {kind!r} (known: {', '.join(KINDS)})")
        self.kind, self.lr, self.momentum, self.beta1, self.beta2, self.tau = kind, lr, momentum, beta1, beta2, tau
        self.slots: dict[str, Tensors] = {}  # "m" / "v": float64 arrays per parameter
        self.steps = 0

    def state(self) -> dict[str, Any]:
        """Checkpointable state (the arrays are never modified in place, so no copy is needed)."""
        return {"slots": self.slots, "steps": self.steps}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from a `state()` (None: a fresh optimizer)."""
        state = state or {"slots": {}, "steps": 0}
        self.slots = {k: dict(v) for k, v in state["slots"].items()}
        self.steps = int(state["steps"])

    def step(self, x: Tensors, delta: Tensors | None) -> Tensors:
        """New global from the global `x` and the mean client delta (None: no update this round, no step)."""
        if delta is None:
            return x
        self.steps += 1
        if self.kind == "sgd":
            return apply_update(x, delta, self.lr)
        d = {k: np.asarray(delta[k], dtype=np.float64) for k in x}
        if self.kind == "momentum":
            v = self.slots.get("v") or {k: np.zeros_like(a) for k, a in d.items()}
            self.slots = {"v": {k: self.momentum * v[k] + d[k] for k in d}}
            return {k: (a + self.lr * self.slots["v"][k]).astype(a.dtype) for k, a in x.items()}
        m = self.slots.get("m") or {k: np.zeros_like(a) for k, a in d.items()}
        v = self.slots.get("v") or {k: np.full_like(a, self.tau**2) for k, a in d.items()}
        m = {k: self.beta1 * m[k] + (1 - self.beta1) * d[k] for k in d}
        sq = {k: d[k] * d[k] for k in d}
        if self.kind == "adagrad":
            v = {k: v[k] + sq[k] for k in d}
        elif self.kind == "adam":
            v = {k: self.beta2 * v[k] + (1 - self.beta2) * sq[k] for k in d}
        else:  # yogi
            v = {k: v[k] - (1 - self.beta2) * sq[k] * np.sign(v[k] - sq[k]) for k in d}
        self.slots = {"m": m, "v": v}
        return {k: (a + self.lr * m[k] / (np.sqrt(v[k]) + self.tau)).astype(a.dtype) for k, a in x.items()}


def default_lr(kind: str, momentum: float) -> float:
    """The server learning rate when the scenario gives none: FedAvg's 1; 1 - momentum for FedAvgM (effective
    rate 1, Hsu et al. 2019); 1e-2 for the adaptive optimizers, whose first steps are ~lr per coordinate."""
    return {"sgd": 1.0, "momentum": 1.0 - momentum}.get(kind, 1e-2)


def from_server_config(sv: ServerConfig) -> ServerOptimizer:
    """The optimizer a scenario's `server` section names."""
    lr = sv.server_lr if sv.server_lr is not None else default_lr(sv.optimizer, sv.momentum)
    return ServerOptimizer(sv.optimizer, lr, sv.momentum, sv.beta1, sv.beta2, sv.tau)
