"""Where and how a worker trains: device, dtype and quantized base, decided from the scenario and the hardware the
worker actually has, with what it could not honour said once instead of failing.

`runtime.device`: auto (CUDA when the worker sees a GPU: Ray sets CUDA_VISIBLE_DEVICES for actors that reserve
`num_gpus`, fractions included) | cpu | cuda. `runtime.train_dtype`: auto (bfloat16 on a GPU that supports it,
float32 otherwise: CPUs run bf16 matmuls ~2x slower) or a dtype. `runtime.base_quantization`: none | int8 | nf4
(bitsandbytes, CUDA only: QLoRA, Dettmers et al. 2023) | model (the scenario's model.quantization).
`training.attention`: eager | sdpa | flash (FlashAttention-2: the flash_attn package, on a GPU, in 16-bit; sdpa
otherwise). `training.optimizer` adamw8bit: bitsandbytes' 8-bit AdamW on a GPU (torch's AdamW otherwise).
`training.master_weights`: honoured in 16-bit only (float32 parameters are their own master). On a GPU every worker
runs torch's deterministic algorithms (cuBLAS workspace fixed, no cuDNN autotuning, FlashAttention's deterministic
backward), so one and N workers give identical results there too. The pure decisions (`placement`,
`attention_for`, `optimizer_for`) are unit-tested; the CUDA-only parts (`load_kwargs` of a quantized base,
`deterministic`) are exercised by tests that skip without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fedsim.errors import ConfigError
from fedsim.scenario.schema import ModelConfig, RuntimeConfig, TrainingConfig


@dataclass(frozen=True)
class Placement:
    """What a worker trains with, and what of the scenario's asks it could not honour (one note each)."""

    device: str  # "cuda" | "cpu"
    dtype: str  # "float32" | "bfloat16" | "float16"
    quantization: str  # "none" | "int8" | "nf4"
    notes: tuple[str, ...] = ()
    attention: str = "sdpa"  # "eager" | "sdpa" | "flash"
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" | "sgd"
    master_weights: bool = False  # 16-bit trained parameters with an fp32 master copy

    def facts(self) -> dict[str, str]:
        """The summary's record of it (summary.json: train_device, train_dtype, base_quantization,
        train_attention, train_optimizer)."""
        return {"train_device": self.device, "train_dtype": self.dtype, "base_quantization": self.quantization,
                "train_attention": self.attention, "train_optimizer": self.optimizer}


# transformers' attn_implementation of each training.attention
ATTN_IMPLEMENTATION = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}


def attention_for(asked: str, device: str, dtype: str, flash: bool) -> tuple[str, str | None]:
    """The attention kernel a worker runs for `training.attention` `asked`, and a note when it is not the one
    asked: FlashAttention-2 (Dao 2023) needs a GPU, the flash_attn package (`flash`: importable) and a 16-bit
    dtype; without them the worker runs sdpa (torch's fused attention, also O(s) memory)."""
    if asked != "flash":
        return asked, None
    why = "no GPU" if device != "cuda" else "flash_attn is not installed" if not flash else \
        f"it computes in 16-bit only, the train dtype is {dtype}" if dtype == "float32" else None
    return ("flash", None) if why is None else ("sdpa", f"attention flash needs FlashAttention-2 ({why}): "
                                                        f"training with sdpa")


def optimizer_for(asked: str, device: str, bnb: bool) -> tuple[str, str | None]:
    """The optimizer a worker runs for `training.optimizer` `asked`, and a note when it is not the one asked:
    adamw8bit (bitsandbytes' block-wise 8-bit AdamW, Dettmers et al. 2022, "8-bit Optimizers via Block-wise
    Quantization") needs bitsandbytes (`bnb`: importable) and a GPU; without them the worker runs torch's AdamW
    (the same update with fp32 moments)."""
    if asked != "adamw8bit" or (device == "cuda" and bnb):
        return asked, None
    why = "no GPU" if device != "cuda" else "bitsandbytes is not installed (pip install fedsim[gpu])"
    return "adamw", f"optimizer adamw8bit needs bitsandbytes on a GPU ({why}): training with torch's AdamW"


def placement(rt: RuntimeConfig, model: ModelConfig, cuda: bool, bf16: bool, bnb: bool,
              training: TrainingConfig | None = None, flash: bool = False) -> Placement:
    """The worker's device, dtype, base quantization, attention kernel, optimizer and master weights: `cuda`
    whether it sees a GPU, `bf16` whether that GPU computes in bfloat16, `bnb` whether bitsandbytes is importable,
    `flash` whether flash_attn is (`training`: the scenario's, its defaults without one). A GPU asked for where
    none is visible is a ConfigError (a cluster spec without `num_gpus`); anything else falls back to what
    exists, with a note."""
    notes = []
    if rt.device == "cuda" and not cuda:
        raise ConfigError("runtime.device", "cuda, but this worker sees no GPU (give the cluster spec's worker "
                                            "num_gpus, e.g. 0.25, or use device auto)")
    device = "cuda" if cuda and rt.device != "cpu" else "cpu"
    dtype = rt.train_dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" and bf16 else "float32"
    elif dtype == "bfloat16" and device == "cuda" and not bf16:
        dtype, _ = "float32", notes.append("this GPU has no bfloat16: training in float32")
    quant = model.quantization if rt.base_quantization == "model" else rt.base_quantization
    if quant != "none" and (device != "cuda" or not bnb):
        why = "no GPU" if device != "cuda" else "bitsandbytes is not installed (pip install fedsim[gpu])"
        notes.append(f"a {quant} base needs bitsandbytes on a GPU ({why}): training on the {dtype} base; the "
                     f"cost model still books {model.quantization}")
        quant = "none"
    t = training or TrainingConfig()
    attention, attention_note = attention_for(t.attention, device, dtype, flash)
    optimizer, optimizer_note = optimizer_for(t.optimizer, device, bnb)
    notes += [n for n in (attention_note, optimizer_note) if n]
    return Placement(device, dtype, quant, tuple(notes), attention, optimizer,
                     t.master_weights and dtype != "float32")


def importable(package: str) -> bool:
    """Whether `package` can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(package) is not None


def local_placement(rt: RuntimeConfig, model: ModelConfig, training: TrainingConfig | None = None) -> Placement:
    """`placement` for the hardware this process sees."""
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    # FlashAttention-2 runs on Ampere (compute capability 8.0) and newer
    flash = cuda and importable("flash_attn") and torch.cuda.get_device_capability() >= (8, 0)
    return placement(rt, model, cuda, bf16, importable("bitsandbytes"), training, flash)


def placement_for(dtype: str = "auto") -> Placement:
    """The placement without a scenario (benchmarks, tests): this process's GPU when it sees one, `dtype`
    ("auto": bfloat16 on a GPU that has it, float32 otherwise), an unquantized base."""
    return local_placement(RuntimeConfig(train_dtype=dtype), ModelConfig())


def deterministic() -> None:
    """Torch's deterministic algorithms on a GPU (cuBLAS needs a fixed workspace, set before its first handle),
    so a client's update does not depend on which worker, or how many, trained it."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("FLASH_ATTENTION_DETERMINISTIC", "1")  # read by transformers' FlashAttention-2 call
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def load_kwargs(p: Placement) -> dict:
    """from_pretrained keyword arguments: the dtype, the attention kernel, and for a quantized base bitsandbytes'
    config on this GPU."""
    import torch

    dtype = getattr(torch, p.dtype)
    kwargs = {"dtype": dtype, "attn_implementation": ATTN_IMPLEMENTATION[p.attention]}
    if p.quantization == "none":
        return kwargs
    from transformers import BitsAndBytesConfig

    if p.quantization == "nf4":  # QLoRA's 4-bit NormalFloat with double quantization, computing in the train dtype
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=dtype)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {**kwargs, "quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}
