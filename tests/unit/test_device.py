"""Where a worker trains: device, dtype and quantized base from the scenario and the worker's hardware."""

import pytest

from fedsim.errors import ConfigError
from fedsim.models.device import placement
from fedsim.scenario.schema import ModelConfig, RuntimeConfig

QLORA = ModelConfig(name="llama-2-7b", quantization="nf4")


@pytest.mark.parametrize("rt, cuda, bf16, expected", [
    (RuntimeConfig(), False, False, ("cpu", "float32")),  # auto on a CPU: float32 (bf16 matmuls are slower there)
    (RuntimeConfig(), True, True, ("cuda", "bfloat16")),  # auto on an A100/H100-class GPU
    (RuntimeConfig(), True, False, ("cuda", "float32")),  # auto on a GPU without bf16 (e.g. a T4)
    (RuntimeConfig(device="cpu"), True, True, ("cpu", "float32")),  # a GPU machine told to train on its CPU
    (RuntimeConfig(train_dtype="bfloat16"), False, False, ("cpu", "bfloat16")),  # asked for: honoured on a CPU
    (RuntimeConfig(train_dtype="float16"), True, True, ("cuda", "float16")),
])
def test_device_and_dtype(rt, cuda, bf16, expected):
    p = placement(rt, ModelConfig(), cuda, bf16, bnb=False)
    assert (p.device, p.dtype) == expected and p.quantization == "none" and not p.notes


def test_bf16_asked_on_a_gpu_without_it_falls_back_with_a_note():
    p = placement(RuntimeConfig(train_dtype="bfloat16"), ModelConfig(), cuda=True, bf16=False, bnb=True)
    assert p.dtype == "float32" and p.notes == ("this GPU has no bfloat16: training in float32",)


@pytest.mark.parametrize("cuda, bnb, quant, why", [
    (True, True, "nf4", None),
    (False, True, "none", "no GPU"),
    (True, False, "none", "bitsandbytes is not installed"),
])
def test_quantized_base_needs_bitsandbytes_on_a_gpu(cuda, bnb, quant, why):
    p = placement(RuntimeConfig(base_quantization="model"), QLORA, cuda, bf16=True, bnb=bnb)
    assert p.quantization == quant
    if why is None:
        assert not p.notes and p.facts() == {"train_device": "cuda", "train_dtype": "bfloat16",
                                             "base_quantization": "nf4"}
    else:
        assert len(p.notes) == 1 and why in p.notes[0] and "still books nf4" in p.notes[0]


def test_int8_base_from_runtime_overrides_the_models_booking():
    p = placement(RuntimeConfig(base_quantization="int8"), QLORA, cuda=True, bf16=True, bnb=True)
    assert p.quantization == "int8"


def test_cuda_asked_where_no_gpu_is_visible_is_a_config_error():
    with pytest.raises(ConfigError, match="runtime.device: cuda, but this worker sees no GPU"):
        placement(RuntimeConfig(device="cuda"), ModelConfig(), cuda=False, bf16=False, bnb=False)
