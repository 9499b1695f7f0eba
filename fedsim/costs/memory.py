"""Peak training memory of one client, part by part, and eligibility.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"):
s*b*h*(34 + 5*a*s/h) bytes per layer with 16-bit activations (twice that in fp32); with full activation
checkpointing each layer keeps only its 16-bit input, 2*s*b*h bytes, plus one layer's activations while it is
recomputed. Logits (b*s*V) are kept in fp32 with their gradient.
"""

from __future__ import annotations

from fedsim.costs.compute import ModelShape

DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
# Quantized weight bytes per parameter, including quantization constants (Dettmers et al. 2023, QLoRA:
# NF4 with double quantization costs ~0.127 bits of constants per parameter -> ~4.13 bits).
QUANT_BYTES = {"int8": 1.0 + 4.0 / 64, "nf4": 4.127 / 8}
OPTIMIZER_BYTES = {"adamw": 8.0, "sgd": 0.0}  # fp32 state per trainable parameter


def weight_bytes(shape: ModelShape, dtype: str, quantization: str = "none") -> float:
    """Frozen base weights: linear layers at the quantized width if any, everything else at dtype."""
    if quantization == "none":
        return shape.n_params * DTYPE_BYTES[dtype]
    rest = shape.n_params - shape.n_quantizable
    return shape.n_quantizable * QUANT_BYTES[quantization] + rest * DTYPE_BYTES[dtype]


def activation_bytes(shape: ModelShape, batch_size: int, seq_len: int, dtype: str, checkpointing: bool,
                     keys: int | None = None) -> float:
    """Stored activations for backward (Korthikanti et al. 2022) + fp32 logits and their gradient; `keys` (default
    seq_len) is how many positions each query attends to (a prefix adds keys, not tokens)."""
    s, b, h, a, n_layers = seq_len, batch_size, shape.hidden_size, shape.num_heads, shape.num_layers
    k = s if keys is None else keys
    scale = DTYPE_BYTES[dtype] / 2.0  # the formula is for 16-bit activations
    per_layer = s * b * h * (34.0 + 5.0 * a * k / h) * scale
    layers = (n_layers * 2.0 * s * b * h * scale + per_layer) if checkpointing else n_layers * per_layer
    logits = 2.0 * 4.0 * b * s * shape.vocab_size
    return layers + logits


def memory_breakdown(
    shape: ModelShape,
    batch_size: int,
    seq_len: int,
    dtype: str = "float32",
    quantization: str = "none",
    optimizer: str = "adamw",
    checkpointing: bool = False,
    overhead_bytes: float = 0.0,
    peft: bool = True,
) -> dict[str, float]:
    """Bytes per part of one client's peak training memory; their sum is the peak."""
    trained = shape.n_trainable if peft else shape.n_params
    return {
        "weights": weight_bytes(shape, dtype, quantization) + ((shape.n_trainable + shape.n_adapter_frozen) * 4.0
                                                               if peft else 0.0),
        "gradients": trained * 4.0,
        "optimizer": trained * OPTIMIZER_BYTES[optimizer],
        # prompt / P-tuning tokens are real positions of every layer (and of the logits); a prefix adds keys
        "activations": activation_bytes(shape, batch_size, seq_len + (shape.extra_tokens if peft else 0), dtype,
                                        checkpointing, seq_len + (shape.extra_keys if peft else 0)),
        "overhead": float(overhead_bytes),
    }
