"""Upload compression: what goes on the wire (bytes, counted in both modes) and what the server reconstructs
(applied for real to client deltas in train mode).

- dtype cast (float16 / bfloat16) of the dense update;
- int8: per-tensor symmetric absmax quantization, one fp32 scale per tensor (as in QSGD-style 8-bit schemes,
  Alistarh et al. 2017);
- top-k sparsification (Aji & Heafield 2017; Stich et al. 2018): per tensor the ceil(frac * n) largest
  magnitudes, sent as values at the wire dtype plus int32 indices. No error feedback (clients keep no state).
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.costs.memory import DTYPE_BYTES

INDEX_BYTES = 4
SCALE_BYTES = 4


def upload_bytes(tensor_sizes: list[int], dtype: str, method: str = "none", topk_fraction: float = 1.0) -> float:
    """Bytes of one client update with the given tensor sizes under `method`."""
    n = sum(tensor_sizes)
    if method == "none":
        return n * DTYPE_BYTES[dtype]
    if method == "int8":
        return n * 1.0 + len(tensor_sizes) * SCALE_BYTES
    if method == "topk":
        k = sum(math.ceil(topk_fraction * size) for size in tensor_sizes)
        return k * (DTYPE_BYTES[dtype] + INDEX_BYTES)
    raise ValueError(f"unknown compression {method!r}")


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float32 values to the wire dtype and back (bfloat16 by round-to-nearest-even on the bits)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def compress(x: np.ndarray, dtype: str, method: str = "none", topk_fraction: float = 1.0) -> np.ndarray:
    """What the server reconstructs from one tensor after compression (same shape, float32)."""
    x = np.asarray(x, dtype=np.float32)
    if method == "none":
        return cast(x, dtype)
    if method == "int8":
        peak = float(np.abs(x).max())
        if peak == 0.0:
            return np.zeros_like(x)
        scale = np.float32(peak / 127.0)
        return (np.clip(np.rint(x / scale), -127, 127) * scale).astype(np.float32)
    if method == "topk":
        flat = x.reshape(-1)
        k = math.ceil(topk_fraction * flat.size)
        keep = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
        out = np.zeros_like(flat)
        out[keep] = cast(flat[keep], dtype)
        return out.reshape(x.shape)
    raise ValueError(f"unknown compression {method!r}")
