"""The client round's contract: what a worker receives (`ClientTask`, with its per-client `ClientConfig`) and
what it returns (`ClientResult`, plus named payload tensors).

All are typed, frozen and small. The payload (the update's tensors, as the server decodes them) travels apart
from the result, as its own object reference, so the driver reads statistics without ever copying an adapter.
Aggregation weights are not carried through the worker: the server applies them where updates are folded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class SecAggTask:
    """A client's part in one round of secure aggregation (Bonawitz et al. 2017)."""

    cohort: np.ndarray  # U1: the round's clients that advertised keys (sorted ids)
    threshold: int  # Shamir t
    bits: int
    frac_bits: int
    weight_scale: float  # the client encodes (n_i / weight_scale) x Delta_i and that weight (samples weighting)


@dataclass(frozen=True, eq=False)
class ClientConfig:
    """What the strategy tells one client about its local round (Flower's `configure_fit`, pfl's context)."""

    objective: str = "fedavg"  # fedavg | fedprox | scaffold: the local objective's hook
    proximal_mu: float = 0.0  # FedProx's mu (Li et al. 2020)
    adversarial: bool = False  # sends population.adversaries.attack instead of its honest update
    clip_norm: float | None = None  # DP clipping done by the client (client noise or secure aggregation)
    noise_std: float = 0.0  # the client's share of DP noise (distributed DP: noise added before sending)
    secagg: SecAggTask | None = None
    rank: int | None = None  # its LoRA rank when clients differ (HetLoRA, FlexLoRA, FLoRA); None: the scenario's


@dataclass(frozen=True, eq=False)
class ClientTask:
    """One virtual client's local training, as the schedule dispatched it."""

    client: int
    round: int  # server step whose plan it belongs to
    dispatch: int  # unique per dispatch (sync: the round; async: the dispatch sequence): keys its random streams
    version: int  # global adapter version it trains from
    rows: np.ndarray  # its data rows (`ClientData.client_rows`): ids, never the data itself
    config: ClientConfig = ClientConfig()


@dataclass(frozen=True)
class ClientResult:
    """Statistics of one trained client; its update's tensors travel separately."""

    client: int
    dispatch: int
    num_samples: int  # rows it trained on (rows without a response token are dropped)
    loss: float  # mean training loss over its local steps
    trained_from: str  # `state_digest` of the global state it trained from (provenance, tested)
    finite: bool  # loss and update are finite; a non-finite or empty update is quarantined, never folded
    rows_dropped: int = 0
    loss_sq: float = math.nan  # mean squared step loss (Oort's statistical utility)
    clipped: bool = False  # the client clipped its update (DP at the client)
    clamped: int = 0  # values secure aggregation's fixed-point range clamped
    update_norm: float = math.nan  # HetLoRA: ||B A||_F of its trained adapter (its aggregation weight)
    rank: int | None = None  # HetLoRA with self-pruning: the rank it holds from its next round
    error: str | None = None  # its task kept raising on the workers: no update (booked failed)
    worker_id: str = ""  # Ray's id of the worker process that trained it (a new one for an actor: a restart)


def state_digest(state: Tensors) -> str:
    """Short hex digest of an adapter state (float32 values in name order): which version a client used."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name], dtype=np.float32).tobytes())
    return h.hexdigest()
