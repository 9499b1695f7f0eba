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
    noiseless = dp_mean({"w": np.array([4.0, 8.0])}, DPNoise(1.0, 0.0, 4, np.random.default_rng(0)))
    np.testing.assert_array_equal(noiseless["w"], [1.0, 2.0])
    big = dp_mean({"w": np.zeros(200_000)}, dp)["w"]
    assert big.std() == pytest.approx(0.5, rel=0.01) and abs(big.mean()) < 0.01


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
    assert acc.q == 10 / 500 and acc.z == s.privacy.dp.noise_multiplier and acc.delta == 1e-5
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


def test_client_noise_shares_add_up_to_the_central_noise():
    from fedsim.strategies.base import Strategy

    s = load({}, {"privacy.dp": {"enabled": True, "noise_multiplier": 1.5, "clip_norm": 0.2, "noise": "client"},
                  "server.weighting": "uniform", "server.clients_per_round": 9})
    cfg = Strategy(s).client_config(adversarial=False)
    assert cfg.clip_norm == 0.2  # the client clips what it noises
    assert 9 * cfg.noise_std**2 == pytest.approx((1.5 * 0.2) ** 2)  # K shares: variance z^2 S^2 on the sum
