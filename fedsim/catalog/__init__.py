"""The catalog: default devices, networks, energy figures (defaults.yaml) and model configs (models.json).

Both are data files with a source next to every number; a scenario may merge its own YAML over defaults.yaml.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import yaml

from fedsim.errors import ConfigError
from fedsim.yamlfile import read_mapping

HERE = Path(__file__).parent
KEY = "population.catalog"

# The numeric fields the code reads from each entry (fedsim.population, fedsim.costs.profile, fedsim.cost), with
# the smallest value that makes sense: "pos" must be > 0 (divided by, or a speed), "nonneg" >= 0.
DEVICE_FIELDS = {"peak_flops": "pos", "memory_gb": "nonneg", "power_busy_w": "nonneg", "power_idle_w": "nonneg",
                 "efficiency": "pos"}
NETWORK_FIELDS = {"down_mbps": "pos", "up_mbps": "pos", "latency_s": "nonneg", "alpha_up_mw_per_mbps": "nonneg",
                  "alpha_down_mw_per_mbps": "nonneg", "beta_mw": "nonneg"}
SECAGG_FIELDS = {"key_bytes": "pos", "share_bytes": "pos", "client_prg_values_per_s": "pos",
                 "server_prg_values_per_s": "pos"}
ENERGY_FIELDS = {"grid_gco2_per_kwh": "nonneg", "server_power_w": "nonneg"}
_TEXT_FIELDS = {"source", "grid_source", "server_source"}
_SECTIONS = ("devices", "networks", "energy", "runtime_overhead_bytes", "secagg")


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
    """Default catalog, with the user's YAML file (if any) merged over it key by key, then validated.

    A user's entry that lacks a field the cost models read, or holds a non-number, fails here as one
    `population.catalog: <entry>: <what>` error instead of a KeyError deep inside a run.
    """
    cat = _defaults()
    if override is None:
        return validate(copy.deepcopy(cat))
    extra = read_mapping(override, KEY, "devices / networks / energy")
    return validate(_merge(cat, extra))


def validate(cat: dict[str, Any]) -> dict[str, Any]:
    """Check a (merged) catalog in place and return it: every section, entry and field the code reads.

    Numbers written as YAML 1.1 reads them as strings (`1e12` without a dot) are converted to floats.
    """
    for section in _SECTIONS:
        if section not in cat:
            raise ConfigError(KEY, f"missing section {section}")
    unknown = sorted(set(cat) - set(_SECTIONS))
    if unknown:
        raise ConfigError(KEY, f"unknown section {unknown[0]} (known: {', '.join(_SECTIONS)})")
    networks = _mapping(cat, "networks", "networks")
    for name in networks:
        _check_fields(networks, name, f"networks.{name}", NETWORK_FIELDS)
    devices = _mapping(cat, "devices", "devices")
    for name in devices:
        _check_fields(devices, name, f"devices.{name}", DEVICE_FIELDS, extra=("networks",))
        _check_device_networks(devices[name], f"devices.{name}", networks)
    if not devices or not networks:
        raise ConfigError(KEY, "needs at least one device class and one network class")
    _check_fields(cat, "energy", "energy", ENERGY_FIELDS)
    _check_fields(cat, "secagg", "secagg", SECAGG_FIELDS)
    cat["runtime_overhead_bytes"] = _number(cat["runtime_overhead_bytes"], "runtime_overhead_bytes", "nonneg")
    return cat


def _mapping(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    """parent[key], which must be a mapping."""
    value = parent[key]
    if not isinstance(value, dict):
        raise ConfigError(KEY, f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_fields(parent: dict[str, Any], name: str, where: str, fields: dict[str, str],
                  extra: tuple[str, ...] = ()) -> None:
    """Entry parent[name] has every numeric field of `fields` (normalised to float) and no unknown field."""
    entry = _mapping(parent, name, where)
    for field in (*fields, *extra):
        if field not in entry:
            raise ConfigError(KEY, f"{where}: missing {field}")
    for field, kind in fields.items():
        entry[field] = _number(entry[field], f"{where}.{field}", kind)
    unknown = sorted(set(entry) - set(fields) - set(extra) - _TEXT_FIELDS)
    if unknown:
        raise ConfigError(KEY, f"{where}: unknown field {unknown[0]} (known: {', '.join([*fields, *extra])})")


def _check_device_networks(device: dict[str, Any], where: str, networks: dict[str, Any]) -> None:
    """A device's own network mixture: known network classes with non-negative weights summing to > 0."""
    mix = _mapping(device, "networks", f"{where}.networks")
    for net, weight in mix.items():
        if net not in networks:
            raise ConfigError(KEY, f"{where}.networks.{net}: not a network class (known: {', '.join(networks)})")
        mix[net] = _number(weight, f"{where}.networks.{net}", "nonneg")
    if not sum(mix.values()) > 0:
        raise ConfigError(KEY, f"{where}.networks: mixture weights must sum to more than 0")


def _number(value: Any, where: str, kind: str) -> float:
    """value as a finite float, > 0 ("pos") or >= 0 ("nonneg"); a ConfigError naming `where` otherwise."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(KEY, f"{where}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(KEY, f"{where}: expected a finite number, got {value!r}")
    if value < 0 or (kind == "pos" and value == 0):
        raise ConfigError(KEY, f"{where}: must be {'> 0' if kind == 'pos' else '>= 0'}, got {value!r}")
    return float(value)
