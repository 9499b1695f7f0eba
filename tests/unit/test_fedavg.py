import itertools

import numpy as np
import pytest

from fedsim.scenario import dump, load
from fedsim.strategies.fedavg import OrderedFold, WeightedMean, apply_update

SCENARIO = dump(load({}))  # the default scenario (FedAvg, lr 1)


def test_weighted_mean_by_hand():
    m = WeightedMean()
    m.add(1.0, {"w": np.array([1.0, 0.0], np.float32)})
    m.add(3.0, {"w": np.array([5.0, 4.0], np.float32)})
    np.testing.assert_allclose(m.mean()["w"], [(1 + 15) / 4, 12 / 4])
    assert m.count == 2 and m.weight == 4.0
    assert WeightedMean().mean() is None
    with pytest.raises(ValueError):
        m.add(0.0, {"w": np.zeros(2)})


def test_fedavg_update_is_sample_weighted_mean_of_client_models():
    g = {"w": np.array([1.0, 1.0], np.float32)}
    clients = [(10, np.array([2.0, 0.0])), (30, np.array([0.0, 2.0]))]
    m = WeightedMean()
    for n, local in clients:
        m.add(n, {"w": (local - g["w"]).astype(np.float32)})
    new = apply_update(g, m.mean(), server_lr=1.0)
    np.testing.assert_allclose(new["w"], (10 * clients[0][1] + 30 * clients[1][1]) / 40)
    assert new["w"].dtype == np.float32
    assert apply_update(g, None, 1.0) is g


def test_ordered_fold_gives_identical_bits_for_any_arrival_order():
    rng = np.random.default_rng(0)
    items = [(float(rng.integers(1, 50)), {"w": rng.normal(size=64).astype(np.float32) * 10.0 ** rng.integers(-6, 3)})
             for _ in range(6)]
    results = set()
    for order in itertools.permutations(range(6)):
        m = WeightedMean()
        fold = OrderedFold(m.add)
        for seq in order:
            fold.put(seq, *items[seq])
        assert fold.folded == 6
        results.add(m.mean()["w"].tobytes())
    assert len(results) == 1


def test_ordered_fold_buffers_only_what_is_out_of_order():
    seen = []
    fold = OrderedFold(seen.append)
    fold.put(2, "c")
    fold.put(1, "b")
    assert seen == [] and fold.peak_waiting == 2
    fold.put(0, "a")
    assert seen == ["a", "b", "c"]
    with pytest.raises(ValueError):
        fold.put(1, "again")


def test_non_finite_updates_are_quarantined_not_folded(tmp_path):
    """One NaN update must not reach the global adapter: it is counted per round and skipped."""
    from fedsim.client_round import ClientResult, state_digest
    from fedsim.runtime.aggregator import Aggregator

    g = {"w": np.zeros(2, np.float32)}
    agg = Aggregator(str(tmp_path), g, SCENARIO)
    agg.begin(1)
    agg.put(1, 1.0, ClientResult(5, 1, 4, float("nan"), "x", False), {"delta": {"w": np.full(2, np.nan, np.float32)}})
    agg.put(0, 1.0, ClientResult(4, 1, 4, 0.5, "x", True), {"delta": {"w": np.array([1.0, 2.0], np.float32)}})
    new, stats = agg.finish()
    np.testing.assert_array_equal(new["w"], [1.0, 2.0])
    assert stats["quarantined"] == 1 and stats["aggregated"] == 1 and stats["train_loss"] == 0.5
    assert stats["global_sha"] == state_digest(new) != state_digest(g)
    agg.close()


def test_an_update_that_overflows_the_wire_format_is_quarantined(tmp_path):
    """A diverging client whose float32 delta is finite but overflows float16 on the wire: the server folds
    what it decodes, so it must check that (inf), whatever the worker said."""
    from fedsim.client_round import ClientResult
    from fedsim.costs.compression import compress
    from fedsim.runtime.aggregator import Aggregator

    sent = {"w": compress(np.array([1e5, 1.0], np.float32), "float16", "none", 1.0)}
    assert not np.isfinite(sent["w"]).all()
    agg = Aggregator(str(tmp_path), {"w": np.zeros(2, np.float32)}, SCENARIO)
    agg.begin(1)
    agg.put(0, 1.0, ClientResult(1, 1, 4, 0.5, "x", True), {"delta": sent})
    new, stats = agg.finish()
    assert stats["quarantined"] == 1 and np.array_equal(new["w"], [0.0, 0.0])
    agg.close()
