"""Heterogeneous-rank LoRA aggregation on small hand-made matrices: FLoRA's stacking is exact where averaging A
and B separately is not, FlexLoRA's SVD split errs exactly by the discarded singular values, HetLoRA's
padding and truncation round-trip."""

import numpy as np
import pytest

from fedsim.strategies.lora_ranks import (
    full_update,
    norm_weights,
    pad,
    stack,
    svd_split,
    truncate,
    truncation_error,
)

# two clients, in = 3, out = 2: client 1 rank 1, client 2 rank 2 (small integers: products are exact)
A1, B1 = np.array([[1.0, 2.0, 0.0]]), np.array([[1.0], [3.0]])
A2, B2 = np.array([[0.0, 1.0, 1.0], [2.0, 0.0, 1.0]]), np.array([[1.0, 0.0], [2.0, 1.0]])
P = np.array([0.25, 0.75])


def test_flora_stacking_is_exact_and_separate_averaging_is_not():
    a_s, b_s = stack([(A1, B1), (A2, B2)], P)
    assert a_s.shape == (3, 3) and b_s.shape == (2, 3)  # stacked rank 1 + 2
    # by hand: 0.25 B1 A1 = [[0.25, 0.5, 0], [0.75, 1.5, 0]]; 0.75 B2 A2 = 0.75 [[0, 1, 1], [2, 2, 3]]
    expected = np.array([[0.25, 1.25, 0.75], [2.25, 3.0, 2.25]])
    assert np.array_equal(b_s @ a_s, expected)
    assert np.array_equal(full_update([(A1, B1), (A2, B2)], P), expected)
    # FedAvg of A and B separately (rank 1 zero-padded to 2): not the average update
    a1, b1 = pad(A1, B1, 2)
    naive = (P[0] * b1 + P[1] * B2) @ (P[0] * a1 + P[1] * A2)
    assert not np.allclose(naive, expected)


def test_flexlora_svd_split_errs_by_the_discarded_singular_values():
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(6, 5))
    s = np.linalg.svd(delta, compute_uv=False)
    for rank in (1, 2, 4, 5):
        a, b = svd_split(delta, rank)
        assert a.shape == (rank, 5) and b.shape == (6, rank)
        err = np.linalg.norm(delta - b @ a)
        assert err == pytest.approx(np.sqrt((s[rank:] ** 2).sum()), abs=1e-10)
        assert err == pytest.approx(truncation_error(delta, rank), abs=1e-10)
    assert truncation_error(delta, 5) == pytest.approx(0.0, abs=1e-12)  # full rank: exact


def test_hetlora_padding_and_truncation_round_trip():
    a, b = pad(A1, B1, 3)
    assert a.shape == (3, 3) and b.shape == (2, 3)
    assert np.array_equal(b @ a, B1 @ A1)  # zero components add nothing
    back = truncate(a, b, 1)
    assert np.array_equal(back[0], A1) and np.array_equal(back[1], B1)
    with pytest.raises(ValueError):
        pad(A2, B2, 1)


def test_hetlora_weights_follow_the_update_norms():
    # ||B1 A1||_F = sqrt(1 + 4 + 9 + 36) = sqrt(50); ||B2 A2||_F = ||[[0,1,1],[2,2,3]]|| = sqrt(19)
    w = norm_weights([(A1, B1), (A2, B2)])
    assert w == pytest.approx([np.sqrt(50) / (np.sqrt(50) + np.sqrt(19)), np.sqrt(19) / (np.sqrt(50) + np.sqrt(19))])
    assert norm_weights([(A1 * 0, B1), (A2 * 0, B2)]) == pytest.approx([0.5, 0.5])  # all zero: uniform
