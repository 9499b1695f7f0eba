"""Peak training memory of one client, part by part, calibrated to traced steps (`fedsim cost --trace`).

The parts are those a trace finds at the peak of live tensor bytes (`fedsim.models.memtrack`): frozen weights,
trainable parameters, their gradients, optimizer state, activations saved for backward, logits and loss, and
backward temporaries. Activations are counted per decoder layer from what each op of a Llama-family block
(transformers' Llama/Mistral/Qwen2) keeps for backward when the base is frozen -- the Korthikanti et al. 2022
method ("Reducing Activation Recomputation in Large Transformer Models"), redone for PEFT: a frozen linear layer
keeps no input (no weight gradient), a LoRA layer keeps its input in the adapter's dtype, the RMSNorms keep an
fp32 copy, SwiGLU keeps its gate and up projections and the gate's SiLU, and attention keeps q, k, v, the
output and the log-sum-exp (sdpa, flash; Dao 2023) or the full softmax scores (eager). With activation
checkpointing each layer keeps its input and one layer is recomputed at a time.
"""

from __future__ import annotations

from fedsim.costs.compute import ModelShape, attention_kernel, step_flops

DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
# Quantized weight bytes per parameter: LLM.int8 (Dettmers et al. 2022) stores int8 codes and one fp32 scale per
# output row (`weight_bytes` adds the scales); NF4 with double quantization (Dettmers et al. 2023, QLoRA) packs two
# 4-bit codes per byte, an 8-bit absmax per 64 weights and an fp32 constant per 256 blocks: ~4.127 bits.
QUANT_BYTES = {"int8": 1.0, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}
# Optimizer state per trained parameter: AdamW's two fp32 moments; bitsandbytes' 8-bit AdamW (Dettmers et al.
# 2022, "8-bit Optimizers via Block-wise Quantization"): two uint8 moments + two fp32 absmax per block (the paper's
# 2,048; bitsandbytes 0.50 uses 256), for tensors of at least 4,096 values -- smaller ones keep fp32 moments
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0 + 8.0 / 256, "sgd": 0.0}
ADAM8_MIN_VALUES = 4096


def optimizer_bytes(shape: ModelShape, optimizer: str, trained: int) -> float:
    """Optimizer state of the `trained` parameters (8-bit AdamW: tensor by tensor, see OPTIMIZER_BYTES)."""
    if optimizer != "adamw8bit":
        return trained * OPTIMIZER_BYTES[optimizer]
    sizes = shape.trainable_tensors if shape.trainable_tensors and trained == shape.n_trainable else (trained,)
    return sum(n * (OPTIMIZER_BYTES["adamw8bit"] if n >= ADAM8_MIN_VALUES else 8.0) for n in sizes)
_QKV, _GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")


def weight_bytes(shape: ModelShape, dtype: str, quantization: str = "none") -> float:
    """Frozen base weights. Quantized: the linear layers but the LM head at their quantized width, and the rest
    (embeddings, norms, head) in fp32, as peft's `prepare_model_for_kbit_training` leaves them."""
    if quantization == "none":
        return shape.n_params * DTYPE_BYTES[dtype]
    rest = shape.n_params - shape.n_quantizable
    scales = 4.0 * shape.quant_rows if quantization == "int8" else 0.0
    return shape.n_quantizable * QUANT_BYTES[quantization] + scales + rest * 4.0


def activation_dtype_bytes(dtype: str, quantization: str) -> float:
    """Bytes of the residual stream: the model's dtype, or fp32 on a quantized base (its norms and embeddings
    are fp32, and bitsandbytes returns its input's dtype)."""
    return 4.0 if quantization != "none" else DTYPE_BYTES[dtype]


def kernel(shape: ModelShape, attention: str, dtype: str, quantization: str) -> str:
    """The attention kernel a GPU runs for this step (`compute.attention_kernel`)."""
    return attention_kernel(shape, attention, activation_dtype_bytes(dtype, quantization) == 4.0)


def adapter_dtype_bytes(dtype: str, master_weights: bool, quantization: str = "none") -> float:
    """Bytes of a trained parameter: fp32 (peft's default upcast, and always on a quantized base), or the model's
    dtype with master weights."""
    return DTYPE_BYTES[dtype] if master_weights and quantization == "none" else 4.0


def layer_bytes_per_token(shape: ModelShape, act: float, adapter: float, attention: str = "sdpa",
                          keys: int = 1, queries: int = 1) -> float:
    """Bytes one decoder layer keeps for backward per token (`keys` positions each of `queries` attends to)."""
    h, a, g, d, inter = shape.hidden_size, shape.num_heads, shape.kv_heads, shape.head_dim, shape.ffn_size
    adapted = set(shape.adapted)
    cast = adapter != act  # an adapter computing in its own dtype keeps its own copy of its input
    if shape.peft_method == "lora":
        if shape.lora_dropout:  # each adapter keeps its own dropped-out input and the dropout's mask (torch's
            # CPU dropout keeps the mask in the input's dtype, as traced; CUDA's fused one keeps one byte)
            kept = sum(2.0 * adapter * _width(shape, m, True) for m in shape.adapted)
        elif cast:
            kept = sum(adapter * _width(shape, m, True) for m in shape.adapted)
        else:  # modules reading the same input keep it once; o_proj's input is sdpa's output (kept anyway)
            kept = act * (h * bool(adapted & set(_QKV)) + h * bool(adapted & set(_GATE_UP))
                          + inter * ("down_proj" in adapted) + a * d * ("o_proj" in adapted and attention == "eager"))
        kept += adapter * shape.rank * len(adapted)  # each A's output, B's input
    elif shape.peft_method == "ia3":  # a scaled output keeps the base output, a scaled input the (cast) input
        kept = sum(act * _width(shape, m, False) if m not in shape.scaled_inputs else
                   (adapter if cast else act) * _width(shape, m, True) for m in shape.adapted)
    else:
        kept = 0.0
    if attention in ("eager", "math"):  # q, k and v repeated to every head, fp32 softmax and its copy in the dtype
        attn = act * 3 * a * d + (4.0 + (act if act != 4.0 else 0.0)) * a * keys
    elif keys != queries:  # a prefix: keys and values repeated to every head, and a mask, over the longer keys
        attn = act * (2 * a * d + 2 * a * d * keys / queries + keys) + 4.0 * a
    else:
        attn = act * (2 * a * d + 2 * g * d) + 4.0 * a
    return 2 * 4.0 * h + kept + attn + 3 * act * inter


def _width(shape: ModelShape, module: str, inputs: bool) -> int:
    """Input (or output) features of a Llama-block linear layer."""
    h, inner, kv = shape.hidden_size, shape.num_heads * shape.head_dim, shape.kv_heads * shape.head_dim
    width_in = {"o_proj": inner, "down_proj": shape.ffn_size}.get(module, h)
    width_out = {"q_proj": inner, "k_proj": kv, "v_proj": kv, "gate_proj": shape.ffn_size,
                 "up_proj": shape.ffn_size}.get(module, h)
    return width_in if inputs else width_out


def activation_bytes(shape: ModelShape, batch_size: int, seq_len: int, dtype: str, checkpointing: bool,
                     keys: int | None = None, forward_only: bool = False, attention: str = "sdpa",
                     quantization: str = "none", master_weights: bool = False, loss: str = "full",
                     chunks: int = 8) -> dict[str, float]:
    """Activations held at the step's peak: {"activations", "logits/loss", "temporaries"} (see the module
    docstring); `keys` (default seq_len) is how many positions each query attends to (a prefix adds keys, not
    tokens). The full loss holds three vocabulary-wide fp32 tensors at once when its backward starts (the log-
    softmax it kept, the loss's gradient and the log-softmax's); `fedsim.models.loss`'s chunked loss only a
    slice of them. `forward_only` (a zeroth-order step): one layer's activations and the fp32 logits."""
    n = batch_size * seq_len
    k = seq_len if keys is None else keys
    act = activation_dtype_bytes(dtype, quantization)
    attention = attention_kernel(shape, attention, act == 4.0)
    per_layer = layer_bytes_per_token(shape, act, adapter_dtype_bytes(dtype, master_weights, quantization), attention, k,
                                      seq_len) * n
    logits = 4.0 * n * shape.vocab_size
    if forward_only:
        return {"activations": per_layer, "logits/loss": logits, "temporaries": 0.0}
    first = 4.0 * shape.hidden_size * n if shape.peft_method in ("lora", "ia3") else 0.0  # layer 0's input norm
    mask = act * seq_len * k if attention == "eager" else 0.0
    top = 4.0 * shape.hidden_size * n + mask  # the final norm's fp32 copy
    if checkpointing:
        kept = shape.num_layers * act * shape.hidden_size * n + top
        layer = per_layer
    else:
        kept = shape.num_layers * per_layer - first + top
        layer = 0.0
    # three moments: the loss's backward starts (or, chunked, a slice's logits are live); a layer's MLP runs its
    # backward; an unfused attention runs its backward (the kept softmax, its gradient and the scores' gradient,
    # fp32 each). Checkpointed, the layer running backward has just been recomputed.
    if loss == "chunked":
        # one slice's logits in the head's dtype and in fp32 at once, beside the head input's gradient
        at_loss = act * shape.hidden_size * n + (act + 4.0 if act != 4.0 else 4.0) * -(-n // chunks) * \
            shape.vocab_size
        logits = at_loss
    else:
        at_loss = 3.0 * logits
    at_layer = layer + act * n * (shape.hidden_size + 3 * shape.ffn_size)
    at_attention = 0.0
    if attention in ("eager", "math"):
        scores = 4.0 * shape.num_heads * k * n
        at_attention = (3.0 if checkpointing else 2.0) * scores + 4 * 4.0 * shape.hidden_size * n
    moment = max(at_loss, at_layer, at_attention)
    if moment == at_loss:
        return {"activations": kept, "logits/loss": logits, "temporaries": at_loss - logits}
    return {"activations": kept, "logits/loss": 0.0, "temporaries": moment}


def step_costs(shape: ModelShape, t, dtype: str, quantization: str, overhead_bytes: float = 0.0,
               forward_only: bool = False) -> tuple[dict[str, float], float]:
    """The analytic model's (memory parts, FLOPs) of one step of the local step `t` (a TrainingConfig) on a
    PEFT model of `shape` with its base in `dtype` and `quantization`."""
    parts = memory_breakdown(shape, t.batch_size, t.seq_len, dtype, quantization, t.optimizer,
                             t.gradient_checkpointing, overhead_bytes, forward_only=forward_only,
                             attention=t.attention, master_weights=t.master_weights, loss=t.loss,
                             loss_chunks=t.loss_chunks)
    flops = step_flops(shape, t.batch_size, t.seq_len, True, t.gradient_checkpointing,
                       kernel(shape, t.attention, dtype, quantization))
    return parts, flops


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
    forward_only: bool = False,
    attention: str = "sdpa",
    master_weights: bool = False,
    loss: str = "full",
    loss_chunks: int = 8,
) -> dict[str, float]:
    """Bytes per part of one client's peak training memory (a step after the first: the optimizer state exists);
    their sum is the peak. `peft=False` (full fine-tuning) books the weights, gradients and optimizer of every
    parameter but still counts activations as a frozen base keeps them (an underestimate: trained linear layers
    also keep their inputs). `forward_only`: a zeroth-order step (FedKSeed, Qin et al. 2024) keeps no gradients,
    no optimizer state and no activations for a backward, but a copy of the trained parameters and one
    perturbation vector z (fp32 each)."""
    trained = shape.n_trainable if peft else shape.n_params
    adapter = adapter_dtype_bytes(dtype, master_weights, quantization) if peft else DTYPE_BYTES[dtype]
    tokens = seq_len + (shape.extra_tokens if peft else 0)  # prompt / P-tuning tokens are real positions
    keys = seq_len + (shape.extra_keys if peft else 0)  # a prefix adds keys
    acts = activation_bytes(shape, batch_size, tokens, dtype, checkpointing and not forward_only, keys, forward_only,
                            attention, quantization, master_weights, loss, loss_chunks)
    weights = weight_bytes(shape, dtype, quantization) if peft else 0.0
    if forward_only:
        return {"weights": weights + (shape.n_trainable + shape.n_adapter_frozen) * 4.0,
                "perturbation": 2.0 * trained * 4.0, **acts, "overhead": float(overhead_bytes)}
    master = 4.0 * trained if master_weights and adapter != 4.0 else 0.0  # the fp32 copy the optimizer updates
    return {
        "weights": weights,
        "trainable": (trained + (shape.n_adapter_frozen if peft else 0)) * adapter,
        "gradients": trained * adapter if not acts["logits/loss"] else 0.0,  # freed after each step
        "optimizer": optimizer_bytes(shape, optimizer, trained) + master,
        **acts,
        "overhead": float(overhead_bytes),
    }
