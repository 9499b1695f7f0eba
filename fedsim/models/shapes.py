"""Exact parameter counts of a (PEFT-wrapped) causal LM without weights.

The model is instantiated from its Hugging Face config on the `meta` device (no memory, exact shapes) and the
PEFT method is applied there with `peft`; counts are cached on disk by config hash so estimate-style paths
need neither torch nor transformers once a config was seen.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fedsim import catalog
from fedsim.costs.compute import ModelShape
from fedsim.paths import cache_dir, digest
from fedsim.scenario.schema import PeftConfig


def hf_config_dict(name: str) -> dict[str, Any]:
    """Catalog name, model directory or config.json path -> config dict."""
    models = catalog.model_configs()
    if name in models:
        return dict(models[name])
    path = Path(name)
    path = path / "config.json" if path.is_dir() else path
    return json.loads(path.read_text())


def lora_config(peft_cfg: PeftConfig):
    """The peft LoraConfig a scenario's `peft` section stands for."""
    from peft import LoraConfig

    targets = list(peft_cfg.target_modules)
    return LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.alpha,
        lora_dropout=peft_cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def _count(config: dict[str, Any], peft_cfg: PeftConfig) -> ModelShape:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    cfg.pop("architectures", None)
    hf = AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    n_params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    n_matmul = sum(m.weight.numel() for m in linears)
    n_quant = sum(m.weight.numel() for m in linears if m is not head)
    n_embed = model.get_input_embeddings().weight.numel()
    peft_model = get_peft_model(model, lora_config(peft_cfg))
    n_trainable, _ = peft_model.get_nb_trainable_parameters()
    heads = hf.num_attention_heads
    return ModelShape(
        n_params=int(n_params),
        n_matmul=int(n_matmul),
        n_embedding=int(n_embed),
        n_quantizable=int(n_quant),
        n_trainable=int(n_trainable),
        num_layers=int(hf.num_hidden_layers),
        hidden_size=int(hf.hidden_size),
        num_heads=int(heads),
        head_dim=int(getattr(hf, "head_dim", None) or hf.hidden_size // heads),
        vocab_size=int(hf.vocab_size),
    )


def model_shape(name: str, peft_cfg: PeftConfig) -> ModelShape:
    """Shape of model `name` with the scenario's PEFT method, from the disk cache or counted on meta."""
    config = hf_config_dict(name)
    key = digest({"config": config, "peft": dataclasses.asdict(peft_cfg), "v": 1})
    path = cache_dir("shapes") / f"{key}.json"
    if path.is_file():
        return ModelShape(**json.loads(path.read_text()))
    shape = _count(config, peft_cfg)
    path.write_text(json.dumps(dataclasses.asdict(shape)))
    return shape
