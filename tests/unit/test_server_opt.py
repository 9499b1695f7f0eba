"""Server optimizers against Reddi et al. 2021 (Algorithm 2) and FedAvgM, on hand-computed two-step examples."""

import numpy as np
import pytest

from fedsim.strategies.server_opt import ServerOptimizer

X = {"w": np.array([1.0, -2.0], np.float32)}
D1 = {"w": np.array([0.5, -0.1])}  # mean client deltas of two rounds
D2 = {"w": np.array([-0.2, 0.3])}


def _two_steps(opt):
    x1 = opt.step(X, D1)
    return x1, opt.step(x1, D2)


def test_sgd_is_fedavg():
    opt = ServerOptimizer("sgd", lr=1.0)
    np.testing.assert_array_equal(opt.step(X, D1)["w"], np.array([1.5, -2.1], np.float32))  # x + Delta
    assert opt.step(X, None) is X  # a round without updates leaves the model and the state alone


def test_fedavgm_by_hand():
    # v1 = D1 = [.5, -.1], x1 = x + .5 v1 = [1.25, -2.05]; v2 = .9 v1 + D2 = [.25, .21], x2 = x1 + .5 v2
    x1, x2 = _two_steps(ServerOptimizer("momentum", lr=0.5, momentum=0.9))
    np.testing.assert_allclose(x1["w"], [1.25, -2.05], rtol=1e-6)
    np.testing.assert_allclose(x2["w"], [1.375, -1.945], rtol=1e-6)


def test_fedadam_by_hand():
    # tau = .01, b1 = .9, b2 = .99, eta = .1; m_{-1} = 0, v_{-1} = tau^2 = 1e-4
    # m1 = .1 D1 = [.05, -.01]; v1 = .99e-4 + .01 D1^2 = [.002599, .000199]
    # x1 = 1 + .1 * .05 / (sqrt(.002599) + .01) = 1 + .005 / .060980 = 1.081994
    #      -2 + .1 * -.01 / (sqrt(.000199) + .01) = -2 - .001 / .024107 = -2.041482
    # m2 = .9 m1 + .1 D2 = [.025, .021]; v2 = .99 v1 + .01 D2^2 = [.00297301, .00109701]
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    x1 = opt.step(X, D1)
    np.testing.assert_allclose(opt.slots["m"]["w"], [0.05, -0.01], rtol=1e-12)
    np.testing.assert_allclose(opt.slots["v"]["w"], [0.002599, 0.000199], rtol=1e-12)
    np.testing.assert_allclose(x1["w"], [1.081994, -2.041482], rtol=1e-6)
    x2 = opt.step(x1, D2)
    np.testing.assert_allclose(opt.slots["m"]["w"], [0.025, 0.021], rtol=1e-12)
    np.testing.assert_allclose(opt.slots["v"]["w"], [0.00297301, 0.00109701], rtol=1e-9)
    np.testing.assert_allclose(x2["w"], [1.120738, -1.992782], rtol=1e-6)
    assert x2["w"].dtype == np.float32


def test_fedyogi_grows_and_shrinks_v_by_the_sign_rule():
    opt = ServerOptimizer("yogi", lr=0.1, beta2=0.99, tau=0.01)
    x1 = opt.step(X, D1)
    # v_{-1} = 1e-4 < D1^2 = [.25, .01]: sign(v - D^2) = -1, v grows: v1 = 1e-4 + .01 D1^2 = [.0026, .0002]
    np.testing.assert_allclose(opt.slots["v"]["w"], [0.0026, 0.0002], rtol=1e-12)
    np.testing.assert_allclose(x1["w"], [1.0819803, -2.0414214], rtol=1e-6)  # 1 + .005/(.05099+.01), ...
    opt.step(x1, {"w": np.array([0.02, 0.01])})
    # now D^2 = [4e-4, 1e-4] < v: v shrinks by (1 - b2) D^2: [.0026 - 4e-6, .0002 - 1e-6] (Adam would not)
    np.testing.assert_allclose(opt.slots["v"]["w"], [0.002596, 0.000199], rtol=1e-12)


def test_fedadagrad_accumulates_squares():
    opt = ServerOptimizer("adagrad", lr=0.1, tau=0.01)
    x1 = opt.step(X, D1)
    opt.step(x1, D2)
    np.testing.assert_allclose(opt.slots["v"]["w"], [1e-4 + 0.25 + 0.04, 1e-4 + 0.01 + 0.09], rtol=1e-12)
    # x1 = x + .1 * (.1 D1) / (sqrt(1e-4 + D1^2) + .01): 1 + .005 / (.5001 + .01) = 1.0098020
    np.testing.assert_allclose(x1["w"], [1.0098020, -2.0098020 + 0.0098020 - 0.001 / (0.1004988 + 0.01)],
                               rtol=1e-6)


def test_server_defaults_keep_the_first_step_near_fedavg():
    from fedsim.strategies.server_opt import default_lr

    assert default_lr("sgd", 0.9) == 1.0 and default_lr("momentum", 0.9) == pytest.approx(0.1)
    assert default_lr("adam", 0.9) == 1e-2


def test_the_aggregator_keeps_the_state_that_goes_with_each_version(tmp_path):
    """Checkpoint after round r: the state after step r; a round abandoned after its step: the state before."""
    from fedsim.client_round import ClientResult
    from fedsim.runtime.aggregator import Aggregator
    from fedsim.scenario import dump, load

    server = dump(load({}, {"server.optimizer": "adam"}))
    agg = Aggregator(str(tmp_path), {"w": np.zeros(2, np.float32)}, server)
    states = {0: agg.server_state(0)}
    for rnd, delta in ((1, [0.5, -0.1]), (2, [-0.2, 0.3])):
        agg.begin(rnd)
        agg.put(0, 1.0, ClientResult(1, rnd, 4, 0.5, "-", True), {"delta": {"w": np.array(delta, np.float32)}})
        agg.finish()
        states[rnd] = agg.server_state(rnd)
    assert [states[r]["steps"] for r in (0, 1, 2)] == [0, 1, 2]
    before = agg.server_state(1)  # round 2 abandoned after its step: the checkpoint of round 1 gets this
    assert before["steps"] == 1
    np.testing.assert_allclose(before["slots"]["m"]["w"], [0.05, -0.01], rtol=1e-6)  # (1 - b1) * D1
    np.testing.assert_allclose(states[2]["slots"]["m"]["w"], [0.025, 0.021], rtol=1e-6)  # .9 m1 + .1 D2
    with pytest.raises(ValueError):
        agg.server_state(0)  # two steps ago: not kept
    agg.begin(3)
    agg.finish()  # a round without updates takes no step
    assert agg.server_state(3)["steps"] == agg.server_state(2)["steps"] == 2
    agg.close()


@pytest.mark.parametrize("kind", ["momentum", "adagrad", "adam", "yogi"])
def test_state_and_restore_continue_bit_for_bit(kind):
    a = ServerOptimizer(kind, lr=0.1)
    x1 = a.step(X, D1)
    saved = a.state()
    straight = a.step(x1, D2)
    b = ServerOptimizer(kind, lr=0.1)
    b.restore(saved)
    assert np.array_equal(b.step(x1, D2)["w"], straight["w"])
