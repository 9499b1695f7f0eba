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
from fedsim.errors import ConfigError
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


def hf_config(config: dict[str, Any]):
    """A config dict (`hf_config_dict`) as the transformers config object of its model type."""
    from transformers import AutoConfig

    cfg = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    return AutoConfig.for_model(config["model_type"], **cfg)


PROMPT_METHODS = ("prompt_tuning", "prefix_tuning", "p_tuning")  # virtual tokens, no module targets


def peft_config(peft_cfg: PeftConfig):
    """The peft config a scenario's `peft` section stands for (LoraConfig, PromptTuningConfig, ...)."""
    import peft

    m = peft_cfg.method
    if m in PROMPT_METHODS:
        cls = {"prompt_tuning": peft.PromptTuningConfig, "prefix_tuning": peft.PrefixTuningConfig,
               "p_tuning": peft.PromptEncoderConfig}[m]
        extra = {"encoder_hidden_size": peft_cfg.encoder_hidden_size} if m == "p_tuning" else {}
        return cls(num_virtual_tokens=peft_cfg.num_virtual_tokens, task_type="CAUSAL_LM", **extra)
    targets = None if peft_cfg.target_modules is None else list(peft_cfg.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    if m == "ia3":
        ff = None if peft_cfg.feedforward_modules is None else list(peft_cfg.feedforward_modules)
        return peft.IA3Config(target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM")
    return peft.LoraConfig(r=peft_cfg.r, lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout,
                           target_modules=targets, task_type="CAUSAL_LM")


lora_config = peft_config  # the name callers used when LoRA was the only method


def _count(config: dict[str, Any], peft_cfg: PeftConfig, name: str = "the model") -> ModelShape:
    from fedsim.logs import quiet_libraries

    quiet_libraries()
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    hf = hf_config(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    n_params = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    n_matmul = sum(m.weight.numel() for m in linears)
    n_quant = sum(m.weight.numel() for m in linears if m is not head)
    n_embed = model.get_input_embeddings().weight.numel()
    first = _first_layer_linears(model)
    check_target_modules(model, peft_cfg, name)
    try:
        peft_model = get_peft_model(model, peft_config(peft_cfg))
    except ValueError as exc:  # peft's NoMatchingPeftModuleError is one; so is "module type not supported"
        raise _peft_error(exc, model, peft_cfg, name) from None
    if peft_cfg.federation in ("hetlora", "flexlora", "flora") and any(
            "lora_embedding_" in n for n, _ in peft_model.named_parameters()):
        raise ConfigError("peft.target_modules", f"{peft_cfg.federation} aggregates the (A, B) pairs of linear "
                                                 "layers; a LoRA embedding adapter is not simulated")
    frozen = freeze_for_federation(peft_model, peft_cfg)
    skip, attn_frozen = _frozen_first_layer(first, peft_model)
    adapted, last_frozen = _adapted(first, peft_model, int(hf.num_hidden_layers))
    n_trainable, _ = peft_model.get_nb_trainable_parameters()
    tensors = tuple(int(p.numel()) for _, p in sorted(peft_model.named_parameters()) if p.requires_grad)
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
        trainable_tensors=tensors,
        n_no_input_grad=skip,
        first_attention_frozen=attn_frozen,
        num_kv_heads=int(getattr(hf, "num_key_value_heads", None) or heads),
        intermediate_size=int(getattr(hf, "intermediate_size", None) or 0),
        adapted=adapted,
        quant_rows=int(sum(m.out_features for m in linears if m is not head)),
        n_last_frozen=last_frozen,
        rank=peft_cfg.r if peft_cfg.method == "lora" else 0,
        lora_dropout=peft_cfg.method == "lora" and peft_cfg.dropout > 0,
        scaled_inputs=_scaled_inputs(peft_model, adapted),
        peft_method=peft_cfg.method,
        virtual_tokens=peft_cfg.num_virtual_tokens if peft_cfg.method in PROMPT_METHODS else 0,
        n_adapter_frozen=frozen,
        shared_tensors=tuple(int(p.numel()) for n, p in sorted(peft_model.named_parameters())
                             if p.requires_grad and is_shared(n, peft_cfg)) if peft_cfg.federation == "fedsa" else None,
    )


def is_shared(name: str, peft_cfg: PeftConfig) -> bool:
    """Whether trained parameter `name` goes to the server (FedSA-LoRA keeps every lora_B on the client)."""
    return not (peft_cfg.method == "lora" and peft_cfg.federation == "fedsa" and ".lora_B." in name)


def freeze_for_federation(peft_model, peft_cfg: PeftConfig) -> int:
    """Freeze what the LoRA federation variant does not train (FFA-LoRA: every lora_A, Sun et al. 2024); returns
    how many adapter parameters were frozen. The same call shapes the meta model and the trained one."""
    if peft_cfg.method != "lora" or peft_cfg.federation != "ffa":
        return 0
    frozen = 0
    for name, param in peft_model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def _linear_names(model, limit: int = 16) -> str:
    """The distinct short names of the model's linear layers, in model order (what target_modules can name)."""
    import torch

    names = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                               if isinstance(m, torch.nn.Linear)))
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_target_modules(model, peft_cfg: PeftConfig, name: str) -> None:
    """Every `peft.target_modules` name must match a module of `model` (peft silently skips an unknown name
    when another one matches, and fails with a long traceback when none does).

    A name matches a module whose full name equals it or ends with "." + name, as peft matches a list.
    """
    if peft_cfg.target_modules is None or peft_cfg.method in PROMPT_METHODS:
        return  # peft's own defaults, or no module targets at all
    targets = list(peft_cfg.target_modules)
    if targets == ["all-linear"]:
        return
    modules = [n for n, _ in model.named_modules() if n]
    unmatched = [t for t in targets if not any(m == t or m.endswith("." + t) for m in modules)]
    if unmatched:
        verb = "matches" if len(unmatched) == 1 else "match"
        raise ConfigError("peft.target_modules", f"{', '.join(unmatched)} {verb} no module of {name}; "
                                                 f"modules: {_linear_names(model)}")


def _peft_error(exc: ValueError, model, peft_cfg: PeftConfig, name: str) -> ConfigError:
    """peft's refusal of the target modules as one line; names the module type when peft cannot adapt it."""
    import torch

    known = (torch.nn.Linear, torch.nn.Embedding)
    odd = [(t, type(m).__name__) for t in (peft_cfg.target_modules or ()) for n, m in model.named_modules()
           if (n == t or n.endswith("." + t)) and not isinstance(m, known)]
    if odd and "not supported" in str(exc):
        reason = f"{odd[0][0]} is a {odd[0][1]}, a module type LoRA cannot adapt"
    else:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    if peft_cfg.method != "lora" and not peft_cfg.target_modules:
        return ConfigError("peft.method", f"peft cannot apply {peft_cfg.method} to {name}: {reason}")
    return ConfigError("peft.target_modules", f"peft cannot adapt {', '.join(peft_cfg.target_modules)} of {name}: "
                                              f"{reason}; modules: {_linear_names(model)}")


_ATTN_IN, _ATTN_OUT, _MLP_IN, _MLP_OUT = ("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)


def _first_layer_linears(model) -> dict[str, int]:
    """Short name -> weight size of the first decoder layer's linears (Llama-style naming), before PEFT."""
    import torch

    for name, module in model.named_modules():
        if name.endswith("layers.0"):
            return {n.split(".")[-1]: m.weight.numel() for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    return {}


def _adapted(first: dict[str, int], peft_model, num_layers: int) -> tuple[tuple[str, ...], int]:
    """(the first layer's modules whose adapter keeps its input for backward -- a trained LoRA A, an IA3
    vector --, the parameters of every layer's last linear when nothing adapts it: checkpointing's recompute
    stops before it, as nothing of it is kept)."""
    adapted, touched = set(), set()
    for name, param in peft_model.named_parameters():
        if ".layers.0." not in name:
            continue
        parts = name.split(".")
        owners = [parts[i - 1] for i, part in enumerate(parts) if part.startswith(("lora_", "ia3_"))]
        touched.update(owners)
        if param.requires_grad and not any(p == "lora_B" for p in parts):
            adapted.update(owners)
    last = list(first)[-1] if first else None
    return tuple(sorted(adapted)), (first[last] * num_layers if last and last not in touched else 0)


def _scaled_inputs(peft_model, adapted: tuple[str, ...]) -> tuple[str, ...]:
    """IA3's feed-forward modules among the adapted ones: it scales their input (the others' output)."""
    ff = getattr(peft_model.peft_config["default"], "feedforward_modules", None) or ()
    ff = [ff] if isinstance(ff, str) else list(ff)
    return tuple(m for m in adapted if any(m == f or m.endswith(f) for f in ff))


def _frozen_first_layer(first: dict[str, int], peft_model) -> tuple[int, bool]:
    """Which first-layer linears get no input gradient under PEFT (their input depends on nothing trainable)."""
    known = set(_ATTN_IN + _ATTN_OUT + _MLP_IN + _MLP_OUT)
    if not first or not set(first) <= known:
        return 0, False  # unknown block layout: assume every input gradient is computed
    if peft_model.peft_config["default"].is_prompt_learning:
        return 0, False  # virtual tokens (or prefixes) reach the first layer: every input gradient is needed
    adapted = set()
    for name, param in peft_model.named_parameters():
        parts = name.split(".")
        if param.requires_grad and ".layers.0." in name:
            adapted.update(parts[i - 1] for i, part in enumerate(parts) if part.startswith(("lora_", "ia3_")))
    # IA3 on a feed-forward module scales its *input*: the gradient of that vector needs the input gradient
    ff = peft_model.peft_config["default"].feedforward_modules if hasattr(peft_model.peft_config["default"],
                                                                          "feedforward_modules") else None
    scaled_input = {m for m in adapted if ff and any(m == f or m.endswith(f) for f in ff)}
    skip, grad = 0, False
    for group in (_ATTN_IN, _ATTN_OUT, _MLP_IN, _MLP_OUT):
        present = [m for m in group if m in first]
        if group is _ATTN_IN or not grad:
            skip += sum(first[m] for m in present if m not in scaled_input)
        grad = grad or any(m in adapted for m in present)
        if group is _ATTN_IN:
            attn_frozen = not grad
    return skip, attn_frozen


def model_shape(name: str, peft_cfg: PeftConfig) -> ModelShape:
    """Shape of model `name` with the scenario's PEFT method, from the disk cache or counted on meta.

    A `peft.target_modules` that names no module of the model is a ConfigError on that key (never cached).
    """
    config = hf_config_dict(name)
    key = digest({"config": config, "peft": dataclasses.asdict(peft_cfg), "v": 10})
    path = cache_dir("shapes") / f"{key}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        shared = data.get("shared_tensors")
        return ModelShape(**{**data, "trainable_tensors": tuple(data["trainable_tensors"]),
                             "shared_tensors": None if shared is None else tuple(shared)})
    shape = _count(config, peft_cfg, name)
    path.write_text(json.dumps(dataclasses.asdict(shape)))
    return shape
