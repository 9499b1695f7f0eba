"""Each cost formula against values computed by hand (see the comments)."""

import pytest

from fedsim.costs import comm, compute, energy, memory
from fedsim.costs.compute import ModelShape

SHAPE = ModelShape(n_params=1000, n_matmul=800, n_embedding=200, n_quantizable=600, n_trainable=10,
                   num_layers=2, hidden_size=16, num_heads=4, head_dim=4, vocab_size=50)


def test_flops_per_token():
    # A = 4 * L * s * heads * head_dim = 4 * 2 * 8 * 16 = 1024 at s = 8
    assert compute.attention_flops_per_token(SHAPE, 8) == 1024
    # PEFT: 4*800 + 6*10 + 3*1024 = 6332; full fine-tuning: 6*800 + 3*1024 = 7872
    assert compute.train_flops_per_token(SHAPE, 8, peft=True) == 6332
    assert compute.train_flops_per_token(SHAPE, 8, peft=False) == 7872
    # checkpointing adds one forward: 2*800 + 2*10 + 1024 = 2644
    assert compute.train_flops_per_token(SHAPE, 8, peft=True, checkpointing=True) == 6332 + 2644
    # a step is batch * seq tokens
    assert compute.step_flops(SHAPE, batch_size=2, seq_len=8) == 16 * 6332
    assert compute.compute_time_s(1e12, 2e11) == 5.0


def test_memory_parts():
    m = memory.memory_breakdown(SHAPE, batch_size=2, seq_len=8, dtype="float32", optimizer="adamw", overhead_bytes=7)
    assert m["weights"] == 1000 * 4 + 10 * 4  # frozen fp32 base + fp32 LoRA masters
    assert m["gradients"] == 40 and m["optimizer"] == 80 and m["overhead"] == 7
    # Korthikanti: s*b*h*(34 + 5*a*s/h) = 8*2*16*(34 + 10) = 11264 B per layer at 16 bit, x2 for fp32, 2 layers
    # + fp32 logits and their gradient 2*4*b*s*V = 6400
    assert m["activations"] == 2 * 2 * 11264 + 6400
    ck = memory.activation_bytes(SHAPE, 2, 8, "float32", checkpointing=True)
    assert ck == 2 * (2 * 8 * 2 * 16) * 2 + 2 * 11264 + 6400  # layer inputs + one recomputed layer + logits
    assert memory.weight_bytes(SHAPE, "bfloat16") == 2000
    assert memory.weight_bytes(SHAPE, "bfloat16", "nf4") == pytest.approx(600 * 4.127 / 8 + 400 * 2)
    assert memory.weight_bytes(SHAPE, "float16", "int8") == pytest.approx(600 * (1 + 4 / 64) + 400 * 2)
    sgd = memory.memory_breakdown(SHAPE, 2, 8, optimizer="sgd")
    assert sgd["optimizer"] == 0
    full = memory.memory_breakdown(SHAPE, 2, 8, peft=False)
    assert full["gradients"] == 4000 and full["optimizer"] == 8000


def test_communication():
    assert comm.payload_bytes(10, "float16") == 20
    assert comm.payload_bytes(10, "float32") == 40
    assert comm.transfer_time_s(1e6, 1e6, 0.05) == pytest.approx(1.05)


def test_energy_and_carbon():
    # Huang et al. 2012 LTE uplink at 8 Mbit/s for 2 s: (438.39*8 + 1288.04) mW * 2 s = 9.59032 J
    assert energy.radio_energy_j(438.39, 1288.04, 8.0, 2.0) == pytest.approx(9.59032)
    assert energy.compute_energy_j(5.0, 3.0) == 15.0
    assert energy.carbon_g(3.6e6, 480.0) == pytest.approx(480.0)
