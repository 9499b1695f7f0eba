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


def _load(path: str, key: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - FedScale's format is a pickle; the user names the file
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise ConfigError(key, f"cannot read FedScale trace {path}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(key, f"{path} is not a FedScale trace (expected a non-empty dict keyed by client id)")
    return data


def device_capacity(path: str, n: int, reference_forward_flops: float) -> tuple[np.ndarray, np.ndarray]:
    """(effective FLOP/s, bytes/s) for n clients from a client_device_capacity trace."""
    data = _load(path, "population.traces.device")
    keys = sorted(data)
    try:
        ms = np.array([float(data[k]["computation"]) for k in keys])
        kbps = np.array([float(data[k]["communication"]) for k in keys])
    except (KeyError, TypeError, ValueError):
        raise ConfigError("population.traces.device", f"{path}: entries need 'computation' and 'communication'") from None
    if (ms <= 0).any() or (kbps <= 0).any():
        raise ConfigError("population.traces.device", f"{path}: computation and communication must be positive")
    pick = np.arange(n) % len(keys)
    return reference_forward_flops / (ms[pick] / 1000.0), kbps[pick] * 1000.0 / 8.0


def behavior(path: str, n: int) -> Windows:
    """Online windows for n clients from a client_behave_trace."""
    data = _load(path, "population.traces.behavior")
    keys = sorted(data)
    starts, ends, sizes, period = [], [], [], []
    for k in keys:
        entry = data[k]
        try:
            act, inact, fin = list(entry["active"]), list(entry["inactive"]), float(entry["finish_time"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError("population.traces.behavior",
                              f"{path}: entries need 'active', 'inactive' and 'finish_time'") from None
        m = min(len(act), len(inact))
        starts.append(np.asarray(act[:m], float))
        ends.append(np.asarray(inact[:m], float))
        sizes.append(m)
        period.append(fin if fin > 0 else 1.0)
    pick = np.arange(n) % len(keys)
    sizes_arr = np.array(sizes)[pick]
    offsets = np.concatenate([[0], np.cumsum(sizes_arr)])
    return Windows(offsets, np.concatenate([starts[i] for i in pick]) if n else np.zeros(0),
                   np.concatenate([ends[i] for i in pick]) if n else np.zeros(0), np.array(period)[pick])
