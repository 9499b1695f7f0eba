"""Robust combination rules on a few vectors worked out by hand (Yin et al. 2018; Blanchard et al. 2017)."""

import numpy as np
import pytest

from fedsim.strategies import robust


def _u(*vals):
    return {"w": np.array(vals, np.float32)}


def test_clip_norm_scales_to_the_bound_and_leaves_small_updates():
    clipped, was = robust.clip_norm({"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float32)}, 1.0)
    assert was and clipped["a"][0] == pytest.approx(0.6) and clipped["b"][0] == pytest.approx(0.8)  # norm 5 -> 1
    small = _u(0.3, 0.4)
    same, was = robust.clip_norm(small, 1.0)
    assert not was and same is small


def test_median_and_trimmed_mean_by_hand():
    ups = [_u(1, -5), _u(2, 0), _u(3, 1), _u(4, 2), _u(100, 3)]
    np.testing.assert_array_equal(robust.median(ups)["w"], [3, 1])
    np.testing.assert_array_equal(robust.median(ups[:4])["w"], [2.5, 0.5])  # even: the mean of the middle two
    # beta = .2 of 5: drop 1 from each end per coordinate: mean(2, 3, 4) = 3, mean(0, 1, 2) = 1
    np.testing.assert_array_equal(robust.trimmed_mean(ups, 0.2)["w"], [3, 1])
    np.testing.assert_array_equal(robust.trimmed_mean(ups, 0.0)["w"], [22, 0.2])  # beta 0: the plain mean
    with pytest.raises(ValueError):
        robust.trimmed_mean(ups[:2], 0.5)  # (the schema keeps beta < 0.5, so a round always keeps some)


def test_krum_picks_the_update_closest_to_its_neighbours():
    # n = 4, f = 0: each score sums the squared distances to the n - f - 2 = 2 nearest others
    # u0=[0,0]: 1 (u1) + 4 (u2) = 5;  u1=[1,0]: 1 + 5 = 6;  u2=[0,2]: 4 + 5 = 9;  u3=[10,10]: 164 + 181 = 345
    ups = [_u(0, 0), _u(1, 0), _u(0, 2), _u(10, 10)]
    np.testing.assert_allclose(robust.krum_scores(ups, f=0), [5, 6, 9, 345])  # (2f + 3 = 3 <= 4: valid)
    one, chosen = robust.krum(ups, f=0)
    assert list(chosen) == [0] and np.array_equal(one["w"], [0, 0])
    two, chosen = robust.krum(ups, f=0, m=2)  # multi-Krum: the mean of the two best
    assert sorted(chosen) == [0, 1] and np.array_equal(two["w"], [0.5, 0])


def test_krum_with_a_byzantine_allowance_and_its_fallback():
    # n = 5, f = 1: n - f - 2 = 2 nearest. u0..u3 on a unit square around 0, u4 far away:
    # u0=[0,0]: 1 (u1) + 1 (u2) = 2; u1=[1,0]: 1 + 1 (u3) = 2; u2=[0,1]: 2; u3=[1,1]: 2; u4=[9,9]: 128 + 145 = 273
    ups = [_u(0, 0), _u(1, 0), _u(0, 1), _u(1, 1), _u(9, 9)]
    np.testing.assert_allclose(robust.krum_scores(ups, f=1), [2, 2, 2, 2, 273])
    out, chosen = robust.krum(ups, f=1, m=4)  # multi-Krum: the four square corners, never the outlier
    assert 4 not in chosen and np.array_equal(out["w"], [0.5, 0.5])
    combined, fell_back = robust.combine("krum", ups, byzantine=1, select=9)  # m bounded by n - f = 4
    assert not fell_back and np.array_equal(combined["w"], [0.5, 0.5])
    # n = 4 < 2f + 3 = 5: Krum's guarantee does not hold; the round falls back to the median, and says so
    combined, fell_back = robust.combine("krum", ups[1:], byzantine=1)
    assert fell_back and np.array_equal(combined["w"], [1, 1])


def test_a_stale_update_keeps_its_discount_under_a_robust_rule(tmp_path):
    """FedBuff hands each update its staleness weight s(tau) with normaliser 1; the median works on the
    discounted updates (a stale one counts less), sync updates (weight 1) are held as they are."""
    from fedsim.client_round import ClientResult
    from fedsim.runtime.aggregator import Aggregator
    from fedsim.scenario import dump, load

    agg = Aggregator(str(tmp_path), {"w": np.zeros(1, np.float32)}, dump(load({}, {"server.aggregation": "median"})))
    agg.begin(1)
    for seq, (w, x) in enumerate(((1.0, 2.0), (0.25, 8.0), (1.0, 4.0))):
        agg.put(seq, w, ClientResult(seq, 1, 4, 0.5, "-", True), {"delta": _u(x)})
    new, _ = agg.finish()
    assert new["w"][0] == pytest.approx(2.0)  # median of 2, 0.25 * 8 = 2, 4 (undiscounted it would be 4)
    agg.close()


def test_the_aggregator_applies_the_rule_and_clips_first(tmp_path):
    """Three honest updates near [1, 1] and one sign-flipped, scaled one: the mean is dragged away, the
    median is not; with clip_norm the attacker's norm is bounded before any rule."""
    from fedsim.client_round import ClientResult
    from fedsim.runtime.aggregator import Aggregator
    from fedsim.scenario import dump, load

    updates = [_u(1.0, 1.2), _u(0.9, 1.0), _u(1.1, 0.8), _u(-50.0, -50.0)]
    out = {}
    for name, over in (("mean", {}), ("median", {"server.aggregation": "median"}),
                       ("clipped", {"server.clip_norm": 2.0})):
        (tmp_path / name).mkdir()
        agg = Aggregator(str(tmp_path / name), {"w": np.zeros(2, np.float32)}, dump(load({}, over)))
        agg.begin(1)
        for seq, u in enumerate(updates):
            agg.put(seq, 1.0, ClientResult(seq, 1, 4, 0.5, "-", True), {"delta": u})
        out[name], stats = agg.finish()
        out[name + "_clipped"] = stats["clipped"]
        agg.close()
    np.testing.assert_allclose(out["mean"]["w"], [(3.0 - 50) / 4, (3.0 - 50) / 4], rtol=1e-6)
    np.testing.assert_allclose(out["median"]["w"], [0.95, 0.9], rtol=1e-6)  # means of the middle two
    # clipped to norm 2: the attacker becomes [-sqrt(2), -sqrt(2)]; honest norms 1.56, 1.35, 1.36 stay
    np.testing.assert_allclose(out["clipped"]["w"], [(3.0 - 2**0.5) / 4, (3.0 - 2**0.5) / 4], rtol=1e-6)
    assert out["clipped_clipped"] == 1 and out["mean_clipped"] == 0
