import numpy as np

from fedsim.data import partition, synthetic
from fedsim.scenario import load


def test_sizes_clip_and_mean():
    cfg = load({}, {"data.samples_per_client": {"mean": 30, "sigma": 0.5, "min": 5, "max": 100}}).data
    sizes = partition.client_sizes(cfg, 50000, seed=0)
    assert sizes.min() >= 5 and sizes.max() <= 100
    assert abs(sizes.mean() - 30) < 1.0


def test_dirichlet_is_skewed_and_iid_is_not():
    sizes = np.full(2000, 100)
    supply = np.full(7, 10**6)
    low = partition.label_counts(load({}, {"data.dirichlet_alpha": 0.1}).data, sizes, supply, 0)
    iid = partition.label_counts(load({}, {"data.partition": "iid"}).data, sizes, supply, 0)
    assert np.array_equal(low.sum(1), sizes) and np.array_equal(iid.sum(1), sizes)
    top_share = lambda c: (c.max(1) / c.sum(1)).mean()  # noqa: E731
    assert top_share(low) > 0.7 and top_share(iid) < 0.3


def test_dirichlet_follows_the_label_prior_hsu_2019():
    """Hsu et al. 2019: q ~ Dir(alpha * p), p the label prior. With one label at 10% of a file, it stays ~10% of
    the assigned rows (Dir(alpha * 1) made it 1/L of the demand: 47% for two labels), and a file with enough
    rows is not reused."""
    cfg = load({}, {"data.dirichlet_alpha": 1.0}).data
    sizes = np.full(500, 20)  # 10,000 rows wanted of a 12,000-row file
    supply = np.array([1200, 10800])  # label 0: 10%
    counts = partition.label_counts(cfg, sizes, supply, 0)
    assert np.array_equal(counts.sum(1), sizes)
    share = counts[:, 0].sum() / counts.sum()
    assert 0.07 < share < 0.13
    pools = [np.arange(1200), np.arange(1200, 12000)]
    _, rows, reuse = partition.assign_rows(counts, pools, 0)
    assert reuse == 1.0 and len(np.unique(rows)) == len(rows) == 10_000


def test_scarce_label_moves_excess_to_labels_with_rows_to_spare():
    """Skewed shares ask a 5%-label for more rows than it has: the excess moves to other labels (by each
    client's own shares), so nothing is reused while the file has rows to spare."""
    cfg = load({}, {"data.dirichlet_alpha": 0.05}).data
    sizes = np.full(100, 90)  # 9,000 of 10,000 rows
    supply = np.array([500, 9500])
    counts = partition.label_counts(cfg, sizes, supply, 3)
    assert np.array_equal(counts.sum(1), sizes) and (counts.sum(0) <= supply).all()


def test_client_label_counts_are_per_client_and_repeatable():
    cfg = load({}, {"data.dirichlet_alpha": 0.5}).data
    prior = np.full(7, 1 / 7)
    a = partition.client_label_counts(cfg, 30, prior, seed=0, client=12345)
    assert a.sum() == 30 and np.array_equal(a, partition.client_label_counts(cfg, 30, prior, 0, 12345))
    assert not all(np.array_equal(a, partition.client_label_counts(cfg, 30, prior, 0, c)) for c in range(5))


def test_natural_partition_gives_each_client_one_user():
    users = np.array([2, 0, 1, 2, 0, 2])
    offsets, rows = partition.natural(users, 3, seed=0, field="user_field")
    assert list(offsets) == [0, 2, 3, 6]
    assert [sorted(users[rows[offsets[i]:offsets[i + 1]]]) for i in range(3)] == [[0, 0], [1], [2, 2, 2]]
    offsets, rows = partition.natural(users, 2, seed=0, field="user_field")
    assert len(offsets) == 3 and len(set(users[rows])) == 2  # a sample of two users
    import pytest

    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="3 users"):
        partition.natural(users, 4, seed=0, field="user_field")


def test_assign_rows_is_a_partition_without_reuse():
    counts = np.array([[2, 1], [0, 3], [1, 0]])
    pools = [np.array([10, 11, 12]), np.array([20, 21, 22, 23])]
    offsets, rows, reuse = partition.assign_rows(counts, pools, seed=0)
    assert list(offsets) == [0, 3, 6, 7] and reuse == 1.0
    assert len(set(rows)) == 7
    assert set(rows[0:2]) <= {10, 11, 12} and rows[2] in pools[1]
    _, _, reuse = partition.assign_rows(np.array([[6, 0]]), pools, seed=0)
    assert reuse == 2.0


def test_synthetic_examples_are_correct():
    data = synthetic.generate({f: 20 for f in synthetic.FAMILIES}, seed=0)
    for prompt, answer, task in zip(data["prompt"], data["response"], data["task"]):
        if task == "add":
            a, b = (int(x) for x in prompt.removeprefix("Add ").removesuffix(".").split(" and "))
            assert int(answer) == a + b
        elif task == "reverse":
            assert prompt.split()[-1].rstrip(".")[::-1] == answer
        elif task == "sort":
            assert answer.split() == sorted(prompt.split()[1:], key=int)
    assert data == synthetic.generate({f: 20 for f in synthetic.FAMILIES}, seed=0)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=60),
       supply=st.lists(st.integers(0, 300), min_size=1, max_size=6),
       alpha=st.sampled_from([0.01, 0.1, 1.0, 10.0]), seed=st.integers(0, 2**16))
def test_partition_properties(sizes, supply, alpha, seed):
    """Any sizes and label supply: every client gets exactly its size; no label gives more rows than it has
    while the file has rows to spare; rows are a partition (reused only when demand exceeds the file)."""
    supply = np.array(supply)
    if supply.sum() == 0:
        supply[0] = 1
    sizes = np.array(sizes)
    cfg = load({}, {"data.dirichlet_alpha": alpha}).data
    counts = partition.label_counts(cfg, sizes, supply, seed)
    assert np.array_equal(counts.sum(axis=1), sizes) and (counts >= 0).all()
    assert (counts[:, supply == 0] == 0).all()  # a label without rows is never asked for
    if sizes.sum() <= supply.sum():
        assert (counts.sum(axis=0) <= supply).all()
    starts = np.concatenate([[0], np.cumsum(supply)])
    pools = [np.arange(starts[i], starts[i + 1]) for i in range(len(supply))]
    offsets, rows, reuse = partition.assign_rows(counts, pools, seed)
    assert offsets[-1] == len(rows) == sizes.sum()
    if sizes.sum() <= supply.sum():
        assert reuse == 1.0 and len(np.unique(rows)) == len(rows)
