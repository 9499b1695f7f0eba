"""The sync round on a hand-built population whose finish times are known exactly."""

import numpy as np

from fedsim.clock import Clock
from fedsim.costs.profile import CostProfile
from fedsim.population import Population
from fedsim.scenario import load
from fedsim.schedules import STATUSES, SyncSchedule, close_round, select
from tests.unit.test_costs import SHAPE


def plan_round(s, pop, profile, clock, rnd):
    return SyncSchedule(s, pop, profile, clock).next_round(rnd)


TIMES = np.array([7.0, 1.0, 9.0, 3.0, 2.0, 10.0, 5.0, 4.0, 8.0, 6.0])  # compute seconds of clients 0..9


def _pop(memory=None, availability=1.0):
    n = len(TIMES)
    return Population(
        device_names=("d",), network_names=("n",), device=np.zeros(n, np.int16), network=np.zeros(n, np.int16),
        flops=100.0 / TIMES, memory_bytes=np.full(n, 100.0) if memory is None else memory,
        power_busy_w=np.full(n, 2.0), power_idle_w=np.zeros(n), up_bps=np.full(n, 1e3), down_bps=np.full(n, 1e3),
        latency_s=np.zeros(n), availability=np.full(n, availability),
    )


PROFILE = CostProfile(shape=SHAPE, flops_per_client=100.0, bytes_down=0.0, bytes_up=0.0,
                      memory_breakdown={"all": 50.0}, quantizations=("none",), memory_options=np.array([50.0]),
                      alpha_up=np.zeros(1), alpha_down=np.zeros(1), beta=np.zeros(1), grid_gco2_per_kwh=480.0,
                      server_power_w=0.0)


def _scenario(**over):
    base = {"population.num_clients": 10, "population.dropout": 0.0, "population.round_jitter_sigma": 0.0,
            "server.clients_per_round": 5, "server.over_selection": 2.0}
    return load({}, {**base, **over})


def _by_client(plan, key):
    out = np.empty(len(TIMES), dtype=plan.columns[key].dtype)
    out[plan.columns["client_id"]] = plan.columns[key]
    return out


def test_over_selection_and_close_at_kth_arrival():
    s, clock = _scenario(), Clock(100.0)
    plan = plan_round(s, _pop(), PROFILE, clock, 1)
    assert len(plan.columns["client_id"]) == 10  # ceil(5 x 2.0)
    assert plan.duration_s == 5.0 and clock.now == 105.0  # 5th fastest finishes at 5 s
    status = _by_client(plan, "status")
    assert set(np.flatnonzero(status == 0)) == {1, 4, 3, 7, 6}
    assert set(np.flatnonzero(status == STATUSES.index("late"))) == {0, 2, 5, 8, 9}
    # stragglers are cut off when the round closes: 5 s of compute booked, at 2 W
    comp = _by_client(plan, "t_compute_s")
    assert np.allclose(comp[[0, 2, 5, 8, 9]], 5.0) and np.allclose(comp[[1, 4]], [1.0, 2.0])
    assert np.allclose(_by_client(plan, "energy_j"), 2.0 * comp)
    assert list(plan.to_train) == [1, 4, 3, 7, 6]  # arrival order


def test_deadline_closes_early():
    plan = plan_round(_scenario(**{"server.deadline_s": 3.5}), _pop(), PROFILE, Clock(), 1)
    assert plan.duration_s == 3.5
    assert sorted(plan.to_train) == [1, 3, 4]
    assert np.allclose(_by_client(plan, "t_compute_s")[[0, 2, 5]], 3.5)


def test_ineligible_clients_cost_nothing_and_are_not_trained():
    memory = np.full(10, 100.0)
    memory[[1, 4]] = 10.0  # below the 50 B the profile needs
    plan = plan_round(_scenario(), _pop(memory), PROFILE, Clock(), 1)
    status = _by_client(plan, "status")
    assert list(np.flatnonzero(status == STATUSES.index("ineligible"))) == [1, 4]
    assert _by_client(plan, "energy_j")[[1, 4]].sum() == 0
    assert plan.duration_s == 7.0 and 1 not in plan.to_train  # 5th of 3,4,5,6,7 s


def test_fallback_quantization_makes_small_devices_eligible():
    import dataclasses

    memory = np.full(10, 100.0)
    memory[[1, 4]] = 30.0  # cannot hold 50 B unquantized, can hold the 25 B nf4 option
    memory[7] = 10.0  # fits nothing
    profile = dataclasses.replace(PROFILE, quantizations=("none", "nf4"), memory_options=np.array([50.0, 25.0]))
    plan = plan_round(_scenario(), _pop(memory), profile, Clock(), 1)
    assert list(_by_client(plan, "quantization")) == [0, 1, 0, 0, 1, 0, 0, -1, 0, 0]
    assert _by_client(plan, "status")[7] == STATUSES.index("ineligible")
    assert 1 in plan.to_train and 4 in plan.to_train


def test_dropouts_book_partial_work_and_empty_round_skips():
    plan = plan_round(_scenario(**{"population.dropout": 1.0}), _pop(), PROFILE, Clock(), 1)
    status = _by_client(plan, "status")
    assert np.all(status == STATUSES.index("dropped")) and len(plan.to_train) == 0
    comp = _by_client(plan, "t_compute_s")
    assert np.all(comp > 0) and np.all(comp <= TIMES)
    assert plan.duration_s == comp.max()  # the round ends when the last client is known to have failed
    assert set(_by_client(plan, "failed_phase")) == {2}  # all in compute (no transfer time here)


def test_rounds_are_deterministic_and_vary_by_round():
    s = _scenario(**{"population.dropout": 0.3, "population.round_jitter_sigma": 0.2})
    a = plan_round(s, _pop(), PROFILE, Clock(), 3)
    b = plan_round(s, _pop(), PROFILE, Clock(), 3)
    for key in a.columns:
        np.testing.assert_array_equal(a.columns[key], b.columns[key])
    c = plan_round(s, _pop(), PROFILE, Clock(), 4)
    assert not np.array_equal(a.columns["t_compute_s"], c.columns["t_compute_s"])


def test_selection_only_takes_online_clients():
    s = load({}, {"population.num_clients": 10, "server.clients_per_round": 3, "server.over_selection": 1.0})
    pop = _pop(availability=0.5)
    sizes = {len(select(s, pop, r, 0.0)) for r in range(50)}
    assert max(sizes) == 3 and min(sizes) >= 1
    assert len(select(s, _pop(), 1, 0.0)) == 3


def _reference_close(arrive, fail, k, deadline):
    """The round as a discrete-event loop on the heap clock: arrivals, failures, deadline."""
    clock = Clock()
    for i in np.flatnonzero(np.isfinite(arrive)):
        clock.push(arrive[i], ("arrive", i), 0)
    for i in np.flatnonzero(np.isfinite(fail)):
        clock.push(fail[i], ("fail", i), 1)
    if deadline is not None:
        clock.push(deadline, ("deadline", -1), 2)
    outstanding = int(np.isfinite(arrive).sum() + np.isfinite(fail).sum())
    close, done = 0.0, []
    while outstanding and len(clock):
        close, (kind, i) = clock.pop()
        if kind == "deadline":
            break
        outstanding -= 1
        if kind == "arrive":
            done.append(i)
            if len(done) == k:
                break
    return close, sorted(done)


def test_vectorized_close_equals_the_event_loop():
    rng = np.random.default_rng(0)
    for trial in range(3000):
        n = int(rng.integers(1, 12))
        arrive = rng.integers(0, 6, n).astype(float)  # small integer times: many ties
        fail = rng.integers(0, 6, n).astype(float)
        state = rng.integers(0, 3, n)  # 0 arrives, 1 fails, 2 ineligible (neither)
        arrive[state != 0] = np.inf
        fail[state != 1] = np.inf
        k = int(rng.integers(1, n + 1))
        deadline = None if trial % 3 == 0 else float(rng.integers(0, 7))
        duration, completed = close_round(arrive, fail, k, deadline)
        ref_close, ref_done = _reference_close(arrive, fail, k, deadline)
        assert duration == ref_close, (arrive, fail, k, deadline)
        assert list(np.flatnonzero(completed)) == ref_done, (arrive, fail, k, deadline)


def test_round_below_quorum_fails_and_uses_nothing():
    plan = plan_round(_scenario(**{"server.min_quorum": 6}), _pop(), PROFILE, Clock(), 1)
    assert plan.failed and len(plan.to_train) == 0
    assert (plan.columns["status"] == 0).sum() == 5  # they completed, but the server discards the round


def test_diurnal_availability_follows_local_time():
    import dataclasses

    from fedsim.schedules.base import online_probability

    s = _scenario(**{"population.diurnal": {"amplitude": 0.8, "peak_hour": 20, "timezones": {"0": 1}},
                     "population.availability": 0.5})
    pop = dataclasses.replace(_pop(availability=0.5), tz_offset_h=np.array([0.0] * 5 + [12.0] * 5))
    at_20h_utc = online_probability(s, pop, np.arange(10), 20 * 3600.0)
    np.testing.assert_allclose(at_20h_utc[:5], 0.5 * 1.8)  # local 20:00: the peak
    np.testing.assert_allclose(at_20h_utc[5:], 0.5 * 0.2)  # local 08:00: the trough


def test_selection_finds_k_online_clients_in_a_diurnal_trough():
    """100k clients, availability 0.5 x (1 + 0.9 cos): at the trough 5% are online (~5,000), so a round that
    wants 130 must get 130 (the candidate draw was sized by the mean availability and found ~20)."""
    from fedsim import catalog
    from fedsim.population import sample
    from fedsim.schedules.base import online_probability

    s = load({}, {"population.num_clients": 100_000, "population.availability": 0.5,
                  "population.diurnal": {"amplitude": 0.9, "peak_hour": 20, "timezones": {"0": 1}},
                  "server.clients_per_round": 100, "server.over_selection": 1.3})
    pop = sample(s.population, catalog.load(), s.seed)
    trough = 8 * 3600.0  # local 08:00 everywhere: 12 h from the 20:00 peak
    assert np.allclose(online_probability(s, pop, np.arange(10), trough), 0.05)
    for rnd in range(1, 6):
        ids = select(s, pop, rnd, trough)
        assert len(ids) == 130 and len(np.unique(ids)) == 130
    first = select(s, pop, 1, trough)
    second = select(s, pop, 1, trough, exclude=first)
    assert len(second) == 130 and not set(first) & set(second)  # others, not the same


def test_selection_returns_everyone_online_when_fewer_than_k_are():
    s = load({}, {"population.num_clients": 10, "server.clients_per_round": 8, "server.over_selection": 1.0})
    half = _pop(availability=1.0)
    half.availability[5:] = 0.0  # a population's arrays are data: switch half of it off
    for rnd in range(1, 20):
        assert sorted(select(s, half, rnd, 0.0)) == [0, 1, 2, 3, 4]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(online=st.lists(st.booleans(), min_size=1, max_size=300), want=st.integers(1, 50),
       n_excluded=st.integers(0, 20), rnd=st.integers(1, 10**6))
def test_select_takes_k_distinct_online_clients_whenever_k_are_online(online, want, n_excluded, rnd):
    """Whatever who is online: the selection is distinct, online, never excluded, and has min(K, #eligible
    online) clients: never fewer because the draw was sized wrongly."""
    import dataclasses

    n = len(online)
    s = load({}, {"population.num_clients": max(n, 10), "server.clients_per_round": 1})
    avail = np.array(online, dtype=float)
    pop = Population(device_names=("d",), network_names=("n",), device=np.zeros(n, np.int16),
                     network=np.zeros(n, np.int16), flops=np.ones(n), memory_bytes=np.ones(n),
                     power_busy_w=np.ones(n), power_idle_w=np.ones(n), up_bps=np.ones(n), down_bps=np.ones(n),
                     latency_s=np.zeros(n), availability=np.maximum(avail, 0.0))
    pop = dataclasses.replace(pop)
    excluded = np.arange(min(n_excluded, n))
    ids = select(s, pop, rnd, 0.0, want=want, exclude=excluded)
    eligible = np.flatnonzero(avail > 0)
    eligible = eligible[~np.isin(eligible, excluded)]
    assert len(ids) == len(np.unique(ids)) == min(want, len(eligible))
    assert set(ids) <= set(eligible)
