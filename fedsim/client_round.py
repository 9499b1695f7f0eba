"""The client round's contract: what a worker receives (`ClientTask`) and what it returns (`ClientResult`).

Both are typed, frozen and small. The payload (the update's tensors, as the server decodes them) travels apart
from the result, as its own object reference, so the driver reads statistics without ever copying an adapter.
Aggregation weights are not carried through the worker: the server applies them where updates are folded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class ClientTask:
    """One virtual client's local training, as the schedule dispatched it."""

    client: int
    round: int  # server step whose plan it belongs to
    dispatch: int  # unique per dispatch (sync: the round; async: the dispatch sequence): keys its random streams
    version: int  # global adapter version it trains from
    rows: np.ndarray  # its data rows (`ClientData.client_rows`): ids, never the data itself
    proximal_mu: float = 0.0  # FedProx's mu for this client's local objective (0: plain local training)
    adversarial: bool = False  # sends population.adversaries.attack instead of its honest update


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


def state_digest(state: Tensors) -> str:
    """Short hex digest of an adapter state (float32 values in name order): which version a client used."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name], dtype=np.float32).tobytes())
    return h.hexdigest()
