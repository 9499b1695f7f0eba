"""Communication: adapter bytes at the transmitted dtype, transfer time over an asymmetric link."""

from __future__ import annotations

from fedsim.costs.memory import DTYPE_BYTES


def payload_bytes(num_params: int, dtype: str = "float32") -> float:
    """Bytes to send `num_params` values as `dtype` (no compression)."""
    return num_params * DTYPE_BYTES[dtype]


def transfer_time_s(nbytes, bytes_per_s, latency_s):
    """One transfer: a round-trip latency to set up, then bytes at the link's rate (vectorized)."""
    return latency_s + nbytes / bytes_per_s
