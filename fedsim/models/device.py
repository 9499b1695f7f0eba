"""Where and how a worker trains: device, dtype and quantized base, decided from the scenario and the hardware the
worker actually has, with what it could not honour said once instead of failing.

`runtime.device`: auto (CUDA when the worker sees a GPU: Ray sets CUDA_VISIBLE_DEVICES for actors that reserve
`num_gpus`, fractions included) | cpu | cuda. `runtime.train_dtype`: auto (bfloat16 on a GPU that supports it,
float32 otherwise: CPUs run bf16 matmuls ~2x slower) or a dtype. `runtime.base_quantization`: none | int8 | nf4
(bitsandbytes, CUDA only: QLoRA, Dettmers et al. 2023) | model (the scenario's model.quantization). On a GPU
every worker runs torch's deterministic algorithms (cuBLAS workspace fixed, no cuDNN autotuning), so one and N
workers give identical results there too. The pure decision (`placement`) is unit-tested here; the CUDA-only
parts (`quantized_kwargs`, `deterministic`) are exercised by tests that skip without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fedsim.errors import ConfigError
from fedsim.scenario.schema import ModelConfig, RuntimeConfig


@dataclass(frozen=True)
class Placement:
    """What a worker trains with, and what of the scenario's asks it could not honour (one note each)."""

    device: str  # "cuda" | "cpu"
    dtype: str  # "float32" | "bfloat16" | "float16"
    quantization: str  # "none" | "int8" | "nf4"
    notes: tuple[str, ...] = ()

    def facts(self) -> dict[str, str]:
        """The summary's record of it (summary.json: train_device, train_dtype, base_quantization)."""
        return {"train_device": self.device, "train_dtype": self.dtype, "base_quantization": self.quantization}


def placement(rt: RuntimeConfig, model: ModelConfig, cuda: bool, bf16: bool, bnb: bool) -> Placement:
    """The worker's device, dtype and base quantization: `cuda` whether it sees a GPU, `bf16` whether that GPU
    computes in bfloat16, `bnb` whether bitsandbytes is importable. A GPU asked for where none is visible is a
    ConfigError (a cluster spec without `num_gpus`); anything else falls back to what exists, with a note."""
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
    return Placement(device, dtype, quant, tuple(notes))


def local_placement(rt: RuntimeConfig, model: ModelConfig) -> Placement:
    """`placement` for the hardware this process sees."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return placement(rt, model, cuda, bf16, importlib.util.find_spec("bitsandbytes") is not None)


def placement_for(dtype: str = "auto") -> Placement:
    """The placement without a scenario (benchmarks, tests): this process's GPU when it sees one, `dtype`
    ("auto": bfloat16 on a GPU that has it, float32 otherwise), an unquantized base."""
    return local_placement(RuntimeConfig(train_dtype=dtype), ModelConfig())


def deterministic() -> None:
    """Torch's deterministic algorithms on a GPU (cuBLAS needs a fixed workspace, set before its first handle),
    so a client's update does not depend on which worker, or how many, trained it."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def load_kwargs(p: Placement) -> dict:
    """from_pretrained keyword arguments: the dtype, and for a quantized base bitsandbytes' config on this GPU."""
    import torch

    dtype = getattr(torch, p.dtype)
    if p.quantization == "none":
        return {"dtype": dtype}
    from transformers import BitsAndBytesConfig

    if p.quantization == "nf4":  # QLoRA's 4-bit NormalFloat with double quantization, computing in the train dtype
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=dtype)
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {"dtype": dtype, "quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}}
