"""SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II) on hand-computed numbers, and its wiring through the
aggregator: the server variate inside the global version, the client variates in the store (the local gradient
correction on the real model: tests/integration/test_objectives.py)."""

import numpy as np

from fedsim.client_round import ClientResult
from fedsim.scenario import dump, load
from fedsim.strategies import scaffold


def test_client_variate_option_two_by_hand():
    # c_i = [0.1, -0.2], c = [0.3, 0.0], Delta y = y - x = [-0.4, 0.2], K = 2 steps, eta_l = 0.5:
    # c_i+ = c_i - c + (x - y) / (K eta_l) = [0.1 - 0.3 + 0.4, -0.2 - 0 - 0.2] = [0.2, -0.4]; Delta c_i = [0.1, -0.2]
    c_i, c = {"w": np.array([0.1, -0.2], np.float32)}, {"w": np.array([0.3, 0.0], np.float32)}
    plus, dc = scaffold.client_variate_update(c_i, c, {"w": np.array([-0.4, 0.2], np.float32)}, steps=2, lr=0.5)
    np.testing.assert_allclose(plus["w"], [0.2, -0.4], atol=1e-7)
    np.testing.assert_allclose(dc["w"], [0.1, -0.2], atol=1e-7)


def test_server_variate_moves_by_the_sum_over_the_whole_federation():
    # c = [1, 2]; two clients send Delta c = [0.5, 0] and [0.3, 1]; N = 4: c + [0.8, 1] / 4 = [1.2, 2.25]
    c = {"w": np.array([1.0, 2.0], np.float32)}
    new = scaffold.server_variate_update(c, {"w": np.array([0.8, 1.0])}, num_clients=4)
    np.testing.assert_allclose(new["w"], [1.2, 2.25])
    assert scaffold.server_variate_update(c, None, 4) is c  # nobody came: c unchanged


def test_the_aggregator_applies_the_mean_delta_and_moves_c_and_keeps_client_variates(tmp_path):
    from fedsim.runtime.aggregator import Aggregator

    s = dump(load({}, {"server.strategy": "scaffold", "population.num_clients": 4, "server.clients_per_round": 2,
                       "server.over_selection": 1.0}))
    agg = Aggregator(str(tmp_path), {"w": np.zeros(2, np.float32)}, s)
    g0 = agg.current()
    np.testing.assert_array_equal(g0["scaffold.c.w"], [0, 0])  # c starts at 0, inside version 0
    assert agg.client_state(7) is None  # nothing stored: the worker starts c_i at 0
    agg.begin(1)
    for seq, (client, dy, dc, n) in enumerate([(7, [1.0, 0.0], [0.4, 0.0], 1), (9, [0.0, 3.0], [0.0, 0.8], 3)]):
        agg.put(seq, 1.0, ClientResult(client, 1, n, 0.5, "-", True),
                {"delta": {"w": np.array(dy, np.float32)}, "control": {"w": np.array(dc, np.float32)},
                 "client_state": {"w": np.array(dc, np.float32) * 10}})
    g1, stats = agg.finish()
    # x: sample-weighted mean delta (1 x [1, 0] + 3 x [0, 3]) / 4 = [0.25, 2.25]; c: [0.4, 0.8] / N=4 = [0.1, 0.2]
    np.testing.assert_allclose(g1["w"], [0.25, 2.25])
    np.testing.assert_allclose(g1["scaffold.c.w"], [0.1, 0.2])
    np.testing.assert_allclose(agg.client_state(9)["w"], [0.0, 8.0])  # the state the client keeps
    assert stats["aggregated"] == 2
