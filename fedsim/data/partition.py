"""Client dataset sizes and partitions (pure numpy).

Sizes are lognormal (heavy-tailed, as in real federated datasets: Caldas et al. 2018, LEAF). The Dirichlet
partition over labels follows Hsu et al. 2019 ("Measuring the Effects of Non-Identical Data Distribution"):
each client draws label proportions p ~ Dir(alpha * 1) and its label counts ~ Multinomial(n, p).
"""

from __future__ import annotations

import numpy as np

from fedsim.rng import stream
from fedsim.scenario.schema import DataConfig


def client_sizes(cfg: DataConfig, num_clients: int, seed: int) -> np.ndarray:
    """Number of samples of every client: lognormal with the configured mean, clipped to [min, max]."""
    spc = cfg.samples_per_client
    mu = np.log(spc.mean) - spc.sigma**2 / 2
    raw = stream(seed, "client-sizes").lognormal(mu, spc.sigma, num_clients)
    return np.clip(np.rint(raw), spc.min, spc.max).astype(np.int64)


def label_counts(cfg: DataConfig, sizes: np.ndarray, num_labels: int, seed: int) -> np.ndarray:
    """(clients x labels) sample counts: IID (uniform proportions) or Dirichlet(alpha) per client."""
    rng = stream(seed, "partition")
    if cfg.partition == "iid":
        p = np.full((len(sizes), num_labels), 1.0 / num_labels)
    else:
        p = rng.dirichlet(np.full(num_labels, cfg.dirichlet_alpha), size=len(sizes))
    return rng.multinomial(sizes, p)


def assign_rows(counts: np.ndarray, pools: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Give each client counts[i, l] rows of label l from pools[l] (row ids), in a seeded order.

    Returns CSR (offsets, rows) and the reuse factor: rows are reused (cycling) only when a label's pool is
    smaller than the demand for it, which a caller should report.
    """
    rng = stream(seed, "assign")
    per_label = []
    reuse = 1.0
    for lab, pool in enumerate(pools):
        need = int(counts[:, lab].sum())
        if need and len(pool) == 0:
            raise ValueError(f"label {lab} has no rows but clients need {need}")
        order = rng.permutation(pool) if len(pool) else pool
        reps = -(-need // max(len(pool), 1))
        reuse = max(reuse, need / max(len(pool), 1))
        per_label.append(np.tile(order, max(reps, 1))[:need])
    starts = np.zeros_like(counts)
    starts[1:] = np.cumsum(counts[:-1], axis=0)
    sizes = counts.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows = np.empty(int(offsets[-1]), dtype=np.int64)
    for i in range(len(counts)):
        pos = offsets[i]
        for lab in np.flatnonzero(counts[i]):
            c = counts[i, lab]
            rows[pos : pos + c] = per_label[lab][starts[i, lab] : starts[i, lab] + c]
            pos += c
    return offsets, rows, reuse
