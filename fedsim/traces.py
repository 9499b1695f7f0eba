"""FedScale-format traces as a population source (Lai et al. 2022, "FedScale: Benchmarking Model and System
Performance of Federated Learning at Scale").

`client_device_capacity`: pickle of {client id: {"computation": ms per sample, "communication": kbit/s}}. FedScale
times a local step as 3 x batch x steps x computation / 1000 s, i.e. `computation` is the forward time of its
reference model per sample. fedsim maps it onto its FLOP model: effective FLOP/s = reference forward FLOPs per
sample / (computation / 1000) (`population.traces.reference_forward_flops`, default ShuffleNet V2 1.0x, FedScale's
OpenImage model: 146 M multiply-adds = 2.92e8 FLOPs, Ma et al. 2018), so a client that ran FedScale's model in
x ms runs fedsim's model in x ms scaled by the FLOP ratio. `communication` becomes both up- and download
bandwidth (FedScale uses one number); latency, radio power, memory and power come from the client's sampled
network and device classes.

`client_behave_trace`: pickle of {client id: {"active": [t...], "inactive": [t...], "finish_time": T, ...}}: the
client is online in each [active[i], inactive[i]] window, repeating with period T (FedScale's semantics).
Availability = online share of the period; selection can ask who is online at a virtual time.

Trace entries are assigned to fedsim clients in sorted-id order, cycling when the population is larger. Only
load trace files you trust (they are pickles).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import pickle
from dataclasses import dataclass

import numpy as np

from fedsim.errors import ConfigError


@dataclass(frozen=True)
class Windows:
    """Per-client cyclic online windows in CSR form (client i: starts/ends[offsets[i]:offsets[i+1]])."""

    offsets: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    period: np.ndarray  # per client

    def share(self) -> np.ndarray:
        """Online share of each client's period."""
        n = len(self.period)
        owner = np.repeat(np.arange(n), np.diff(self.offsets))
        return np.bincount(owner, weights=self.ends - self.starts, minlength=n) / self.period

    def online(self, ids: np.ndarray, t: float) -> np.ndarray:
        """Which of clients `ids` are online at virtual time t (vectorized over their windows)."""
        lo, hi = self.offsets[ids], self.offsets[ids + 1]
        counts = hi - lo
        owner = np.repeat(np.arange(len(ids)), counts)
        idx = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        norm = (t % self.period[ids])[owner]
        inside = (self.starts[idx] <= norm) & (norm <= self.ends[idx])
        return np.bincount(owner, weights=inside, minlength=len(ids)) > 0


DEVICE_KEY, BEHAVIOR_KEY = "population.traces.device", "population.traces.behavior"


def _load(path: str, key: str) -> tuple[dict, list]:
    """(trace dict, its client ids in sorted order); any unreadable or mis-shaped file is a ConfigError on `key`.

    Memoized on the file's identity (path, size, mtime): scenario load checks a trace and sampling the
    population reads it again, so it is unpickled once per process. The dict is shared: read it, never write.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(key, f"cannot read FedScale trace {path}: {exc.strerror or exc}") from None
    return _load_file(os.path.abspath(path), st.st_size, st.st_mtime_ns, key)


@functools.lru_cache(maxsize=4)
def _load_file(path: str, size: int, mtime_ns: int, key: str) -> tuple[dict, list]:
    """The work of `_load`; size and mtime_ns are only part of the cache key."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - FedScale's format is a pickle; the user names the file
    except OSError as exc:
        raise ConfigError(key, f"cannot read FedScale trace {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - unpickling arbitrary bytes raises almost any exception type
        raise ConfigError(key, f"{path} is not a pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(key, f"{path} is not a FedScale trace (expected a non-empty dict keyed by client id, "
                               f"got {type(data).__name__}{' (empty)' if isinstance(data, dict) else ''})")
    try:
        keys = sorted(data)
    except TypeError:
        raise ConfigError(key, f"{path}: client ids must be all numbers or all strings") from None
    return data, keys


def _entry(data: dict, client, path: str, key: str, fields: tuple[str, ...]) -> dict:
    """data[client], which must be a dict holding every field of `fields`."""
    entry = data[client]
    if not isinstance(entry, dict):
        raise ConfigError(key, f"{path}: client {client!r}: expected a dict with {', '.join(fields)}, "
                               f"got {type(entry).__name__}")
    missing = [f for f in fields if f not in entry]
    if missing:
        raise ConfigError(key, f"{path}: client {client!r}: missing {', '.join(missing)}")
    return entry


def _number(value, path: str, key: str, where: str) -> float:
    """value as a float; a ConfigError unless it is a finite real number (bools and text are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(key, f"{path}: {where}: expected a finite number, got {value!r}")
    return float(value)


def _numbers(values: list, path: str, key: str, where: str, labels: list | None = None) -> np.ndarray:
    """values as a float array; a ConfigError naming the first one that is not a finite number.

    Vectorized when the values are plain numbers (traces hold up to ~10^6 entries); `labels` (the client id of
    each value) locate a bad value in the message, else its index does.
    """
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged nesting
        arr = None
    if arr is not None and arr.ndim == 1 and (arr.dtype.kind in "iuf" or arr.size == 0):
        arr = arr.astype(float)
        if np.isfinite(arr).all():
            return arr
    return np.array([_number(v, path, key, f"client {labels[i]!r}: {where}" if labels is not None else f"{where}[{i}]")
                     for i, v in enumerate(values)], dtype=float)


def _times(value, path: str, key: str, where: str) -> np.ndarray:
    """A list (or array) of finite numbers as a float array."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ConfigError(key, f"{path}: {where}: expected a list of times, got {type(value).__name__}")
    return _numbers(list(value), path, key, where)


def device_capacity(path: str, n: int, reference_forward_flops: float) -> tuple[np.ndarray, np.ndarray]:
    """(effective FLOP/s, bytes/s) for n clients from a client_device_capacity trace."""
    data, keys = _load(path, DEVICE_KEY)
    entries = [_entry(data, k, path, DEVICE_KEY, ("computation", "communication")) for k in keys]
    ms = _numbers([e["computation"] for e in entries], path, DEVICE_KEY, "computation", keys)
    kbps = _numbers([e["communication"] for e in entries], path, DEVICE_KEY, "communication", keys)
    if (ms <= 0).any() or (kbps <= 0).any():
        raise ConfigError(DEVICE_KEY, f"{path}: computation and communication must be positive")
    pick = np.arange(n) % len(keys)
    return reference_forward_flops / (ms[pick] / 1000.0), kbps[pick] * 1000.0 / 8.0


def behavior(path: str, n: int) -> Windows:
    """Online windows for n clients from a client_behave_trace."""
    data, keys = _load(path, BEHAVIOR_KEY)
    starts, ends, sizes, period = [], [], [], []
    for k in keys:
        entry = _entry(data, k, path, BEHAVIOR_KEY, ("active", "inactive", "finish_time"))
        act = _times(entry["active"], path, BEHAVIOR_KEY, f"client {k!r}: active")
        inact = _times(entry["inactive"], path, BEHAVIOR_KEY, f"client {k!r}: inactive")
        fin = _number(entry["finish_time"], path, BEHAVIOR_KEY, f"client {k!r}: finish_time")
        m = min(len(act), len(inact))
        starts.append(act[:m])
        ends.append(inact[:m])
        sizes.append(m)
        period.append(fin if fin > 0 else 1.0)
    pick = np.arange(n) % len(keys)
    sizes_arr = np.array(sizes, dtype=np.int64)[pick]
    offsets = np.concatenate([[0], np.cumsum(sizes_arr)])
    return Windows(offsets, np.concatenate([starts[i] for i in pick]) if n else np.zeros(0),
                   np.concatenate([ends[i] for i in pick]) if n else np.zeros(0), np.array(period)[pick])


def check(device: str | None, behavior_path: str | None, reference_forward_flops: float) -> None:
    """Read the trace files a scenario names once, so a malformed one fails at scenario load, not mid-setup."""
    if device:
        device_capacity(device, 1, reference_forward_flops)
    if behavior_path:
        behavior(behavior_path, 1)
