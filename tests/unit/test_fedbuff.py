"""FedBuff on the virtual clock: staleness, the staleness bound, concurrency, buffer size, determinism."""

import numpy as np
import pytest

from fedsim import catalog
from fedsim.costs.profile import build_profile
from fedsim.population import sample
from fedsim.scenario import dump, load
from fedsim.schedules import STATUSES, FedBuffSchedule, make_schedule
from fedsim.schedules.fedbuff import staleness_weight
from tests.unit.test_costs import SHAPE

ASYNC = {"server.schedule": "async", "population.num_clients": 300, "server.rounds": 25,
         "server.async": {"concurrency": 12, "buffer_size": 4, "max_staleness": 2},
         "population.dropout": 0.15, "population.compute_sigma": 1.2,
         "population.hazard_per_hour": {"upload": 2.0}, "population.devices": {"phone-budget": 0.5, "laptop": 0.5}}


SCENARIO = dump(load({}))  # the default scenario (FedAvg, lr 1)


def _run(**over):
    s = load({}, {**ASYNC, **over})
    cat = catalog.load()
    pop = sample(s.population, cat, s.seed)
    profile = build_profile(s, SHAPE, cat, pop)
    sched = make_schedule(s, pop, profile)
    assert isinstance(sched, FedBuffSchedule)
    plans = []
    for k in range(1, s.server.rounds + 1):
        plans.append(sched.next_round(k))
        assert len(sched.inflight) <= 12
    return s, plans


def test_staleness_is_versions_since_dispatch_and_bounded():
    s, plans = _run()
    stale_seen = 0
    for k, plan in enumerate(plans, start=1):
        c = plan.columns
        arrived = np.isin(c["status"], (STATUSES.index("completed"), STATUSES.index("stale")))
        # during step k the server is at version k - 1; a client dispatched at version v has staleness k-1-v
        np.testing.assert_array_equal(c["staleness"][arrived], (k - 1) - c["version"][arrived])
        assert np.all(c["staleness"][c["used"]] <= 2)
        stale = c["status"] == STATUSES.index("stale")
        assert np.all(c["staleness"][stale] > 2) and not c["used"][stale].any()
        stale_seen += stale.sum()
        assert c["used"].sum() == 4  # buffer size
        np.testing.assert_allclose(c["weight"][c["used"]], 1 / np.sqrt(1 + c["staleness"][c["used"]]))
        assert set(c["version"][c["used"]]) <= set(range(k))
    assert stale_seen > 0  # the heavy-tailed population does produce stale updates here


def test_concurrency_limit_holds_over_virtual_time():
    _, plans = _run()
    rows = {k: np.concatenate([p.columns[k] for p in plans]) for k in ("start_s", "t_download_s", "t_compute_s",
                                                                     "t_upload_s", "status")}
    spent = rows["t_download_s"] + rows["t_compute_s"] + rows["t_upload_s"]
    live = rows["status"] != STATUSES.index("ineligible")
    starts, ends = rows["start_s"][live], rows["start_s"][live] + spent[live]
    for t in np.unique(starts):
        assert np.sum((starts <= t) & (ends > t + 1e-12)) <= 12  # phase sums round: a client ending at t


def test_last_step_cuts_off_clients_in_flight_and_runs_are_deterministic():
    _, plans = _run()
    last = plans[-1].columns
    assert (last["status"] == STATUSES.index("late")).sum() > 0
    _, again = _run()
    for a, b in zip(plans, again):
        for key in a.columns:
            np.testing.assert_array_equal(a.columns[key], b.columns[key])
    times = [p.start_s + p.duration_s for p in plans]
    assert times == sorted(times)


def test_failures_happen_in_the_phase_their_hazard_names():
    _, plans = _run(**{"population.dropout": 0.0, "population.hazard_per_hour": {"upload": 20000.0}})
    c = {k: np.concatenate([p.columns[k] for p in plans]) for k in ("status", "failed_phase")}
    dropped = c["status"] == STATUSES.index("dropped")
    assert dropped.any() and np.all(c["failed_phase"][dropped] == 3)  # only the upload hazard is set


@pytest.mark.parametrize("kind, expected", [("constant", [1, 1, 1]), ("inverse", [1, 0.5, 0.25]),
                                            ("inverse_sqrt", [1, 2**-0.5, 0.5])])
def test_staleness_weights(kind, expected):
    cfg = load({}, {"server.async.staleness_weight": kind}).server.async_
    np.testing.assert_allclose(staleness_weight(cfg, np.array([0, 1, 3])), expected)


def test_a_client_dispatched_at_an_aggregation_trains_from_the_new_version():
    """Step j ends (version j exists) at E_j; a client dispatched at virtual time t must train from
    max{j : E_j <= t}: the one dispatched at the buffer's K-th arrival gets the post-aggregation version."""
    _, plans = _run()
    ends = np.array([p.start_s + p.duration_s for p in plans])
    at_boundary = 0
    for plan in plans:
        c = plan.columns
        live = c["status"] != STATUSES.index("ineligible")
        expected = np.searchsorted(ends, c["start_s"][live], side="right")
        np.testing.assert_array_equal(c["version"][live], expected)
        at_boundary += np.isin(c["start_s"][live], ends).sum()
    assert at_boundary > 0  # the case under test occurs


def test_last_step_books_no_zero_cost_late_rows():
    _, plans = _run()
    c = plans[-1].columns
    late = c["status"] == STATUSES.index("late")
    spent = c["t_download_s"] + c["t_compute_s"] + c["t_upload_s"]
    assert late.any() and (spent[late] > 0).all()


def test_ineligible_picks_are_replaced_until_concurrency_is_reached():
    """90% of clients cannot hold the model: slots freed by ineligible picks are refilled at once (three tries
    used to leave the server below its concurrency while thousands of eligible clients were online)."""
    import dataclasses

    s = load({}, {**ASYNC, "population.num_clients": 3000, "population.dropout": 0.0,
                  "population.hazard_per_hour": {"upload": 0.0},
                  "population.devices": {"phone-budget": 0.9, "laptop": 0.1}})
    cat = catalog.load()
    pop = sample(s.population, cat, s.seed)
    profile = build_profile(s, SHAPE, cat, pop)
    budget = float(pop.memory_bytes[pop.device == pop.device_names.index("phone-budget")].max())
    profile = dataclasses.replace(profile, memory_options=np.array([budget * 1.01]))  # phones cannot hold it
    sched = FedBuffSchedule(s, pop, profile)
    for k in range(1, s.server.rounds):
        plan = sched.next_round(k)
        assert (plan.columns["status"] == STATUSES.index("ineligible")).any()
        sched._dispatch(k + 1)  # what the next step does first: the server is back at full concurrency
        assert len(sched.inflight) == 12


def test_every_dispatch_has_its_own_stream_key():
    """A client can be dispatched twice within one step (it arrived and was picked again): its two trainings
    must not share (dispatch, client) random streams."""
    _, plans = _run(**{"population.num_clients": 40})
    keys = np.concatenate([p.columns["dispatch"][p.columns["dispatch"] >= 0] for p in plans])
    assert len(keys) == len(np.unique(keys))
    twice = sum(len(p.to_train) - len(np.unique(p.to_train)) for p in plans)
    assert twice > 0  # with 40 clients and 12 in flight, some client trains twice in one step


def test_fedbuff_step_is_not_renormalised_by_the_staleness_discount(tmp_path):
    """Nguyen et al. 2022, Algorithm 1: Delta = (1/K) sum_i s(tau_i) Delta_i. The aggregator, fed as the pool
    feeds it (weight = the plan's staleness weight, normaliser 1, times samples), moves the model half as far
    for two equal-sized updates of staleness 3 under 1/sqrt(1+s) as for the same two updates fresh."""
    from fedsim.client_round import ClientResult
    from fedsim.runtime.aggregator import Aggregator

    cfg = load({}, {"server.async.staleness_weight": "inverse_sqrt"}).server.async_
    steps = {}
    for staleness in (0, 3):
        (tmp_path / str(staleness)).mkdir()
        agg = Aggregator(str(tmp_path / str(staleness)), {"d": np.zeros(2, np.float32)}, SCENARIO)
        agg.begin(1)
        w = float(staleness_weight(cfg, np.array([staleness]))[0])
        for seq, x in enumerate(([2.0, 0.0], [0.0, 4.0])):
            agg.put(seq, w, ClientResult(seq, seq, 10, 1.0, "-", True), {"delta": {"d": np.array(x, np.float32)}})
        steps[staleness] = agg.finish()[0]["d"]
        agg.close()
    np.testing.assert_allclose(steps[0], [1.0, 2.0])  # (1/2)([2,0] + [0,4])
    np.testing.assert_allclose(steps[3], [0.5, 1.0])  # (1/2)(0.5 [2,0] + 0.5 [0,4])
