"""FLOPs of one local training step (Kaplan et al. 2020 counting; Narayanan et al. 2021 for attention).

Per trained token, with N_mm the parameters that take part in matrix multiplies (every linear layer including
the LM head; not the input embedding lookup), N_p the PEFT parameters, and A = 4 * L * s * d_attn the
attention score/value matmuls (QK^T and AV, each 2*s*d_attn per token per layer, counted over the full square
as dense kernels compute it):

- forward: 2*N_mm + 2*N_p + A (LoRA; the other PEFT families: `adapter_flops_per_token`, `step_flops`)
- backward, frozen base (PEFT): activation gradients through every layer 2*N_mm + 2*A (2.5*A with a fused
  attention kernel, which recomputes the scores), PEFT input and weight gradients 4*N_p (2*N_p for adapter
  weights that are not trained, FFA-LoRA's A) -- the base weight-gradient pass (another 2*N_mm) is skipped;
- backward, full fine-tuning: 4*N_mm + 2*A (2.5*A fused);
- activation checkpointing recomputes the decoder layers' forward (not the LM head; see
  `recompute_flops_per_token`).

These are the counts torch's FlopCounterMode makes of a traced step (`fedsim.models.trace`; attention dense over
the causal square, as it counts); the calibration test holds them within 5% of it.

The first decoder layer reads the frozen embeddings, so with PEFT its linears whose input does not depend on
a trainable parameter (always q/k/v; o and the MLP too when no earlier module is adapted) need no input
gradient, and its attention needs no backward when q/k/v are not adapted. That is exact for shallow models
and negligible for deep ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the cost models need to know about a (PEFT-wrapped) causal LM; see `fedsim.models.shapes`."""

    n_params: int  # all base parameters (tied weights counted once)
    n_matmul: int  # parameters of every linear layer incl. the LM head (tied or not)
    n_embedding: int  # input embedding parameters
    n_quantizable: int  # linear-layer parameters excluding the LM head (what int8/nf4 quantizes)
    n_trainable: int  # PEFT parameters clients train (what they send: `sent_tensors`)
    num_layers: int
    hidden_size: int
    num_heads: int
    head_dim: int
    vocab_size: int
    trainable_tensors: tuple[int, ...] = ()  # size of each PEFT tensor (wire format and compression)
    n_no_input_grad: int = 0  # first-layer linear parameters whose input gradient PEFT training skips
    first_attention_frozen: bool = False  # first layer's attention needs no backward under PEFT
    peft_method: str = "lora"  # how the PEFT parameters enter the computation (see adapter_flops_per_token)
    virtual_tokens: int = 0  # prompt / P-tuning: tokens prepended to every sequence; prefix: keys per layer
    n_adapter_frozen: int = 0  # adapter parameters in the compute path but not trained (FFA-LoRA's A)
    shared_tensors: tuple[int, ...] | None = None  # sizes of the trained tensors that travel (None: all of them)
    num_kv_heads: int = 0  # grouped-query attention's key/value heads (0: as many as query heads)
    intermediate_size: int = 0  # the MLP's inner width (0: 4 x hidden, GPT-style)
    adapted: tuple[str, ...] = ()  # short names of the modules the PEFT method adapts in a decoder layer
    quant_rows: int = 0  # output rows of the quantizable linears (LLM.int8 keeps one fp32 scale per row)
    n_last_frozen: int = 0  # parameters of the last linear of every layer when frozen (down_proj): not recomputed
    rank: int = 0  # LoRA's rank (0: not LoRA)
    lora_dropout: bool = False  # LoRA applies dropout to its input (it then keeps a mask and its own copy)
    scaled_inputs: tuple[str, ...] = ()  # IA3's feed-forward modules (it scales their input, not their output)

    @property
    def kv_heads(self) -> int:
        """Key/value heads (grouped-query attention), the query heads without it."""
        return self.num_kv_heads or self.num_heads

    @property
    def ffn_size(self) -> int:
        """The MLP's inner width."""
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def n_head(self) -> int:
        """LM-head parameters (the one linear layer that is not quantized)."""
        return self.n_matmul - self.n_quantizable

    @property
    def sent_tensors(self) -> tuple[int, ...]:
        """Sizes of the tensors exchanged with the server each round (FedSA-LoRA: A only)."""
        return self.trainable_tensors if self.shared_tensors is None else self.shared_tensors

    @property
    def n_sent(self) -> int:
        """Parameters exchanged each way per round."""
        return self.n_trainable if self.shared_tensors is None else int(sum(self.shared_tensors))

    @property
    def extra_tokens(self) -> int:
        """Tokens every sequence gains (prompt and P-tuning prepend virtual tokens; a prefix adds none)."""
        return self.virtual_tokens if self.peft_method in ("prompt_tuning", "p_tuning") else 0

    @property
    def extra_keys(self) -> int:
        """Positions every query attends to beyond the sequence (prompt/P-tuning tokens, or prefix keys)."""
        return self.virtual_tokens


def attention_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """A = 4 * L * s * d_attn: QK^T and AV forward FLOPs per token over all layers (s: the keys attended)."""
    return 4.0 * shape.num_layers * seq_len * shape.num_heads * shape.head_dim


def adapter_flops_per_token(shape: ModelShape) -> float:
    """Forward FLOPs per token of the PEFT parameters themselves: LoRA's low-rank matmuls 2*N_p (frozen ones
    included: FFA-LoRA's A still multiplies); IA3's element-wise scaling vectors N_p; prompt and prefix
    parameters are looked up, not multiplied (0; P-tuning's encoder runs once per sequence, see `step_flops`)."""
    return {"lora": 2.0, "ia3": 1.0}.get(shape.peft_method, 0.0) * (shape.n_trainable + shape.n_adapter_frozen)


def adapter_backward_flops_per_token(shape: ModelShape) -> float:
    """Backward FLOPs per token of the adapter: input and weight gradients of trained parameters (2x forward),
    only input gradients of frozen ones (1x)."""
    per = {"lora": 2.0, "ia3": 1.0}.get(shape.peft_method, 0.0)
    return per * (2.0 * shape.n_trainable + shape.n_adapter_frozen)


def forward_flops_per_token(shape: ModelShape, seq_len: int, peft: bool = True) -> float:
    """2*N_mm (+ the adapter's own FLOPs with PEFT) + attention."""
    return 2.0 * shape.n_matmul + (adapter_flops_per_token(shape) if peft else 0.0) + \
        attention_flops_per_token(shape, seq_len)


def attention_kernel(shape: ModelShape, attention: str, fp32: bool) -> str:
    """The kernel a CUDA GPU runs for `training.attention` (`fp32`: attention computes in fp32 -- an fp32 model
    or a quantized base's fp32 residual stream): eager; sdpa or flash, fused (Dao 2023); or "math", torch's
    unfused sdpa kernel, which is what sdpa gives fp32 grouped-query attention (its fused kernels take fp32 only
    without grouped-query attention). transformers' FlashAttention-2 casts fp32 inputs to 16 bits: it stays fused."""
    if attention == "sdpa" and fp32 and shape.kv_heads < shape.num_heads:
        return "math"
    return attention


def attention_backward_factor(attention: str = "sdpa") -> float:
    """Backward FLOPs of attention per forward FLOP: eager and math differentiate their two matmuls (2x); the
    fused kernels (sdpa, flash; Dao 2023) also recompute the scores QK^T (2.5x), as FlopCounterMode counts them."""
    return 2.0 if attention in ("eager", "math") else 2.5


def recompute_flops_per_token(shape: ModelShape, seq_len: int, peft: bool = True) -> float:
    """Activation checkpointing's extra forward: every decoder layer again, not the LM head (it is outside the
    checkpointed layers), and not a layer's last linear when nothing of it is kept for backward (a frozen
    down_proj: torch's non-reentrant checkpoint stops recomputing once the kept tensors are rebuilt)."""
    layers = shape.n_matmul - shape.n_head - (shape.n_last_frozen if peft else 0)
    return 2.0 * layers + (adapter_flops_per_token(shape) if peft else 0.0) + attention_flops_per_token(shape, seq_len)


def train_flops_per_token(shape: ModelShape, seq_len: int, peft: bool = True, checkpointing: bool = False,
                          attention: str = "sdpa") -> float:
    """Forward + backward (+ recomputed forward) FLOPs per trained token; `seq_len` is the number of keys each
    query attends to."""
    attn = attention_flops_per_token(shape, seq_len)
    back = attention_backward_factor(attention)
    if peft:
        total = 4.0 * shape.n_matmul - 2.0 * shape.n_no_input_grad + adapter_flops_per_token(shape) + \
            adapter_backward_flops_per_token(shape) + (1.0 + back) * attn
        if shape.first_attention_frozen:
            total -= back * attn / shape.num_layers
    else:
        total = 6.0 * shape.n_matmul + (1.0 + back) * attn
    if checkpointing:
        total += recompute_flops_per_token(shape, seq_len, peft)
    return total


def step_flops(shape: ModelShape, batch_size: int, seq_len: int, peft: bool = True, checkpointing: bool = False,
               attention: str = "sdpa") -> float:
    """FLOPs of one optimizer step on batch_size sequences of seq_len tokens. Prompt and P-tuning prepend
    their virtual tokens (every layer processes them), a prefix adds keys every query attends to; P-tuning's
    prompt encoder (an MLP holding its N_p parameters) runs forward and backward once per sequence."""
    tokens = seq_len + (shape.extra_tokens if peft else 0)
    keys = seq_len + (shape.extra_keys if peft else 0)
    # the encoder's MLP weights (its N_p less the looked-up virtual-token embeddings) per virtual token
    mlp = shape.n_trainable - shape.virtual_tokens * shape.hidden_size
    encoder = 6.0 * mlp * shape.virtual_tokens if peft and shape.peft_method == "p_tuning" else 0.0
    return batch_size * (tokens * train_flops_per_token(shape, keys, peft, checkpointing, attention) + encoder)


def zo_step_flops(shape: ModelShape, batch_size: int, seq_len: int) -> float:
    """FLOPs of one zeroth-order local step (FedKSeed, Qin et al. 2024, Algorithm 1): two forward passes on the
    batch, at w + eps z and w - eps z, and no backward; plus perturbing, restoring and updating the N_p trained
    parameters (three axpys of 2 FLOPs each). P-tuning's encoder runs forward once per sequence and pass."""
    tokens, keys = seq_len + shape.extra_tokens, seq_len + shape.extra_keys
    mlp = shape.n_trainable - shape.virtual_tokens * shape.hidden_size
    encoder = 2.0 * mlp * shape.virtual_tokens if shape.peft_method == "p_tuning" else 0.0
    return 2.0 * batch_size * (tokens * forward_flops_per_token(shape, keys) + encoder) + 6.0 * shape.n_trainable


def compute_time_s(flops: float, effective_flops_per_s):
    """Seconds to do `flops` on a device sustaining `effective_flops_per_s` (peak x efficiency x speed)."""
    return flops / effective_flops_per_s
