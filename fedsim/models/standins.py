"""Stand-ins for what a trace on CPU cannot run, with the bytes and FLOPs of the real thing.

- `QuantLinear`: bitsandbytes' quantized linear layers as they store a frozen weight. int8 is LLM.int8's
  row-wise format (Dettmers et al. 2022, "LLM.int8()"): one int8 code per weight and one fp32 scale per output
  row. nf4 is QLoRA's NF4 with double quantization (Dettmers et al. 2023, "QLoRA"): 4-bit codes packed two per
  byte, an 8-bit absmax per block of 64 weights and an fp32 constant per 256 of those blocks. Forward and
  backward dequantize the weight into one temporary in the compute dtype and keep nothing else for backward,
  as bitsandbytes' MatMul4Bit/MatMul8bitLt do for a frozen weight.
- `Adam8bitState`: bitsandbytes' 8-bit AdamW state (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
  Quantization"): two uint8 moments per value and two fp32 absmax per block (256 values in bitsandbytes 0.50;
  the paper's 2,048) for each tensor of at least 4,096 values; smaller tensors keep fp32 moments.
- `register_cpu_attention_flops`: torch's fused CPU attention kernel counted as FlopCounterMode counts the
  CUDA flash kernel, so a trace made on CPU counts what a GPU does.

Values are not modelled (these run on fake tensors): they exist to be traced.
"""

from __future__ import annotations

import torch

NF4_BLOCK, NF4_BLOCK2, ADAM8_BLOCK, ADAM8_MIN = 64, 256, 256, 4096  # bitsandbytes 0.50's optimizer block: 256


class _Dequantized(torch.autograd.Function):
    """x @ W^T + b with W dequantized on the fly in forward and again in backward; only the layer is kept."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        return torch.nn.functional.linear(x, module.dequantized(x.dtype), module.bias)

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.module.dequantized(grad.dtype), None


def _frozen(shape, dtype, device) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class QuantLinear(torch.nn.Module):
    """A frozen linear layer stored as bitsandbytes stores it (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, quantization: str, bias: bool, device, dtype):
        super().__init__()
        self.in_features, self.out_features, self.weight_dtype = in_features, out_features, dtype
        n = in_features * out_features
        if quantization == "int8":
            self.codes = _frozen((out_features, in_features), torch.int8, device)
            self.scales = _frozen((out_features,), torch.float32, device)
        elif quantization == "nf4":
            blocks = -(-n // NF4_BLOCK)
            self.codes = _frozen((-(-n // 2),), torch.uint8, device)
            self.scales = _frozen((blocks,), torch.uint8, device)
            self.scales2 = _frozen((-(-blocks // NF4_BLOCK2),), torch.float32, device)
        else:
            raise ValueError(f"unknown quantization {quantization!r}")
        self.bias = _frozen((out_features,), dtype, device) if bias else None

    @classmethod
    def like(cls, linear: torch.nn.Linear, quantization: str) -> QuantLinear:
        """A quantized stand-in of the same shape as `linear`."""
        return cls(linear.in_features, linear.out_features, quantization, linear.bias is not None,
                   linear.weight.device, linear.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """A meta tensor of the weight's shape and dtype: what peft reads to size an adapter."""
        return torch.empty(self.out_features, self.in_features, dtype=self.weight_dtype, device="meta")

    def dequantized(self, dtype) -> torch.Tensor:
        """The weight in the compute dtype: one out x in tensor, as bitsandbytes' dequantize kernels make."""
        return torch.empty(self.out_features, self.in_features, dtype=dtype, device=self.codes.device)

    def forward(self, x):
        """bitsandbytes computes in the compute dtype (the model's) and returns the input's dtype."""
        return _Dequantized.apply(x.to(self.weight_dtype), self).to(x.dtype)


def quantize_linears(model, quantization: str) -> None:
    """Replace every frozen linear layer but the LM head (which bitsandbytes leaves unquantized) with a
    `QuantLinear`; peft's adapters (trained, or FFA-LoRA's frozen A) stay as they are."""
    head = model.get_output_embeddings()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head and not child.weight.requires_grad \
                    and "lora_" not in name and not isinstance(module, torch.nn.ModuleDict):
                setattr(module, name, QuantLinear.like(child, quantization))


class Adam8bitState(torch.optim.Optimizer):
    """8-bit AdamW's state and in-place update (see the module docstring); the update's values are not modelled."""

    def __init__(self, params, lr: float = 1e-3):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    if p.numel() >= ADAM8_MIN:
                        blocks = -(-p.numel() // ADAM8_BLOCK)
                        state.update(state1=torch.empty(p.shape, dtype=torch.uint8, device=p.device),
                                     state2=torch.empty(p.shape, dtype=torch.uint8, device=p.device),
                                     absmax1=torch.empty(blocks, device=p.device),
                                     absmax2=torch.empty(blocks, device=p.device))
                    else:
                        state.update(exp_avg=torch.zeros_like(p, dtype=torch.float32),
                                     exp_avg_sq=torch.zeros_like(p, dtype=torch.float32))
                p.add_(p.grad, alpha=-group["lr"])  # the fused kernel updates in place


_REGISTERED: list[bool] = []


def register_cpu_attention_flops() -> None:
    """Count `_scaled_dot_product_flash_attention_for_cpu` as FlopCounterMode counts the CUDA flash kernel:
    QK^T and AV forward, five matmuls backward (scores recomputed); dense, as FlopCounterMode counts causal
    attention. Grouped-query keys and values are counted at the query's head count."""
    if _REGISTERED:
        return
    from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, _as_heads(key_shape, query_shape), _as_heads(value_shape, query_shape))

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, _as_heads(key_shape, query_shape),
                                        _as_heads(value_shape, query_shape))

    _REGISTERED.append(True)


def _as_heads(kv_shape, query_shape):
    return (kv_shape[0], query_shape[1], *kv_shape[2:])
