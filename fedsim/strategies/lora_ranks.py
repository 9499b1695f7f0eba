"""Aggregating LoRA adapters of different ranks (pure numpy): the maths of HetLoRA, FlexLoRA and FLoRA.

A client of rank r sends, per adapted module, A (r x in) and B (out x r); its update to the weight is B A. Plain
FedAvg of A and B separately does not average the updates: mean(B) mean(A) != mean(B A). The three methods:

* HetLoRA (Cho et al. 2024, "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models"):
  ranks nest -- a rank-r client uses the first r rank components of the server's rank-R adapter
  (`truncate`), its update is zero-padded back to rank R (`pad`), and updates are averaged with weights
  proportional to their Frobenius norms (`norm_weights`), so a low-rank client's zero padding does not dilute
  the higher components (its local rank self-pruning is not here yet);
* FlexLoRA (Bai et al. 2024, "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and
  Client Resources"): the server averages the full updates sum_i p_i B_i A_i and gives each client the best
  rank-r_i approximation by truncated SVD (`svd_split`); by Eckart-Young its Frobenius error is the norm of the
  discarded singular values (`truncation_error`);
* FLoRA (Wang et al. 2024, "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank
  Adaptations"): stacking -- A_s = [A_1; ...; A_n], B_s = [p_1 B_1, ..., p_n B_n] -- gives B_s A_s =
  sum_i p_i B_i A_i exactly (`stack`); the stacked rank is sum_i r_i, which is what clients download next.

Not yet wired into train mode (a task carrying its rank, per-tier costs): see README, "Not yet".
"""

from __future__ import annotations

import numpy as np


def truncate(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """HetLoRA's rank-r share of a rank-R adapter: the first r rows of A and columns of B."""
    return a[:rank], b[:, :rank]


def pad(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """HetLoRA's zero padding of a rank-r adapter to rank R >= r (the extra components contribute nothing)."""
    r = a.shape[0]
    if rank < r:
        raise ValueError(f"cannot pad rank {r} down to {rank}")
    return (np.concatenate([a, np.zeros((rank - r, a.shape[1]), a.dtype)]),
            np.concatenate([b, np.zeros((b.shape[0], rank - r), b.dtype)], axis=1))


def norm_weights(updates: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """HetLoRA's aggregation weights: each client's ||B_i A_i||_F over their sum (sparsity-weighted)."""
    norms = np.array([np.linalg.norm(b @ a) for a, b in updates], dtype=np.float64)
    total = norms.sum()
    return norms / total if total > 0 else np.full(len(updates), 1.0 / max(len(updates), 1))


def stack(updates: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLoRA's stacking: (A_s, B_s) with B_s A_s = sum_i p_i B_i A_i exactly, rank sum_i r_i."""
    a_s = np.concatenate([a for a, _ in updates], axis=0)
    b_s = np.concatenate([p * b for (_, b), p in zip(updates, weights)], axis=1)
    return a_s, b_s


def full_update(updates: list[tuple[np.ndarray, np.ndarray]], weights: np.ndarray) -> np.ndarray:
    """sum_i p_i B_i A_i: the average of the clients' weight updates (what FlexLoRA decomposes)."""
    return sum(p * (b @ a) for (a, b), p in zip(updates, weights))


def svd_split(delta: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """FlexLoRA's redistribution: the best rank-r factors (A, B) of a full update, B = U_r sqrt(S_r),
    A = sqrt(S_r) V_r^T, so both factors carry half of the scale."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    root = np.sqrt(s[:rank])
    return root[:, None] * vt[:rank], u[:, :rank] * root[None, :]


def truncation_error(delta: np.ndarray, rank: int) -> float:
    """The Frobenius error of the best rank-r approximation: the norm of the discarded singular values."""
    s = np.linalg.svd(delta, compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2)))
