"""The adversary model: a fixed seeded set of clients, and the update each attack sends."""

import numpy as np
import pytest

from fedsim.adversary import adversary_mask, attack

DELTA = {"a": np.array([1.0, -2.0], np.float32), "b": np.array([0.5], np.float32)}


def test_the_adversarial_set_is_fixed_by_the_seed_and_has_the_fraction():
    mask = adversary_mask(3, 100_000, 0.2)
    assert abs(mask.mean() - 0.2) < 0.005
    assert np.array_equal(mask, adversary_mask(3, 100_000, 0.2))
    assert not np.array_equal(mask, adversary_mask(4, 100_000, 0.2))
    assert not adversary_mask(3, 10, 0.0).any()


def test_attacks_by_hand():
    flipped = attack("sign_flip", 2.0, DELTA, 0, 1, 7)
    assert flipped["a"].tolist() == [-2.0, 4.0] and flipped["b"].tolist() == [-1.0]
    boosted = attack("scale", 10.0, DELTA, 0, 1, 7)
    assert boosted["a"].tolist() == [10.0, -20.0] and boosted["a"].dtype == np.float32
    noise = attack("noise", 3.0, {"a": np.zeros(20_000, np.float32)}, 0, 1, 7)["a"]
    assert abs(noise.std() - 3.0) < 0.1 and abs(noise.mean()) < 0.1  # N(0, scale^2), independent of Delta
    assert np.array_equal(noise, attack("noise", 3.0, {"a": np.zeros(20_000, np.float32)}, 0, 1, 7)["a"])
    with pytest.raises(ValueError):
        attack("lie", 1.0, DELTA, 0, 1, 7)
