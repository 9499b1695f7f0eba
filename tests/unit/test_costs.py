"""Each cost formula against values computed by hand (see the comments)."""

import dataclasses

import pytest

from fedsim.costs import comm, compute, energy, memory
from fedsim.costs.compute import ModelShape

SHAPE = ModelShape(n_params=1000, n_matmul=800, n_embedding=200, n_quantizable=600, n_trainable=10,
                   num_layers=2, hidden_size=16, num_heads=4, head_dim=4, vocab_size=50, quant_rows=30)


def test_flops_per_token():
    # A = 4 * L * s * heads * head_dim = 4 * 2 * 8 * 16 = 1024 at s = 8
    assert compute.attention_flops_per_token(SHAPE, 8) == 1024
    # PEFT: 4*800 + 6*10 + A + 2.5*A (fused attention recomputes the scores) = 6844; eager: + 2*A = 6332
    assert compute.train_flops_per_token(SHAPE, 8, peft=True) == 6844
    assert compute.train_flops_per_token(SHAPE, 8, peft=True, attention="eager") == 6332
    # full fine-tuning: 6*800 + 3.5*1024 = 8384
    assert compute.train_flops_per_token(SHAPE, 8, peft=False) == 8384
    # checkpointing recomputes the decoder layers, not the LM head (800 - 200 = 600 matmul parameters):
    # 2*600 + 2*10 + 1024 = 2244
    assert compute.train_flops_per_token(SHAPE, 8, peft=True, checkpointing=True) == 6844 + 2244
    # ... nor a frozen last linear of each layer whose output nothing keeps (n_last_frozen = 100): 2044
    frozen_down = dataclasses.replace(SHAPE, n_last_frozen=100)
    assert compute.recompute_flops_per_token(frozen_down, 8) == 2244 - 200
    # a step is batch * seq tokens
    assert compute.step_flops(SHAPE, batch_size=2, seq_len=8) == 16 * 6844
    assert compute.compute_time_s(1e12, 2e11) == 5.0


def test_memory_parts():
    # fp32, sdpa, nothing adapted inside the layers, b = 2, s = 8 (n = 16 tokens), h = 16, a = 4 heads of 4,
    # MLP 4h = 64. Per layer and token: two RMSNorm fp32 copies 2*4*16 = 128; sdpa keeps q, k, v, out
    # 4*(4*16) = 256 and the fp32 log-sum-exp 4*4 = 16; SwiGLU keeps gate, up, silu 3*4*64 = 768 -> 1168 B
    per_layer = 1168 * 16
    m = memory.memory_breakdown(SHAPE, batch_size=2, seq_len=8, dtype="float32", optimizer="adamw", overhead_bytes=7)
    assert m["weights"] == 1000 * 4 and m["trainable"] == 10 * 4  # frozen fp32 base; the fp32 adapter
    assert m["optimizer"] == 80 and m["overhead"] == 7
    # two layers, less layer 0's input norm (its input needs no gradient), plus the final norm's fp32 copy
    assert m["activations"] == 2 * per_layer - 4 * 16 * 16 + 4 * 16 * 16
    # peak: the last layer's MLP backward (4*16*(16 + 3*64) = 13312) beats the loss's three fp32 logits
    # (3*4*16*50 = 9600); the adapter's gradients exist by then
    assert m["temporaries"] == 13312 and m["logits/loss"] == 0 and m["gradients"] == 40
    big_vocab = dataclasses.replace(SHAPE, vocab_size=500)
    at_loss = memory.memory_breakdown(big_vocab, 2, 8)
    assert at_loss["logits/loss"] == 4 * 16 * 500 and at_loss["temporaries"] == 2 * 4 * 16 * 500
    # checkpointed: each layer keeps its input (4*16*16), the final norm its copy; the recomputed layer and its
    # MLP's gradients are the temporaries
    ck = memory.activation_bytes(SHAPE, 2, 8, "float32", checkpointing=True)
    assert ck == {"activations": 2 * 1024 + 1024, "logits/loss": 0.0, "temporaries": per_layer + 13312}
    # the chunked loss: the head input's gradient (4*16*16) + one of 8 slices of fp32 logits (4*2*5000)
    huge_vocab = dataclasses.replace(SHAPE, vocab_size=5000)
    chunked = memory.activation_bytes(huge_vocab, 2, 8, "float32", False, loss="chunked", chunks=8)
    assert chunked["logits/loss"] == 1024 + 4 * 2 * 5000
    # weights: bf16; NF4 with double quantization (4 + 8/64 + 32/(64*256) bits) on the 600 quantizable
    # parameters, the rest fp32 (peft's prepare_model_for_kbit_training); LLM.int8: 1 B + an fp32 scale per row
    assert memory.weight_bytes(SHAPE, "bfloat16") == 2000
    assert memory.weight_bytes(SHAPE, "bfloat16", "nf4") == pytest.approx(600 * (4 + 8 / 64 + 32 / 16384) / 8 + 400 * 4)
    assert memory.weight_bytes(SHAPE, "float16", "int8") == 600 * 1 + 30 * 4 + 400 * 4
    assert memory.memory_breakdown(SHAPE, 2, 8, optimizer="sgd")["optimizer"] == 0
    # 8-bit AdamW: uint8 moments + fp32 absmax per 256 values for a tensor of >= 4,096 values, fp32 moments for
    # smaller ones (SHAPE's 10 parameters)
    assert memory.memory_breakdown(SHAPE, 2, 8, optimizer="adamw8bit")["optimizer"] == 10 * 8
    two = dataclasses.replace(SHAPE, n_trainable=5100, trainable_tensors=(5000, 100))
    assert memory.memory_breakdown(two, 2, 8, optimizer="adamw8bit")["optimizer"] == pytest.approx(
        5000 * (2 + 8 / 256) + 100 * 8)
    # bf16 with master weights: 2-byte adapter, its gradient, and an fp32 master copy beside the AdamW moments
    mw = memory.memory_breakdown(SHAPE, 2, 8, dtype="bfloat16", master_weights=True)
    assert mw["trainable"] == 20 and mw["optimizer"] == 80 + 40
    full = memory.memory_breakdown(SHAPE, 2, 8, peft=False)
    assert full["trainable"] == 4000 and full["optimizer"] == 8000


def test_communication():
    assert comm.payload_bytes(10, "float16") == 20
    assert comm.payload_bytes(10, "float32") == 40
    assert comm.transfer_time_s(1e6, 1e6, 0.05) == pytest.approx(1.05)


def test_energy_and_carbon():
    # Huang et al. 2012 LTE uplink at 8 Mbit/s for 2 s: (438.39*8 + 1288.04) mW * 2 s = 9.59032 J
    assert energy.radio_energy_j(438.39, 1288.04, 8.0, 2.0) == pytest.approx(9.59032)
    assert energy.compute_energy_j(5.0, 3.0) == 15.0
    assert energy.carbon_g(3.6e6, 480.0) == pytest.approx(480.0)
