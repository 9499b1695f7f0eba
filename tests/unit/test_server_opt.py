"""Server optimizers against Reddi et al. 2021 (Algorithm 2) and FedAvgM, on hand-computed two-step examples."""

import numpy as np
import pytest

from fedsim.strategies.fedavg import apply_update
from fedsim.strategies.server_opt import ServerOptimizer

X = {"w": np.array([1.0, -2.0], np.float32)}
D1 = {"w": np.array([0.5, -0.1])}  # mean client deltas of two rounds
D2 = {"w": np.array([-0.2, 0.3])}


def _two_steps(opt):
    x1 = opt.step(X, D1)
    return x1, opt.step(x1, D2)


def test_sgd_is_fedavg_bit_for_bit():
    opt = ServerOptimizer("sgd", lr=1.0)
    assert np.array_equal(opt.step(X, D1)["w"], apply_update(X, D1, 1.0)["w"])
    assert opt.step(X, None) is X  # a round without updates leaves the model and the state alone


def test_fedavgm_by_hand():
    # v1 = D1 = [.5, -.1], x1 = x + .5 v1 = [1.25, -2.05]; v2 = .9 v1 + D2 = [.25, .21], x2 = x1 + .5 v2
    x1, x2 = _two_steps(ServerOptimizer("momentum", lr=0.5, momentum=0.9))
    np.testing.assert_allclose(x1["w"], [1.25, -2.05], rtol=1e-6)
    np.testing.assert_allclose(x2["w"], [1.375, -1.945], rtol=1e-6)


def test_fedadam_by_hand():
    # tau = 0.01, b1 = .9, b2 = .99, eta = .1; v_{-1} = tau^2 = 1e-4, m_{-1} = 0
    # m1 = .1 D1 = [.05, -.01]; v1 = .99e-4 + .01 D1^2 = [.0025990, .0001990]
    # x1 = x + .1 m1 / (sqrt(v1) + .01)
    tau, eta = 0.01, 0.1
    m1 = 0.1 * np.array([0.5, -0.1])
    v1 = 0.99 * tau**2 + 0.01 * np.array([0.25, 0.01])
    x1_ref = np.array([1.0, -2.0]) + eta * m1 / (np.sqrt(v1) + tau)
    m2 = 0.9 * m1 + 0.1 * np.array([-0.2, 0.3])
    v2 = 0.99 * v1 + 0.01 * np.array([0.04, 0.09])
    x2_ref = x1_ref.astype(np.float32) + eta * m2 / (np.sqrt(v2) + tau)
    np.testing.assert_allclose(v1, [0.0025990, 0.0001990], rtol=1e-6)  # the numbers in the comment
    x1, x2 = _two_steps(ServerOptimizer("adam", lr=eta, beta1=0.9, beta2=0.99, tau=tau))
    np.testing.assert_allclose(x1["w"], x1_ref, rtol=1e-6)
    np.testing.assert_allclose(x2["w"], x2_ref, rtol=1e-6)
    assert x2["w"].dtype == np.float32


def test_fedyogi_and_fedadagrad_second_moments_by_hand():
    tau = 0.01
    yogi = ServerOptimizer("yogi", lr=0.1, tau=tau)
    yogi.step(X, D1)
    # v_{-1} = 1e-4 < D1^2 = [.25, .01]: sign(v - D^2) = -1, so v grows: v1 = 1e-4 + .01 D1^2
    np.testing.assert_allclose(yogi.slots["v"]["w"], 1e-4 + 0.01 * np.array([0.25, 0.01]))
    yogi.step(X, {"w": np.array([0.0, 0.0])})  # D^2 = 0 < v: v shrinks by nothing (0 * sign)
    np.testing.assert_allclose(yogi.slots["v"]["w"], 1e-4 + 0.01 * np.array([0.25, 0.01]))
    ada = ServerOptimizer("adagrad", lr=0.1, tau=tau)
    ada.step(X, D1)
    ada.step(X, D2)
    np.testing.assert_allclose(ada.slots["v"]["w"], 1e-4 + np.array([0.25 + 0.04, 0.01 + 0.09]))


@pytest.mark.parametrize("kind", ["momentum", "adagrad", "adam", "yogi"])
def test_state_and_restore_continue_bit_for_bit(kind):
    a = ServerOptimizer(kind, lr=0.1)
    x1 = a.step(X, D1)
    saved = a.state()
    straight = a.step(x1, D2)
    b = ServerOptimizer(kind, lr=0.1)
    b.restore(saved)
    assert np.array_equal(b.step(x1, D2)["w"], straight["w"])
