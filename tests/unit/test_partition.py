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
    low = partition.label_counts(load({}, {"data.dirichlet_alpha": 0.1}).data, sizes, 7, 0)
    iid = partition.label_counts(load({}, {"data.partition": "iid"}).data, sizes, 7, 0)
    assert np.array_equal(low.sum(1), sizes) and np.array_equal(iid.sum(1), sizes)
    top_share = lambda c: (c.max(1) / c.sum(1)).mean()  # noqa: E731
    assert top_share(low) > 0.7 and top_share(iid) < 0.3


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
