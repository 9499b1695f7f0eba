"""FedBuff on the virtual clock: staleness, the staleness bound, concurrency, buffer size, determinism."""

import numpy as np
import pytest

from fedsim import catalog
from fedsim.costs.profile import build_profile
from fedsim.population import sample
from fedsim.scenario import load
from fedsim.schedules import STATUSES, FedBuffSchedule, make_schedule
from fedsim.schedules.fedbuff import staleness_weight
from tests.unit.test_costs import SHAPE

ASYNC = {"server.schedule": "async", "population.num_clients": 300, "server.rounds": 25,
         "server.async": {"concurrency": 12, "buffer_size": 4, "max_staleness": 2},
         "population.dropout": 0.15, "population.compute_sigma": 1.2,
         "population.hazard_per_hour": {"upload": 2.0}, "population.devices": {"phone-budget": 0.5, "laptop": 0.5}}


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
        assert np.sum((starts <= t) & (ends > t)) <= 12


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
