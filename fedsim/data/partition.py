"""Client dataset sizes and partitions (pure numpy, vectorized: O(rows + clients x labels), no per-client loop).

Sizes are lognormal (heavy-tailed, as in real federated datasets: Caldas et al. 2018, LEAF).

The Dirichlet partition follows Hsu et al. 2019 ("Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", sec. 3): client i draws label shares q_i ~ Dir(alpha * p), p the prior label
distribution of the data, and its label counts ~ Multinomial(n_i, q_i). E[q_i] = p, so an unbalanced file keeps
its label shares on average; alpha -> 0 gives one label per client, alpha -> inf identical clients. Rows of a
file are then assigned without replacement. The paper does not say what happens when a label runs out; fedsim's
rule: while other labels have rows to spare, the excess moves to them by each client's own shares
(renormalised over the labels left). Rows are reused only when the clients ask for more rows than the file has.

The natural partition gives each user (a column of the file, e.g. a LEAF/FedScale writer or speaker id) to one
client, as real federated datasets are split.
"""

from __future__ import annotations

import numpy as np

from fedsim.errors import ConfigError
from fedsim.rng import stream
from fedsim.scenario.schema import DataConfig


def client_sizes(cfg: DataConfig, num_clients: int, seed: int) -> np.ndarray:
    """Number of samples of every client: lognormal with the configured mean, clipped to [min, max]."""
    spc = cfg.samples_per_client
    mu = np.log(spc.mean) - spc.sigma**2 / 2
    raw = stream(seed, "client-sizes").lognormal(mu, spc.sigma, num_clients)
    return np.clip(np.rint(raw), spc.min, spc.max).astype(np.int64)


def label_shares(cfg: DataConfig, prior: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n x labels) label shares: the prior itself (iid) or Dir(alpha * prior) draws (Hsu et al. 2019)."""
    prior = np.asarray(prior, dtype=np.float64) / np.sum(prior)
    if cfg.partition == "iid":
        return np.broadcast_to(prior, (n, len(prior))).copy()
    support = prior > 0  # a label with no rows can get no share
    shares = np.zeros((n, len(prior)))
    shares[:, support] = rng.dirichlet(cfg.dirichlet_alpha * prior[support], size=n)
    return shares


def client_label_counts(cfg: DataConfig, size: int, prior: np.ndarray, seed: int, client: int) -> np.ndarray:
    """One client's label counts, from its own stream (same counts whoever asks, whenever): used when rows are
    generated on demand (synthetic data), so nothing is drawn for clients that are never selected."""
    rng = stream(seed, "partition", client)
    return rng.multinomial(int(size), label_shares(cfg, prior, rng, 1)[0])


def label_counts(cfg: DataConfig, sizes: np.ndarray, supply: np.ndarray, seed: int,
                 max_rounds: int = 50) -> np.ndarray:
    """(clients x labels) counts for a file whose label l has supply[l] rows, without reuse where possible.

    Shares ~ Dir(alpha * p) with p = supply / sum(supply); counts ~ Multinomial. Where a label is asked for more
    than it has, a uniformly chosen excess of its units (multivariate hypergeometric over clients) moves to the
    labels with rows to spare, by each client's shares renormalised over those labels.
    """
    rng = stream(seed, "partition")
    supply = np.asarray(supply, dtype=np.int64)
    shares = label_shares(cfg, supply, rng, len(sizes))
    counts = rng.multinomial(sizes, shares)
    prior = supply / supply.sum()
    for _ in range(max_rounds):
        demand = counts.sum(axis=0)
        excess = np.maximum(demand - supply, 0)
        spare = np.maximum(supply - demand, 0)
        if not excess.any() or not spare.any():
            break  # done, or the clients want more rows than exist: reuse is unavoidable
        removed = np.zeros(len(sizes), dtype=np.int64)
        for lab in np.flatnonzero(excess):  # labels, not clients: a short loop
            take = rng.multivariate_hypergeometric(counts[:, lab], int(excess[lab]), method="marginals")
            counts[:, lab] -= take
            removed += take
        open_ = spare > 0
        weights = shares * open_
        total = weights.sum(axis=1, keepdims=True)
        fallback = prior * open_ / (prior * open_).sum()
        weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), fallback)
        counts += rng.multinomial(removed, weights)
    return counts


def assign_rows(counts: np.ndarray, pools: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Give each client counts[i, l] rows of label l from pools[l] (row ids), in a seeded order.

    Returns CSR (offsets, rows) and the reuse factor (> 1 only when a label's pool is smaller than the demand
    for it: rows then cycle, which a caller should report).
    """
    rng = stream(seed, "assign")
    sizes = counts.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    top = max((int(p.max()) for p in pools if len(p)), default=0)
    rows = np.empty(int(offsets[-1]), dtype=np.int32 if top < 2**31 else np.int64)  # half the bytes at scale
    within = np.cumsum(counts, axis=1) - counts  # where label l's block starts inside each client's rows
    reuse = 1.0
    for lab, pool in enumerate(pools):
        c = counts[:, lab]
        need = int(c.sum())
        if need == 0:
            continue
        if len(pool) == 0:
            raise ValueError(f"label {lab} has no rows but clients need {need}")
        reuse = max(reuse, need / len(pool))
        src = np.tile(rng.permutation(pool), -(-need // len(pool)))[:need]
        # the k-th unit of this label (clients in order) lands in its client's block: no sort, no owner array
        rows[np.repeat(offsets[:-1] + within[:, lab] - (np.cumsum(c) - c), c) + np.arange(need)] = src
    return offsets, rows, reuse


def natural(users: np.ndarray, num_clients: int, seed: int, field: str) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, rows) giving each client the rows of one user (users: a user code per row).

    With fewer clients than users, a seeded sample of users takes part (in user order); more clients than users
    is an error naming the number of users.
    """
    n_users = int(users.max()) + 1 if len(users) else 0
    if num_clients > n_users:
        raise ConfigError("population.num_clients", f"{num_clients} clients but data.{field} has {n_users} users "
                                                    f"(partition natural: one client per user)")
    chosen = np.arange(n_users)
    if num_clients < n_users:
        chosen = np.sort(stream(seed, "natural-users").choice(n_users, num_clients, replace=False))
    client_of_user = np.full(n_users, -1, dtype=np.int64)
    client_of_user[chosen] = np.arange(num_clients)
    owner = client_of_user[users]
    keep = np.flatnonzero(owner >= 0)
    rows = keep[np.argsort(owner[keep], kind="stable")]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owner[keep], minlength=num_clients))]).astype(np.int64)
    return offsets, rows.astype(np.int64)
