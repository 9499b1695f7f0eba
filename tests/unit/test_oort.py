"""Oort's participant selection (Lai et al. 2021, OSDI'21, Algorithm 1) on small populations worked out by hand."""

import math
import pickle

import numpy as np
import pytest

from fedsim.rng import stream
from fedsim.strategies.oort import Oort, OortConfig


def _hand_example(**cfg) -> Oort:
    """Three clients: A = 0 (100 samples, mean loss^2 4 -> U = 100 * 2 = 200, 10 s, seen round 2),
    B = 1 (50, 1 -> U = 50, 20 s, round 1), C = 2 (300, 0.25 -> U = 300 * 0.5 = 150, 40 s, round 4)."""
    o = Oort(OortConfig(round_threshold=50.0, **cfg), seed=0)
    o.feedback(1, [1], [50], [1.0], [20.0])
    o.feedback(2, [0], [100], [4.0], [10.0])
    o.feedback(4, [2], [300], [0.25], [40.0])
    return o


def test_utility_of_a_hand_computed_example():
    o = _hand_example(normalize=False)
    # T: the 50th percentile of (10, 20, 40) -> index floor(3 * 0.5) = 1 -> 20 s; C (40 s) is a straggler.
    assert o.preferred_duration() == 20.0
    # bonus sqrt(0.1 ln 10 / L): L=1 -> 0.4798526, L=2 -> 0.3393070, L=4 -> 0.2399263
    # A: 200 + 0.3393070;  B: 50 + 0.4798526 (20 s is not slower than T);  C: (150 + 0.2399263) * (20/40)^2
    np.testing.assert_allclose(o.utility(10, [0, 1, 2]), [200.3393070, 50.4798526, 37.5599816], rtol=1e-7)
    # normalized: U / 200 (the 95% clip value of three is the largest), so A 1, B 0.25, C 0.75
    o = _hand_example()
    np.testing.assert_allclose(o.utility(10, [0, 1, 2]), [1.3393070, 0.7298526, 0.2474816], rtol=1e-6)
    assert o.utility(1, [0])[0] == 1.0  # round 1: log 1 = 0, no bonus
    with pytest.raises(ValueError):
        o.utility(10, [7])  # never explored


def test_straggler_penalized_by_the_squared_duration_ratio():
    o = Oort(OortConfig(round_threshold=50.0, normalize=False), seed=0)
    o.feedback(3, [5, 6, 7], [10, 10, 10], [1.0, 1.0, 1.0], [4.0, 8.0, 16.0])  # T = 8 s
    u = o.utility(9, [5, 6, 7])
    assert u[0] == u[1]  # at or under T: no penalty, whatever the speed
    assert u[2] == pytest.approx(u[1] * (8 / 16) ** 2)  # alpha = 2: a quarter
    o = Oort(OortConfig(round_threshold=50.0, normalize=False, straggler_penalty=1.0), seed=0)
    o.feedback(3, [5, 6, 7], [10, 10, 10], [1.0, 1.0, 1.0], [4.0, 8.0, 16.0])
    assert o.utility(9, [7])[0] == pytest.approx(o.utility(9, [6])[0] / 2)


def test_outlier_utility_is_clipped():
    o = Oort(OortConfig(clip=0.8), seed=0)
    ids = np.arange(10)
    o.feedback(1, ids, [10, 20, 30, 40, 50, 60, 70, 80, 90, 1000], 1.0, 5.0)
    # clip value: sorted U at index floor(10 * 0.8) = 8 -> 90; the outlier counts as 90; U / 90 at round 1
    np.testing.assert_allclose(o.utility(1, ids), [1 / 9, 2 / 9, 3 / 9, 4 / 9, 5 / 9, 6 / 9, 7 / 9, 8 / 9, 1, 1])


def _no_explore(k, exclude):
    raise AssertionError("explore called with nothing to explore")


def test_exploitation_prefers_high_utility_clients():
    cfg = OortConfig(exploration=0.0, exploration_min=0.0, cutoff=0.0, normalize=False)
    base = Oort(cfg, seed=0)
    base.feedback(1, [10, 11, 12, 13, 14], [1, 2, 4, 8, 16], 1.0, 1.0)
    counts = dict.fromkeys(range(10, 15), 0)
    for seed in range(400):  # one pick a round: probability proportional to utility, 1 : 2 : 4 : 8 : 16
        o = Oort(cfg, seed=seed)
        o.restore(base.state())
        (pick,) = o.choose(1, 1, np.arange(10, 15), _no_explore)
        counts[int(pick)] += 1
    freq = [counts[i] for i in range(10, 15)]
    assert freq == sorted(freq) and freq[0] < freq[-1] / 5
    # with the cut-off c = 0.95, only clients within 95% of the k-th best are ever exploited
    o = Oort(OortConfig(exploration=0.0, exploration_min=0.0, normalize=False), seed=0)
    o.feedback(1, [10, 11, 12, 13, 14], [100, 200, 380, 400, 1000], 1.0, 1.0)
    seen = {int(i) for r in range(1, 50) for i in o.choose(r, 2, np.arange(10, 15), _no_explore)}
    assert seen == {12, 13, 14}  # k-th (2nd) best 400: cut 380; 200 and 100 fall below


def test_exploration_fraction_decays_to_its_floor():
    o = Oort(OortConfig(), seed=0)
    assert o.exploration_rate(1) == pytest.approx(0.882)  # 0.9 * 0.98
    assert o.exploration_rate(10) == pytest.approx(0.7353655)  # 0.9 * 0.98^10
    assert o.exploration_rate(100) == 0.3  # 0.9 * 0.98^100 = 0.119 < 0.3
    o.feedback(1, np.arange(200), 10, 1.0, 1.0)
    asked = []

    def explore(k, exclude):
        asked.append(k)
        return np.arange(1000, 1000 + k)

    for rnd, explore_k in ((1, 44), (10, 36), (100, 15)):  # floor(50 eps): 44.1, 36.8, 15
        picks = o.choose(rnd, 50, np.arange(200), explore)
        assert asked[-1] == explore_k and (picks >= 1000).sum() == explore_k and picks.size == 50


def _feed(o, rnd, ids, per_client_u):
    o.feedback(rnd, ids, per_client_u, 1.0, np.arange(1, len(ids) + 1, dtype=float))


def test_pacer_relaxes_t_when_utility_stops_growing():
    ids = np.arange(10)  # durations 1..10 s; the 30th percentile: index 3 -> 4 s
    o = Oort(OortConfig(pacer_window=2, pacer_step_pct=10.0), seed=0)
    for rnd, u in zip(range(1, 5), (10, 10, 5, 5)):  # summed U: rounds 1-2: 200, rounds 3-4: 100
        _feed(o, rnd, ids, u)
    assert o.preferred_duration() == 4.0
    o.choose(5, 0, ids, _no_explore)  # rounds 1-4 are over: the pacer looks at them
    assert o.preferred_duration() == 5.0  # relaxed to the 40th percentile: index 4
    for rnd, u in zip(range(5, 7), (50, 50)):  # rounds 5-6: 1000 > 100, utility grows again: T stays
        _feed(o, rnd, ids, u)
    o.choose(7, 0, ids, _no_explore)
    assert o.preferred_duration() == 5.0
    # the pacer in seconds (the paper's T <- T + Delta)
    o = Oort(OortConfig(pacer_window=2, pacer_delta_s=7.5), seed=0)
    for rnd in range(1, 5):
        _feed(o, rnd, ids, 10)  # flat: 200 vs 200 -> relax
    o.choose(5, 0, ids, _no_explore)
    assert o.preferred_duration() == 4.0 + 7.5
    # percentile 100 or more: no preferred duration, no straggler penalty
    o = Oort(OortConfig(pacer_window=1, round_threshold=90.0, pacer_step_pct=10.0), seed=0)
    _feed(o, 1, ids, 1)
    o.choose(3, 0, ids, _no_explore)  # round 2 brought nothing (0 <= 10): relax to the 100th percentile
    assert o.preferred_duration() == math.inf


class _Population:
    """Clients 0..n-1, each online with probability 0.6 in a round (drawn from the round's own stream)."""

    def __init__(self, n=300):
        self.n, self.asked = n, []

    def online(self, rnd):
        return np.flatnonzero(stream(7, "avail", rnd).random(self.n) < 0.6)

    def run(self, o, rounds, want=12):
        picks = []
        for rnd in rounds:
            online = self.online(rnd)
            explored = np.intersect1d(online, o.explored())
            unexplored = np.setdiff1d(online, o.explored())

            def explore(k, exclude, rnd=rnd, unexplored=unexplored, explored=explored):
                self.asked.append(k)
                # exactly the shortfall of exploitation: want - min(want - floor(eps want), online explored)
                assert k == want - min(want - math.floor(want * o.exploration_rate(rnd)), explored.size)
                assert exclude.size == want - k and np.isin(exclude, explored).all()  # the exploited picks
                pool = np.setdiff1d(unexplored, exclude)
                return stream(7, "explore", rnd).permutation(pool)[:k]

            chosen = o.choose(rnd, want, explored, explore)
            assert chosen.size == want and np.unique(chosen).size == want  # no duplicates
            assert np.isin(chosen, online).all()  # nobody offline
            done = chosen[stream(7, "done", rnd).random(want) < 0.8]
            g = stream(7, "stats", rnd)
            o.feedback(rnd, done, g.integers(10, 100, done.size), g.random(done.size) * 4, g.random(done.size) * 60)
            picks.append(chosen)
        return picks


def test_choose_respects_availability_and_asks_explore_only_for_what_it_needs():
    pop = _Population()
    o = Oort(OortConfig(), seed=3)
    pop.run(o, range(1, 31))
    assert o.explored().size <= 30 * 12 and np.all(np.diff(o.explored()) > 0)
    assert len(pop.asked) == 30 and pop.asked[0] == 12 and min(pop.asked) < 12  # round 1: nothing to exploit
    # explore returns too few, with repeats and already-picked ids: the rest comes from online explored ones
    o = Oort(OortConfig(), seed=3)
    o.feedback(1, np.arange(20), 10, 1.0, 1.0)
    online_explored = np.arange(0, 20, 2)
    chosen = o.choose(2, 8, online_explored, lambda k, exclude: np.array([500, 500, *exclude[:1]]))
    assert chosen.size == 8 and np.unique(chosen).size == 8 and 500 in chosen
    assert np.isin(chosen[chosen != 500], online_explored).all()
    # fewer online than wanted: all of them, nobody twice
    assert np.array_equal(o.choose(2, 8, [4, 6], lambda k, exclude: np.zeros(0, np.int64)), [4, 6])


def test_deterministic_for_a_seed_and_restore_is_exact():
    pop = _Population()
    a, b, c = (Oort(OortConfig(pacer_window=2), seed=s) for s in (11, 11, 12))
    runs = [pop.run(o, range(1, 9)) for o in (a, b, c)]
    assert all(np.array_equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2]))  # another seed, other picks

    full = Oort(OortConfig(pacer_window=2), seed=5)
    pop.run(full, range(1, 6))
    snap = pickle.dumps(full.state())
    assert all(isinstance(v, (np.ndarray, int, float)) for v in full.state().values())
    later = pop.run(full, range(6, 9))
    resumed = Oort(OortConfig(pacer_window=2), seed=5)
    resumed.restore(pickle.loads(snap))
    assert all(np.array_equal(x, y) for x, y in zip(later, pop.run(resumed, range(6, 9))))
    assert pickle.dumps(resumed.state()) == pickle.dumps(full.state())  # bit for bit, pacer included


def test_feedback_rejects_bad_statistics():
    o = Oort(OortConfig(), seed=0)
    with pytest.raises(ValueError):
        o.feedback(1, [1, 1], [10, 10], 1.0, 1.0)
    with pytest.raises(ValueError):
        o.feedback(1, [1], [10], [-1.0], [1.0])
    o.feedback(1, [1], [10], [1.0], [1.0])
    o.record_duration([1, 99], [50.0, 3.0])  # 99 was never explored: ignored
    assert o.explored().tolist() == [1] and o.state()["dur"].tolist() == [50.0]
