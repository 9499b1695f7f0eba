"""Client-level DP-FedAvg (McMahan et al. 2018): the noise scale and clipping by hand, and epsilon exactly as
Google's dp-accounting computes it."""

import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedsim.client_round import ClientResult
from fedsim.scenario import dump, load
from fedsim.strategies.combine import DPNoise, MeanCombiner, dp_mean
from fedsim.strategies.privacy import DPAccountant, accountant_for


def test_the_step_is_the_noised_sum_over_the_expected_cohort():
    # sum = [4, 8], z S = 2, K = 4: mean [1, 2] plus noise of std z S / K = 0.5 per coordinate
    dp = DPNoise(clip=1.0, std=2.0, expected=4, rng=np.random.default_rng(0))
    noiseless = dp_mean({"w": np.array([4.0, 8.0])}, DPNoise(1.0, 0.0, 4, np.random.default_rng(0)), 4)
    np.testing.assert_array_equal(noiseless["w"], [1.0, 2.0])
    big = dp_mean({"w": np.zeros(200_000)}, dp, 4)["w"]
    assert big.std() == pytest.approx(0.5, rel=0.01) and abs(big.mean()) < 0.01


def test_a_sum_short_of_client_shares_gets_the_missing_noise_from_the_server():
    # clients add shares of std 0.5 sized for t = 4; only 1 update survived quarantine: the server adds the
    # 3 missing shares' variance, std 0.5 sqrt(3) on the sum, / K = 2 on the mean -> 0.433
    dp = DPNoise(1.0, 0.0, 2, np.random.default_rng(0), client_share=0.5, needed=4)
    short = dp_mean({"w": np.zeros(200_000)}, dp, 1)["w"]
    assert short.std() == pytest.approx(0.5 * np.sqrt(3) / 2, rel=0.01)
    assert not dp_mean({"w": np.zeros(3)}, dp, 4)["w"].any()  # t shares present: nothing added


def test_each_update_is_clipped_to_s_and_counted():
    # [3, 4] has norm 5 > S = 1: scaled to [0.6, 0.8]; [0.3, 0.4] (norm 0.5) is kept; sum [0.9, 1.2] / K = 3
    comb = MeanCombiner(clip=1.0, dp=DPNoise(1.0, 0.0, 3, np.random.default_rng(0)))
    clipped = [comb.add(i, 1.0, 1.0, {"delta": {"w": np.array(x, np.float32)}}) for i, x in
               enumerate(([3.0, 4.0], [0.3, 0.4]))]
    assert clipped == [True, False]
    np.testing.assert_allclose(comb.result()[0]["w"], [0.3, 0.4], rtol=1e-6)


@pytest.mark.parametrize("rounds", [1, 7, 100])
def test_epsilon_equals_the_library_called_directly(rounds):
    acc = DPAccountant(0.02, 1.1, 1e-5)
    direct = RdpAccountant()
    direct.compose(acc.event(), rounds)
    assert acc.epsilon(rounds) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_epsilon_grows_with_rounds_and_falls_with_more_noise():
    eps = [DPAccountant(0.01, 1.0, 1e-5).epsilon(t) for t in (1, 10, 100, 1000)]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    by_noise = [DPAccountant(0.01, z, 1e-5).epsilon(100) for z in (0.5, 1.0, 2.0, 4.0)]
    assert by_noise == sorted(by_noise, reverse=True)
    assert DPAccountant(0.01, 0.0, 1e-5).epsilon(5) == float("inf")


def test_the_scenario_accountant_samples_k_of_n():
    s = load({}, {"privacy.dp.enabled": True, "server.weighting": "uniform", "population.num_clients": 500,
                  "server.clients_per_round": 10})
    acc = accountant_for(s)
    assert acc.q == 13 / 500 and acc.z == s.privacy.dp.noise_multiplier and acc.delta == 1e-5
    assert accountant_for(load({})) is None


def test_server_side_dp_through_the_aggregator(tmp_path):
    """Uniform weights, clip at the server, noise z S on the sum, divide by clients_per_round."""
    from fedsim.runtime.aggregator import Aggregator

    over = {"privacy.dp": {"enabled": True, "noise_multiplier": 0.0, "clip_norm": 1.0}, "server.weighting": "uniform",
            "server.clients_per_round": 4, "server.over_selection": 1.0}
    agg = Aggregator(str(tmp_path), {"w": np.zeros(2, np.float32)}, dump(load({}, over)))
    agg.begin(1)
    for seq, (x, n) in enumerate((([3.0, 4.0], 10), ([0.2, 0.0], 1))):
        agg.put(seq, 1.0, ClientResult(seq, 1, n, 0.5, "-", True), {"delta": {"w": np.array(x, np.float32)}})
    g, stats = agg.finish()
    np.testing.assert_allclose(g["w"], [(0.6 + 0.2) / 4, 0.8 / 4], rtol=1e-6)  # samples do not weigh
    assert stats["clipped"] == 1


def test_client_noise_shares_add_up_to_the_central_noise_for_the_smallest_released_sum():
    """Each client clips to S and adds N(0, z^2 S^2 / t): the sum of any t released updates (t = Shamir's
    threshold under SecAgg) carries at least the central noise z S; measured on the clients' real releases."""
    from fedsim.strategies.base import Strategy, release

    s = load({}, {"privacy.dp": {"enabled": True, "noise_multiplier": 1.5, "clip_norm": 0.2, "noise": "client"},
                  "privacy.secagg.enabled": True, "server.weighting": "uniform", "server.clients_per_round": 8,
                  "server.over_selection": 1.0})
    strategy = Strategy(s)
    task = strategy.secagg_task(np.arange(8))  # t = ceil(0.5 x 8) = 4
    cfg = strategy.client_config(adversarial=False, secagg=task)
    assert task.threshold == 4 and cfg.clip_norm == 0.2  # the client clips what it noises and masks
    big = {"w": np.full(50_000, 1.0, np.float32)}  # norm 223.6: clipped to 0.2
    sent = [release(big, cfg, s, dispatch=1, client=c)[0]["w"] for c in range(4)]
    noise = sum(sent) - 4 * np.full(50_000, 0.2 / np.sqrt(50_000))
    assert noise.std() == pytest.approx(1.5 * 0.2, rel=0.02)  # z S on the sum of t = 4 releases
    assert not np.array_equal(sent[0], sent[1])  # each client's own stream


def test_the_sampling_rate_counts_the_selected_over_the_smallest_pool():
    from fedsim.costs.profile import scenario_costs
    from fedsim.strategies.privacy import sampling_rate

    over = {"privacy.dp.enabled": True, "server.weighting": "uniform", "population.num_clients": 1000,
            "server.clients_per_round": 10, "server.over_selection": 1.3, "model.name": "tinyllama-1.1b"}

    def q(extra):
        s = load({}, {**over, **extra})
        _, pop, profile = scenario_costs(s)
        return sampling_rate(s, pop, profile)

    laptops = {"population.devices": {"laptop": 1.0}}
    assert q(laptops) == pytest.approx(13 / 1000)  # 13 selected (over-selection), everyone online
    assert q({**laptops, "population.availability": 0.5}) == pytest.approx(13 / 500)
    assert q({**laptops, "population.diurnal.amplitude": 0.5}) == pytest.approx(13 / 500)  # the trough
    mixed = {"population.devices": {"laptop": 0.5, "phone-budget": 0.5}}  # budget phones cannot hold 1.1B
    assert q(mixed) == pytest.approx(13 / 1000)  # uniform selection picks phones too (they just fail)
    assert q({**mixed, "server.selection": "eligible"}) == pytest.approx(13 / 500, rel=0.1)  # only laptops


@pytest.mark.parametrize("over, key", [
    ({"server.strategy": "scaffold"}, "privacy.dp.enabled"),
    ({"server.selection": "oort"}, "privacy.dp.enabled"),
    ({"server.clip_norm": 1.0}, "server.clip_norm"),
    ({"server.weighting": "samples"}, "server.weighting"),
    ({"server.schedule": "async"}, "privacy.dp.enabled"),
    ({"server.aggregation": "median"}, "privacy.dp.enabled"),
])
def test_dp_refuses_what_would_void_its_guarantee(over, key):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load({}, {"privacy.dp.enabled": True, "server.weighting": "uniform", **over})
    assert err.value.path == key


def test_secagg_refuses_a_threshold_no_round_can_meet_and_skips_a_cohort_below_it():
    from fedsim.errors import ConfigError
    from fedsim.strategies.base import Strategy

    with pytest.raises(ConfigError) as err:  # t = ceil(0.8 x 13) = 11 > the 10 a round keeps
        load({}, {"privacy.secagg": {"enabled": True, "threshold": 0.8}, "server.clients_per_round": 10})
    assert err.value.path == "privacy.secagg.threshold"
    strategy = Strategy(load({}, {"privacy.secagg.enabled": True}))
    assert strategy.secagg_task(np.array([7])) is None  # one eligible client: below t = 2, nobody trains
    assert strategy.secagg_task(np.array([7, 3])).threshold == 2
