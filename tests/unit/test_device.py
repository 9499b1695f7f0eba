"""Where a worker trains: device, dtype, quantized base, attention kernel, optimizer and master weights from the
scenario and the worker's hardware."""

import pytest

from fedsim.errors import ConfigError
from fedsim.models.device import load_kwargs, placement
from fedsim.scenario.schema import ModelConfig, RuntimeConfig, TrainingConfig

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
                                             "base_quantization": "nf4", "train_attention": "sdpa",
                                             "train_optimizer": "adamw"}
    else:
        assert len(p.notes) == 1 and why in p.notes[0] and "still books nf4" in p.notes[0]


def test_int8_base_from_runtime_overrides_the_models_booking():
    p = placement(RuntimeConfig(base_quantization="int8"), QLORA, cuda=True, bf16=True, bnb=True)
    assert p.quantization == "int8"


def test_cuda_asked_where_no_gpu_is_visible_is_a_config_error():
    with pytest.raises(ConfigError, match="runtime.device: cuda, but this worker sees no GPU"):
        placement(RuntimeConfig(device="cuda"), ModelConfig(), cuda=False, bf16=False, bnb=False)


FLASH, EIGHT_BIT = TrainingConfig(attention="flash"), TrainingConfig(optimizer="adamw8bit")


@pytest.mark.parametrize("training, cuda, bnb, flash, expected, why", [
    (TrainingConfig(), False, False, False, ("sdpa", "adamw"), None),  # the defaults
    (TrainingConfig(attention="eager", optimizer="sgd"), False, False, False, ("eager", "sgd"), None),
    (FLASH, True, False, True, ("flash", "adamw"), None),  # a GPU with flash_attn, bfloat16 (auto)
    (FLASH, False, False, True, ("sdpa", "adamw"), "(no GPU): training with sdpa"),
    (FLASH, True, False, False, ("sdpa", "adamw"), "flash_attn is not installed"),
    (EIGHT_BIT, True, True, False, ("sdpa", "adamw8bit"), None),
    (EIGHT_BIT, False, True, False, ("sdpa", "adamw"), "(no GPU): training with torch's AdamW"),
    (EIGHT_BIT, True, False, False, ("sdpa", "adamw"), "bitsandbytes is not installed"),
])
def test_attention_and_optimizer_follow_the_hardware_and_are_recorded(training, cuda, bnb, flash, expected, why):
    p = placement(RuntimeConfig(), ModelConfig(), cuda, bf16=True, bnb=bnb, training=training, flash=flash)
    assert (p.attention, p.optimizer) == expected
    assert (p.facts()["train_attention"], p.facts()["train_optimizer"]) == expected
    assert (len(p.notes) == 1 and why in p.notes[0]) if why else not p.notes
    assert load_kwargs(p)["attn_implementation"] == {"flash": "flash_attention_2"}.get(expected[0], expected[0])


def test_flash_attention_needs_a_16_bit_dtype():
    p = placement(RuntimeConfig(train_dtype="float32"), ModelConfig(), cuda=True, bf16=True, bnb=False,
                  training=FLASH, flash=True)
    assert p.attention == "sdpa" and "16-bit only, the train dtype is float32" in p.notes[0]


@pytest.mark.parametrize("dtype, asked, master", [("bfloat16", True, True), ("float16", True, True),
                                                  ("float32", True, False), ("bfloat16", False, False)])
def test_master_weights_only_for_a_16_bit_model(dtype, asked, master):
    p = placement(RuntimeConfig(train_dtype=dtype), ModelConfig(), cuda=False, bf16=False, bnb=False,
                  training=TrainingConfig(master_weights=asked))
    assert p.master_weights == master and not p.notes
