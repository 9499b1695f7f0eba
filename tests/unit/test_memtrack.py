"""The live-bytes tracker and the trace's stand-ins against hand-counted bytes."""

import math

import torch

from fedsim.models.memtrack import LiveBytes
from fedsim.models.standins import Adam8bitState, QuantLinear


def test_peak_is_the_largest_live_total_and_views_share_storage():
    tracker = LiveBytes()
    weights = torch.zeros(1000)  # 4,000 B, there before the step
    tracker.book(weights, "weights")
    with tracker:
        tracker.phase = "forward"
        a = torch.ones(500)  # 2,000 B
        b = a * 2  # 2,000 B: 8,000 live, the peak
        del a  # freed: 6,000
        view = b.view(10, 50)  # a view: no new storage
        tracker.phase = "backward"
        c = torch.empty(250)  # 1,000 B: 7,000 < 8,000
        tracker.phase = "optimizer"
        state = torch.zeros(100)  # 400 B that outlive the step: optimizer state
        scratch = torch.zeros(100)  # 400 B freed within it: a temporary
        del scratch
    assert tracker.peak == 8000 and tracker.peak_phase == "forward"
    assert tracker.current == 4000 + 2000 + 1000 + 400
    parts, layers = tracker.breakdown()
    assert parts == {"weights": 4000, "activations": 4000} and layers == {"other": 4000}
    tracker.restart_peak()  # a second step's peak counts from what lives now
    with tracker:
        tracker.phase = "optimizer"
        scratch = torch.zeros(1000)
        del scratch
    parts, _ = tracker.breakdown()
    assert tracker.peak == 7400 + 4000
    assert parts["optimizer"] == 400 and parts["temporaries"] == 4000 + 1000  # the scratch and the backward's c
    assert view.numel() == 500 and c.numel() == 250 and state.numel() == 100


def test_gradients_are_told_apart_from_temporaries():
    tracker = LiveBytes()
    w = torch.nn.Parameter(torch.ones(256))
    tracker.book(w, "trainable")
    w.register_post_accumulate_grad_hook(lambda p: tracker.mark_grad(p.grad))
    with tracker:
        tracker.phase = "forward"
        loss = (w * w).sum()
        tracker.phase = "backward"
        loss.backward()
        tracker.restart_peak()
    parts, _ = tracker.breakdown()
    assert parts["gradients"] == 1024 and parts["trainable"] == 1024


def test_quantized_linear_stores_what_bitsandbytes_stores():
    # 4096 x 1024 weights: LLM.int8 keeps one int8 per weight and one fp32 scale per output row
    int8 = QuantLinear(1024, 4096, "int8", False, "meta", torch.bfloat16)
    assert sum(p.numel() * p.element_size() for p in int8.parameters()) == 4096 * 1024 + 4096 * 4
    # NF4 with double quantization: 4 bits per weight, an 8-bit absmax per 64 weights, an fp32 constant per
    # 256 blocks -- QLoRA's 4 + 8/64 + 32/(64*256) = 4.127 bits per parameter
    nf4 = QuantLinear(1024, 4096, "nf4", True, "meta", torch.bfloat16)
    n = 4096 * 1024
    stored = sum(p.numel() * p.element_size() for p in nf4.parameters()) - 4096 * 2  # less the bf16 bias
    assert stored == n // 2 + n // 64 + 4 * math.ceil(n / 64 / 256)
    assert abs(8 * stored / n - 4.127) < 1e-3
    assert nf4.weight.shape == (4096, 1024) and nf4.weight.dtype == torch.bfloat16


def test_eight_bit_adam_state():
    big, small = torch.nn.Parameter(torch.ones(10_000)), torch.nn.Parameter(torch.ones(100))
    opt = Adam8bitState([big, small])
    big.grad, small.grad = torch.ones(10_000), torch.ones(100)
    opt.step()
    sizes = {id(p): sum(v.numel() * v.element_size() for v in opt.state[p].values()) for p in (big, small)}
    # two uint8 moments + two fp32 absmax per 256 values (bitsandbytes 0.50: 40 blocks); tensors under 4,096 keep
    # fp32 moments
    assert sizes[id(big)] == 2 * 10_000 + 2 * 40 * 4
    assert sizes[id(small)] == 2 * 100 * 4
