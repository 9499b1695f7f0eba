"""FedScale-format traces as a population source."""

import pickle

import numpy as np
import pytest

from fedsim import catalog
from fedsim.errors import ConfigError
from fedsim.population import sample
from fedsim.scenario import load
from fedsim.schedules import select
from fedsim.traces import Windows, behavior, device_capacity


@pytest.fixture()
def trace_files(tmp_path):
    device = {7: {"computation": 100.0, "communication": 8000.0}, 3: {"computation": 50.0, "communication": 800.0}}
    behave = {
        3: {"active": [0, 50], "inactive": [10, 60], "finish_time": 100, "duration": 100},
        7: {"active": [20], "inactive": [80], "finish_time": 100, "duration": 100},
    }
    paths = {}
    for name, data in (("device", device), ("behave", behave)):
        paths[name] = tmp_path / f"{name}.pkl"
        paths[name].write_bytes(pickle.dumps(data))
    return paths


def test_device_capacity_mapping(trace_files):
    flops, bps = device_capacity(str(trace_files["device"]), 3, reference_forward_flops=1e9)
    # sorted keys [3, 7], cycling: clients 0, 1, 2 -> ids 3, 7, 3; 1e9 FLOPs in 50 ms -> 2e10 FLOP/s
    np.testing.assert_allclose(flops, [2e10, 1e10, 2e10])
    np.testing.assert_allclose(bps, [800 * 1000 / 8, 8000 * 1000 / 8, 800 * 1000 / 8])


def test_behaviour_windows_share_and_online(trace_files):
    w = behavior(str(trace_files["behave"]), 2)  # client 0 <- id 3, client 1 <- id 7
    np.testing.assert_allclose(w.share(), [0.2, 0.6])
    ids = np.array([0, 1])
    assert list(w.online(ids, 5.0)) == [True, False]
    assert list(w.online(ids, 55.0)) == [True, True]
    assert list(w.online(ids, 130.0)) == [False, True]  # period 100: 130 -> 30
    assert list(w.online(np.array([1, 1, 0]), 205.0)) == [False, False, True]


def test_population_and_selection_follow_traces(trace_files):
    s = load({}, {"population.num_clients": 40, "server.clients_per_round": 5, "server.over_selection": 1.0,
                  "population.traces": {"device": str(trace_files["device"]), "behavior": str(trace_files["behave"])}})
    pop = sample(s.population, catalog.load(), s.seed)
    np.testing.assert_allclose(pop.availability[:2], [0.2, 0.6])
    assert pop.up_bps[1] == pop.down_bps[1] == 8000 * 1000 / 8
    chosen = select(s, pop, rnd=1, now=30.0)  # only the id-7 clients (odd indices) are online at t=30
    assert len(chosen) == 5 and np.all(chosen % 2 == 1)


def test_bad_traces_name_the_key(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({1: {"computation": 1.0}}))
    with pytest.raises(ConfigError) as err:
        device_capacity(str(bad), 2, 1e9)
    assert err.value.path == "population.traces.device"
    with pytest.raises(ConfigError, match="file not found"):
        load({}, {"population.traces.behavior": "missing.pkl"})
    no_windows_last = Windows(np.array([0, 1, 1]), np.array([0.0]), np.array([5.0]), np.array([10.0, 10.0]))
    assert list(no_windows_last.share()) == [0.5, 0.0]
    assert list(no_windows_last.online(np.array([1, 0]), 3.0)) == [False, True]


GOOD_DEVICE = {1: {"computation": 10.0, "communication": 100.0}}
GOOD_BEHAVE = {1: {"active": [0], "inactive": [5], "finish_time": 10}}


@pytest.mark.parametrize("key, content, words", [
    ("device", b"client_id,computation\n1,10\n", "is not a pickle"),
    ("device", b"", "is not a pickle"),
    ("device", pickle.dumps([1, 2, 3]), "expected a non-empty dict keyed by client id, got list"),
    ("device", pickle.dumps({}), "got dict (empty)"),
    ("device", pickle.dumps({1: GOOD_DEVICE[1], "x": GOOD_DEVICE[1]}), "client ids must be all numbers or all strings"),
    ("device", pickle.dumps({1: [10.0, 100.0]}), "client 1: expected a dict with computation, communication, got list"),
    ("device", pickle.dumps({1: {"computation": 1.0}}), "client 1: missing communication"),
    ("device", pickle.dumps({1: GOOD_DEVICE[1], 2: {"computation": "fast", "communication": 1.0}}),
     "client 2: computation: expected a finite number, got 'fast'"),
    ("device", pickle.dumps({1: {"computation": float("nan"), "communication": 1.0}}), "expected a finite number"),
    ("device", pickle.dumps({1: {"computation": 0.0, "communication": 1.0}}), "must be positive"),
    ("behavior", pickle.dumps({1: {"active": [0], "inactive": [5]}}), "client 1: missing finish_time"),
    ("behavior", pickle.dumps({1: {**GOOD_BEHAVE[1], "active": "0 5"}}), "active: expected a list of times, got str"),
    ("behavior", pickle.dumps({1: {**GOOD_BEHAVE[1], "inactive": [5, None]}}),
     "client 1: inactive[1]: expected a finite number, got None"),
    ("behavior", pickle.dumps({1: {**GOOD_BEHAVE[1], "active": [[0, 1]]}}), "active[0]: expected a finite number"),
    ("behavior", pickle.dumps({1: {**GOOD_BEHAVE[1], "finish_time": "soon"}}),
     "client 1: finish_time: expected a finite number, got 'soon'"),
])
def test_malformed_traces_fail_at_load_naming_the_key(tmp_path, key, content, words):
    path = tmp_path / f"{key}.pkl"
    path.write_bytes(content)
    loader = (lambda: device_capacity(str(path), 2, 1e9)) if key == "device" else (lambda: behavior(str(path), 2))
    for attempt in (loader, lambda: load({}, {f"population.traces.{key}": str(path)})):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert err.value.path == f"population.traces.{key}"
        assert words in str(err.value) and "\n" not in str(err.value)


def test_a_trace_changed_on_disk_is_read_again(tmp_path):
    path = tmp_path / "device.pkl"
    path.write_bytes(pickle.dumps(GOOD_DEVICE))
    assert device_capacity(str(path), 1, 1e9)[1][0] == 100.0 * 1000 / 8
    path.write_bytes(pickle.dumps({1: {"computation": 10.0, "communication": 2000.0}, 2: GOOD_DEVICE[1]}))
    assert list(device_capacity(str(path), 2, 1e9)[1]) == [2000.0 * 1000 / 8, 100.0 * 1000 / 8]


def test_unreadable_trace_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot read FedScale trace") as err:
        behavior(str(tmp_path), 1)  # a directory
    assert err.value.path == "population.traces.behavior"
