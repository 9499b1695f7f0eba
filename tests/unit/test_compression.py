import numpy as np
import pytest

from fedsim.costs.compression import cast, compress, upload_bytes


def test_wire_bytes():
    sizes = [100, 50]
    assert upload_bytes(sizes, "float32") == 600
    assert upload_bytes(sizes, "bfloat16") == 300
    assert upload_bytes(sizes, "float32", "int8") == 150 + 2 * 4  # one fp32 scale per tensor
    assert upload_bytes(sizes, "float16", "topk", 0.1) == (10 + 5) * (2 + 4)  # values + int32 indices
    assert upload_bytes([7], "float32", "topk", 0.1) == 1 * 8  # ceil
    with pytest.raises(ValueError):
        upload_bytes(sizes, "float32", "zip")


def test_bfloat16_rounds_to_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-9, -2.5, 3.0e38], np.float32)
    assert list(cast(x, "bfloat16")) == [1.0, 1.0, 1.0 + 2**-7, -2.5, np.float32(3.00405527047391e38)]  # as torch .bfloat16()
    assert cast(x, "float16")[1] == np.float32(np.float16(1.0 + 2**-8))
    assert cast(x, "float32") is not None and np.array_equal(cast(x, "float32"), x)


def test_int8_error_is_at_most_half_a_step():
    x = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    y = compress(x, "float32", "int8")
    step = np.abs(x).max() / 127
    assert y.shape == x.shape and np.abs(x - y).max() <= step / 2 + 1e-7
    assert np.array_equal(compress(np.zeros(4), "float32", "int8"), np.zeros(4))


def test_topk_keeps_the_largest_magnitudes():
    x = np.array([[0.1, -5.0, 0.2], [3.0, -0.05, 0.0]], np.float32)
    y = compress(x, "float32", "topk", 0.34)  # ceil(0.34 * 6) = 3
    assert np.array_equal(y, np.array([[0.0, -5.0, 0.2], [3.0, 0.0, 0.0]], np.float32))
