"""The adversary model: which virtual clients are malicious and what they send instead of their honest update.

A `population.adversaries.fraction` of the clients (a fixed set drawn once from the seed) attack every time
they are trained. They train honestly, then replace their update Delta before sending it:

* ``sign_flip``  -scale * Delta        (the sign-flipping attack of Damaskinos et al. 2018 / Allen-Zhu et al. 2020)
* ``scale``      scale * Delta         (model-replacement style boosting; Bagdasaryan et al. 2020)
* ``noise``      Gaussian noise N(0, scale^2) of Delta's shape (the "Gaussian" Byzantine attack of Blanchard
                 et al. 2017), from the client's own stream for this dispatch

Pure numpy: the engine marks the tasks, the worker applies the attack, the ledger records who attacked.
"""

from __future__ import annotations

import numpy as np

from fedsim.rng import stream


def adversary_mask(seed: int, num_clients: int, fraction: float) -> np.ndarray:
    """Which clients are adversarial (a seeded, fixed set: the same clients in every round)."""
    if fraction <= 0:
        return np.zeros(num_clients, bool)
    return stream(seed, "adversaries").random(num_clients) < fraction


def attack(kind: str, scale: float, delta: dict[str, np.ndarray], seed: int, dispatch: int,
           client: int) -> dict[str, np.ndarray]:
    """The update an adversarial client sends instead of its honest `delta`."""
    if kind == "sign_flip":
        return {k: (-scale * v).astype(v.dtype) for k, v in delta.items()}
    if kind == "scale":
        return {k: (scale * v).astype(v.dtype) for k, v in delta.items()}
    if kind == "noise":
        rng = stream(seed, "attack-noise", dispatch, client)
        return {k: rng.normal(0.0, scale, v.shape).astype(v.dtype) for k, v in sorted(delta.items())}
    raise ValueError(f"unknown attack {kind!r}")
