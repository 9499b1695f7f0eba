"""The catalog: default devices, networks, energy figures (defaults.yaml) and model configs (models.json).

Both are data files with a source next to every number; a scenario may merge its own YAML over defaults.yaml.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import yaml

from fedsim.yamlfile import read_mapping

HERE = Path(__file__).parent


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return yaml.safe_load((HERE / "defaults.yaml").read_text())


@functools.lru_cache(maxsize=1)
def model_configs() -> dict[str, dict[str, Any]]:
    """Catalog model name -> Hugging Face config dict (architecture facts, no weights)."""
    data = json.loads((HERE / "models.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(override: str | None = None) -> dict[str, Any]:
    """Default catalog, with the user's YAML file (if any) merged over it key by key."""
    cat = _defaults()
    if override is None:
        return copy.deepcopy(cat)
    extra = read_mapping(override, "population.catalog", "devices / networks / energy")
    return _merge(cat, extra)
