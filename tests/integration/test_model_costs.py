"""Model shapes on the meta device and the FLOP model against torch's FlopCounterMode on real small models."""

import pytest
import torch
from peft import get_peft_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from fedsim import catalog
from fedsim.costs.compute import step_flops
from fedsim.models.shapes import _count, freeze_for_federation, lora_config, model_shape
from fedsim.scenario.schema import PeftConfig

# Published parameter counts (model cards / HF safetensors metadata).
PUBLISHED = {
    "llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192,
    "llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496, "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824, "mistral-7b": 7_241_732_096, "tinyllama-1.1b": 1_100_048_384,
    "qwen2.5-0.5b": 494_032_768,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_catalog_shapes_match_published_counts(name):
    shape = model_shape(name, PeftConfig(r=16, target_modules=("all-linear",)))
    assert shape.n_params == PUBLISHED[name]


@pytest.mark.parametrize("name, targets", [("llama-2-7b", ("q_proj", "v_proj")), ("qwen2.5-0.5b", ("all-linear",)),
                                           ("mistral-7b", ("q_proj", "k_proj", "v_proj", "o_proj"))])
def test_trainable_counts_equal_what_peft_reports(name, targets):
    cfg = PeftConfig(r=16, target_modules=targets)
    d = dict(catalog.model_configs()[name])
    model_type = d.pop("model_type")
    d.pop("architectures")
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **d)), lora_config(cfg))
    assert model_shape(name, cfg).n_trainable == model.get_nb_trainable_parameters()[0]


CASES = [  # (architecture, batch, seq, LoRA targets, gradient checkpointing)
    (dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
     4, 32, ("q_proj", "v_proj"), False),
    (dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2),
     2, 128, ("all-linear",), False),
    (dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=6),
     8, 64, ("q_proj", "k_proj", "v_proj", "o_proj"), True),
    (dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8),
     1, 256, ("down_proj",), False),
]


@pytest.mark.parametrize("arch, batch, seq, targets, ckpt", CASES)
def test_flop_model_within_10_percent_of_flop_counter(arch, batch, seq, targets, ckpt):
    config = dict(model_type="llama", vocab_size=512, tie_word_embeddings=False, **arch)
    peft_cfg = PeftConfig(r=8, target_modules=targets)
    shape = _count(config, peft_cfg)
    d = dict(config)
    hf = AutoConfig.for_model(d.pop("model_type"), **d)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf, attn_implementation="eager")  # attention as countable matmuls
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config(peft_cfg))
    model.train()
    x = torch.randint(0, 512, (batch, seq))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=x, labels=x).loss.backward()
    measured = counter.get_total_flops()
    predicted = step_flops(shape, batch, seq, peft=True, checkpointing=ckpt)
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)
    # full fine-tuning of the same model
    for p in model.parameters():
        p.requires_grad_(True)
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=x, labels=x).loss.backward()
    full = step_flops(shape, batch, seq, peft=False, checkpointing=ckpt)
    assert abs(full / counter.get_total_flops() - 1) < 0.10


METHODS = [  # (peft section, what it changes in the computation)
    PeftConfig(method="prompt_tuning", num_virtual_tokens=16, target_modules=None),  # 16 more tokens everywhere
    PeftConfig(method="prefix_tuning", num_virtual_tokens=16, target_modules=None),  # 16 more keys per layer
    PeftConfig(method="p_tuning", num_virtual_tokens=16, encoder_hidden_size=64, target_modules=None),  # + encoder
    PeftConfig(method="ia3", target_modules=None),  # scaling vectors on k, v, down (peft's Llama default)
    PeftConfig(method="ia3", target_modules=("q_proj", "v_proj", "up_proj"), feedforward_modules=("up_proj",)),
    PeftConfig(method="lora", federation="ffa", target_modules=("q_proj", "v_proj", "down_proj")),  # A frozen
    PeftConfig(method="ia3", target_modules=("down_proj",), feedforward_modules=("down_proj",)),  # scales an input
]


@pytest.mark.parametrize("peft_cfg", METHODS, ids=lambda c: f"{c.method}-{c.target_modules}")
def test_every_peft_family_costs_what_its_real_peft_model_computes(peft_cfg):
    """Trainable counts equal peft's; FLOPs within 10% of FlopCounterMode on the real peft model (virtual tokens
    lengthen the sequence, a prefix the keys; IA3 vectors add almost nothing)."""
    arch = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=8)
    config = dict(model_type="llama", vocab_size=512, tie_word_embeddings=False, **arch)
    batch, seq = 4, 64
    shape = _count(config, peft_cfg)
    d = dict(config)
    hf = AutoConfig.for_model(d.pop("model_type"), **d)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(hf, attn_implementation="eager"), lora_config(peft_cfg))
    freeze_for_federation(model, peft_cfg)  # what the worker does (FFA-LoRA freezes A)
    assert shape.n_trainable == model.get_nb_trainable_parameters()[0]
    assert shape.peft_method == peft_cfg.method
    model.train()
    x = torch.randint(0, 512, (batch, seq))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=x, labels=x).loss.backward()
    predicted = step_flops(shape, batch, seq, peft=True)
    assert abs(predicted / counter.get_total_flops() - 1) < 0.10, (predicted, counter.get_total_flops())
    lora = _count(config, PeftConfig(r=8, target_modules=("q_proj", "v_proj")))
    if peft_cfg.method in ("prompt_tuning", "p_tuning"):  # 16 of 64 tokens more: ~25% more work than LoRA
        assert predicted > 1.2 * step_flops(lora, batch, seq)
    if peft_cfg.federation == "ffa":  # only B trains: r x (out) per module, A (in x r) frozen but multiplied
        standard = _count(config, PeftConfig(r=8, target_modules=peft_cfg.target_modules))
        assert shape.n_trainable + shape.n_adapter_frozen == standard.n_trainable
        # 4 layers x r 8 x (B: out 128 + 128 + 128; A: in 128 + 128 + 344)
        assert shape.n_trainable == 4 * 8 * (128 + 128 + 128) and shape.n_adapter_frozen == 4 * 8 * (128 + 128 + 344)
