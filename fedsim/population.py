"""The virtual population: clients as numpy arrays drawn (seeded, vectorized) from catalog mixtures.

A client is a row: device class, network class, effective compute speed, usable memory, power, bandwidth up
and down, latency, availability. Nothing here holds a process or a model; a million clients are ~60 MB.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim import traces
from fedsim.rng import stream
from fedsim.scenario.schema import PopulationConfig
from fedsim.traces import Windows

MBIT = 1e6 / 8  # bytes per second in one Mbit/s


@dataclass(frozen=True)
class Population:
    """Per-client arrays (length num_clients) plus the class names their integer codes index."""

    device_names: tuple[str, ...]
    network_names: tuple[str, ...]
    device: np.ndarray  # int16 code into device_names
    network: np.ndarray  # int16 code into network_names
    flops: np.ndarray  # effective training FLOP/s = peak x efficiency x per-client speed factor
    memory_bytes: np.ndarray
    power_busy_w: np.ndarray
    power_idle_w: np.ndarray
    up_bps: np.ndarray  # bytes per second
    down_bps: np.ndarray
    latency_s: np.ndarray
    availability: np.ndarray  # probability of being online when sampled (online share with traces)
    windows: Windows | None = None  # behaviour-trace online windows: who is online at a given virtual time
    tz_offset_h: np.ndarray | None = None  # UTC offset of each client (diurnal availability)

    @functools.cached_property
    def mean_availability(self) -> float:
        """Mean probability of being online (computed once: selection sizes its candidate draw with it)."""
        return float(self.availability.mean())

    @property
    def size(self) -> int:
        """Number of virtual clients."""
        return int(self.device.shape[0])


def _mixture(weights: dict[str, float], names: list[str]) -> np.ndarray:
    p = np.array([weights.get(n, 0.0) for n in names], dtype=np.float64)
    return p / p.sum()


def _lognormal(rng: np.random.Generator, sigma: float, n: int) -> np.ndarray:
    """Multiplicative spread with median 1 (so the catalog number is the class median)."""
    return rng.lognormal(0.0, sigma, n) if sigma > 0 else np.ones(n)


def sample(cfg: PopulationConfig, cat: dict[str, Any], seed: int) -> Population:
    """Draw cfg.num_clients clients from the device mixture, then each device's network mixture.

    Speed and bandwidth vary within a class by a lognormal factor (median 1) so the catalog value is the
    class median; this is the heavy right tail of device speeds FedScale's traces show (Lai et al. 2022).
    FedScale traces, when given, replace speed and bandwidth (device trace) and availability (behaviour trace).
    """
    n = cfg.num_clients
    rng = stream(seed, "population")
    # Catalog order, not the order the scenario lists them in: the same mixture is the same population.
    dev_names = [d for d in cat["devices"] if cfg.devices.get(d, 0) > 0]
    net_names = list(cat["networks"])
    device = rng.choice(len(dev_names), size=n, p=_mixture(cfg.devices, dev_names)).astype(np.int16)
    network = np.empty(n, dtype=np.int16)
    u = rng.random(n)
    for code, name in enumerate(dev_names):
        mix = cfg.networks or cat["devices"][name]["networks"]
        cdf = np.cumsum(_mixture(mix, net_names))
        mask = device == code
        network[mask] = np.minimum(np.searchsorted(cdf, u[mask], side="right"), len(net_names) - 1)

    def per_device(key: str) -> np.ndarray:
        return np.array([float(cat["devices"][d][key]) for d in dev_names])[device]

    def per_network(key: str) -> np.ndarray:
        return np.array([float(cat["networks"][k][key]) for k in net_names])[network]

    speed = _lognormal(rng, cfg.compute_sigma, n)
    bw = _lognormal(rng, cfg.bandwidth_sigma, n)
    flops = per_device("peak_flops") * per_device("efficiency") * speed
    up, down = per_network("up_mbps") * MBIT * bw, per_network("down_mbps") * MBIT * bw
    tr = cfg.traces
    if tr.device:
        flops, up = traces.device_capacity(tr.device, n, tr.reference_forward_flops)
        down = up
    windows = traces.behavior(tr.behavior, n) if tr.behavior else None
    tz = None
    if cfg.diurnal.amplitude > 0:
        zones = sorted(cfg.diurnal.timezones, key=float)  # UTC offsets (checked at load); not the YAML's key order
        pick = stream(seed, "population-tz").choice(len(zones), size=n, p=_mixture(cfg.diurnal.timezones, zones))
        tz = np.array([float(z) for z in zones])[pick]
    return Population(
        device_names=tuple(dev_names),
        network_names=tuple(net_names),
        device=device,
        network=network,
        flops=flops,
        memory_bytes=per_device("memory_gb") * 1e9,
        power_busy_w=per_device("power_busy_w"),
        power_idle_w=per_device("power_idle_w"),
        up_bps=up,
        down_bps=down,
        latency_s=per_network("latency_s"),
        availability=windows.share() if windows else np.full(n, cfg.availability),
        windows=windows,
        tz_offset_h=tz,
    )


def median_client(cat: dict[str, Any], device: str, network: str) -> Population:
    """A one-client population at the catalog's class medians (no spread): what `fedsim cost` describes."""
    d, n = cat["devices"][device], cat["networks"][network]
    one = np.ones(1)
    return Population(
        device_names=(device,), network_names=(network,), device=np.zeros(1, np.int16),
        network=np.zeros(1, np.int16), flops=one * d["peak_flops"] * d["efficiency"],
        memory_bytes=one * d["memory_gb"] * 1e9, power_busy_w=one * d["power_busy_w"],
        power_idle_w=one * d["power_idle_w"], up_bps=one * n["up_mbps"] * MBIT, down_bps=one * n["down_mbps"] * MBIT,
        latency_s=one * n["latency_s"], availability=one,
    )
