import numpy as np

from fedsim import catalog
from fedsim.population import MBIT, sample
from fedsim.scenario import load


def _pop(**over):
    s = load({}, {"population.num_clients": 20000, **over})
    return s, sample(s.population, catalog.load(), s.seed)


def test_mixture_shares_and_determinism():
    s, p = _pop(**{"population.devices": {"laptop": 0.25, "phone-budget": 0.75}})
    share = np.bincount(p.device, minlength=2) / p.size
    assert p.device_names == ("phone-budget", "laptop")  # catalog order
    assert abs(share[1] - 0.25) < 0.02 and abs(share[0] - 0.75) < 0.02
    _, q = _pop(**{"population.devices": {"laptop": 0.25, "phone-budget": 0.75}})
    assert np.array_equal(p.flops, q.flops) and np.array_equal(p.up_bps, q.up_bps)
    _, r = _pop(**{"population.devices": {"laptop": 0.25, "phone-budget": 0.75}, "seed": 1})
    assert not np.array_equal(p.flops, r.flops)


def test_class_medians_come_from_the_catalog():
    cat = catalog.load()
    _, p = _pop(**{"population.devices": {"laptop": 1.0}, "population.networks": {"lte": 1.0}})
    dev = cat["devices"]["laptop"]
    assert abs(np.median(p.flops) / (dev["peak_flops"] * dev["efficiency"]) - 1) < 0.03
    assert abs(np.median(p.up_bps) / (cat["networks"]["lte"]["up_mbps"] * MBIT) - 1) < 0.03
    assert np.all(p.memory_bytes == dev["memory_gb"] * 1e9)
    assert np.all(p.latency_s == cat["networks"]["lte"]["latency_s"])


def test_per_device_network_mixtures():
    _, p = _pop(**{"population.devices": {"datacenter-gpu": 0.5, "phone-budget": 0.5}})
    eth = p.network_names.index("ethernet")
    dc = p.device_names.index("datacenter-gpu")
    assert np.all(p.network[p.device == dc] == eth)
    assert np.mean(p.network[p.device != dc] == eth) == 0


def test_no_spread_when_sigma_zero():
    _, p = _pop(**{"population.devices": {"laptop": 1.0}, "population.compute_sigma": 0.0})
    assert np.ptp(p.flops) == 0


def test_population_does_not_depend_on_the_key_order_of_devices():
    _, a = _pop(**{"population.devices": {"laptop": 0.25, "phone-budget": 0.5, "edge-gpu": 0.25}})
    _, b = _pop(**{"population.devices": {"edge-gpu": 0.25, "phone-budget": 0.5, "laptop": 0.25}})
    assert a.device_names == b.device_names
    for key in ("device", "network", "flops", "memory_bytes", "up_bps", "latency_s"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
