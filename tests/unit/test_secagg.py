"""Secure Aggregation (Bonawitz et al. 2017) simulated end to end: masks cancel bit for bit with and without
dropouts, a single masked input is noise, secrets are really rebuilt from t Shamir shares, and the cost model
on a small cohort worked out by hand."""

import numpy as np
import pytest

from fedsim.strategies import secagg
from fedsim.strategies.secagg import FixedPoint, SecAggAborted, SecAggRound, masked_add, protocol_cost

SHAPES = {"lora_A": (3, 4), "lora_B": (5,)}


def _updates(ids, scale=0.1):
    return {u: {k: np.random.default_rng(u).normal(0, scale, s).astype(np.float32) for k, s in SHAPES.items()}
            for u in ids}


def _encode(updates, codec, cohort):
    return {u: {k: codec.encode(v, cohort)[0] for k, v in t.items()} for u, t in updates.items()}


def _secure_sum(rnd, encoded, survivors, order=None):
    total = None
    for u in order or survivors:  # dropped clients never send a masked input
        total = masked_add(total, rnd.mask(u, encoded[u]))
    return rnd.unmask(total, survivors)


def _plain_sum(encoded, ids):
    total = None
    for u in ids:
        total = masked_add(total, encoded[u])
    return total


@pytest.mark.parametrize("ids, dropped, threshold", [([3, 8, 11, 20, 42], [], 3),
                                                     ([0, 1, 2, 5, 9, 13, 30], [0, 9], 4)])
def test_masked_sum_equals_plain_modular_sum_bit_for_bit(ids, dropped, threshold):
    codec = FixedPoint()
    encoded = _encode(_updates(ids), codec, len(ids))
    survivors = [u for u in ids if u not in dropped]
    rnd = SecAggRound(seed=7, rnd=2, cohort=ids, threshold=threshold, codec=codec)
    got = _secure_sum(rnd, encoded, survivors, order=survivors[::-1])
    want = _plain_sum(encoded, survivors)
    for k in SHAPES:
        assert got[k].dtype == np.uint32 and np.array_equal(got[k], want[k])
        # the decoded sum is exactly the fixed-point sum of the encoded values
        exact = sum(encoded[u][k].view(np.int32).astype(np.int64) for u in survivors) / 2.0**20
        assert np.array_equal(codec.decode(got[k]), exact)
    # masks depend on client ids only: a fresh round masking in another order gives the same inputs
    again = SecAggRound(seed=7, rnd=2, cohort=ids[::-1], threshold=threshold, codec=codec)
    for u in survivors:
        assert all(np.array_equal(again.mask(u, encoded[u])[k], rnd.mask(u, encoded[u])[k]) for k in SHAPES)


def test_one_masked_input_looks_uniform_and_decodes_to_garbage():
    codec = FixedPoint()
    x = np.random.default_rng(0).normal(0, 0.1, 4096)
    enc, _ = codec.encode(x, 5)
    rnd = SecAggRound(seed=1, rnd=0, cohort=[0, 1, 2, 3, 4], threshold=3, codec=codec)
    y = rnd.mask(2, {"w": enc})["w"]
    assert np.mean(y != enc) > 0.999
    # top 4 bits: the encoding only has 0000 (x >= 0) or 1111 (x < 0); the masked input fills all 16 buckets
    # about evenly (1/16 = 0.0625, standard error 0.004)
    assert set(np.unique(enc >> 28)) == {0, 15}
    freq = np.bincount(y >> 28, minlength=16) / y.size
    assert freq.min() > 0.045 and freq.max() < 0.08
    assert np.median(np.abs(codec.decode(y) - x)) > 100  # uniform on [-2048, 2048), x is ~0.1
    other = SecAggRound(seed=1, rnd=1, cohort=[0, 1, 2, 3, 4], threshold=3, codec=codec)
    assert np.mean(other.mask(2, {"w": enc})["w"] != y) > 0.999  # fresh keys every round


def test_too_few_survivors_abort_and_bad_thresholds_are_rejected():
    codec = FixedPoint()
    encoded = _encode(_updates(range(5)), codec, 5)
    rnd = SecAggRound(seed=0, rnd=0, cohort=range(5), threshold=4, codec=codec)
    total = None
    for u in (0, 2, 4):
        total = masked_add(total, rnd.mask(u, encoded[u]))
    with pytest.raises(SecAggAborted) as err:
        rnd.unmask(total, [0, 2, 4])
    assert isinstance(err.value, RuntimeError)
    for bad in (0, 6):
        with pytest.raises(ValueError):
            SecAggRound(seed=0, rnd=0, cohort=range(5), threshold=bad, codec=codec)


def test_shamir_by_hand_and_any_t_shares_rebuild_the_secret():
    # f(x) = 42 + 7x: shares (1, 49), (2, 56), (3, 63); Lagrange at 0 from any two gives 42
    assert secagg.shamir_reconstruct([(1, 49), (3, 63)]) == 42
    assert secagg.shamir_reconstruct([(1, 49), (2, 56), (3, 63)]) == 42
    assert secagg.shamir_reconstruct([(1, 50), (3, 63)]) != 42  # one wrong share: a different "secret"
    secret = 2**126 + 12345
    shares = secagg.shamir_share(secret, 3, [1, 2, 3, 4, 5], np.random.default_rng(0))
    assert secagg.shamir_reconstruct([(x, shares[x]) for x in (5, 2, 4)]) == secret
    assert secagg.shamir_reconstruct([(x, shares[x]) for x in (1, 3)]) != secret  # t - 1 shares: nothing
    g = secagg.G
    assert secagg.agree(123456789, pow(g, 987654321, secagg.P)) == secagg.agree(987654321, pow(g, 123456789,
                                                                                              secagg.P))


@pytest.mark.parametrize("kind, victim", [("b", 4), ("s", 1)])
def test_a_wrong_share_breaks_the_unmasking(monkeypatch, kind, victim):
    # survivors 0, 2, 3, 4 (threshold 3: holders 0, 2, 3 answer); client 1 dropped
    codec = FixedPoint()
    ids, survivors = [0, 1, 2, 3, 4], [0, 2, 3, 4]
    encoded = _encode(_updates(ids), codec, len(ids))
    rnd = SecAggRound(seed=3, rnd=0, cohort=ids, threshold=3, codec=codec)
    honest = rnd.reveal

    def tampered(holder, alive, bad_holder):
        msg = honest(holder, alive)
        if holder == bad_holder:
            assert msg[victim][0] == kind  # b_u for a survivor, s_u^SK for the dropped client
            msg[victim] = (kind, msg[victim][1] + 1)
        return msg

    want = _plain_sum(encoded, survivors)
    monkeypatch.setattr(rnd, "reveal", lambda h, a: tampered(h, a, bad_holder=4))  # not among the first t
    assert np.array_equal(_secure_sum(rnd, encoded, survivors)["lora_A"], want["lora_A"])
    monkeypatch.setattr(rnd, "reveal", lambda h, a: tampered(h, a, bad_holder=2))
    assert np.mean(_secure_sum(rnd, encoded, survivors)["lora_A"] != want["lora_A"]) > 0.9


def test_fixed_point_by_hand_clamping_and_no_wrap():
    enc, clamped = FixedPoint(32, 2).encode(np.array([1.5, -1.25, 0.1]), cohort=1)
    assert enc.dtype == np.uint32 and list(enc) == [6, 2**32 - 5, 0] and clamped == 0  # 0.4 rounds to 0
    assert list(FixedPoint(32, 2).decode(enc)) == [1.5, -1.25, 0.0]
    codec = FixedPoint(32, 20)
    top = (2**31 - 1) // 4  # cohort 4: |x| <= 511.999999 -> at most 536870911 units
    enc, clamped = codec.encode(np.array([600.0, -1000.0, 1.0, np.nan]), cohort=4)
    assert clamped == 3 and list(enc) == [top, 2**32 - top, 2**20, 0]
    hi = np.full(4, enc[0]).sum(dtype=np.uint32)  # 4 clients at the bound: 2147483644 < 2^31, no wrap
    lo = np.full(4, enc[1]).sum(dtype=np.uint32)
    assert codec.decode(hi) == 4 * top / 2**20 > 2047 and codec.decode(lo) == -4 * top / 2**20
    wide = FixedPoint(64, 32)
    enc, clamped = wide.encode(np.array([-3.25, 1e30]), cohort=1)
    assert enc.dtype == np.uint64 and clamped == 1
    assert int(enc[0]) == 2**64 - 13 * 2**30 and 0 < int(enc[1]) <= 2**63 - 1  # clamped, no int64 overflow
    assert wide.decode(enc)[0] == -3.25


def test_64_bit_round_is_exact():
    codec = FixedPoint(64, 32)
    ids = [2, 4, 6, 8]
    encoded = _encode(_updates(ids, scale=1e3), codec, len(ids))
    rnd = SecAggRound(seed=5, rnd=9, cohort=ids, threshold=2, codec=codec)
    got = _secure_sum(rnd, encoded, [2, 6, 8])
    want = _plain_sum(encoded, [2, 6, 8])
    assert all(got[k].dtype == np.uint64 and np.array_equal(got[k], want[k]) for k in SHAPES)


def test_masked_add_copies_first_then_sums_in_place():
    a = {"w": np.array([2**32 - 1, 5], np.uint32)}
    total = masked_add(None, a)
    assert total["w"] is not a["w"]
    masked_add(total, {"w": np.array([2, 1], np.uint32)})
    assert list(total["w"]) == [1, 6] and list(a["w"]) == [2**32 - 1, 5]  # wraps mod 2^32


def test_protocol_cost_by_hand_and_scaling():
    c = protocol_cost(4, 1, numel=10, bits=32, key_bytes=32, share_bytes=40)
    # up: 2 keys 64 + 3 share pairs 240 + 3 shares 120 = 424
    # down: 8 keys 256 + 3 share pairs 240 + U2 list 16 + U3 list 16 = 528
    assert (c.client_up_bytes, c.client_down_bytes, c.masked_input_bytes) == (424, 528, 40)
    assert (c.client_prg_values, c.server_prg_values, c.round_trips) == (40, (3 + 1 * 3) * 10, 3)
    n = np.array([10**4, 10**5, 10**6])
    v = protocol_cost(n, n // 10, numel=1000, bits=32, key_bytes=32, share_bytes=40)
    for i, ni in enumerate(n):
        one = protocol_cost(int(ni), int(ni) // 10, numel=1000, bits=32, key_bytes=32, share_bytes=40)
        assert v.client_up_bytes[i] == one.client_up_bytes and v.server_prg_values[i] == one.server_prg_values
    lin = protocol_cost(np.array([10, 20, 30]), 0, 1, 32, 32, 40)
    assert np.all(np.diff(lin.client_up_bytes, 2) == 0) and np.all(np.diff(lin.client_up_bytes) > 0)
    assert np.all(np.diff(lin.client_down_bytes, 2) == 0) and np.all(np.diff(lin.client_down_bytes) > 0)
    ratio = v.server_prg_values[1:] / v.server_prg_values[:-1]  # 10x the clients, ~100x the server work
    assert np.all((ratio > 99) & (ratio < 100.1))
    assert np.all(v.client_prg_values[1:] / v.client_prg_values[:-1] == 10)
