"""Load a scenario: YAML file + `dotted.key=value` overrides -> validated, frozen `Scenario`.

Errors are `ConfigError`s naming the key path and what was expected; they are raised before anything starts.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from fedsim import catalog
from fedsim.errors import ConfigError
from fedsim.scenario.schema import ClusterSpec, Scenario
from fedsim.yamlfile import read_mapping

_ADAPTER = TypeAdapter(Scenario)
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Turn ["a.b=3", ...] (CLI) or {"a.b": 3} (API) into {"a.b": value}; CLI values are parsed as YAML."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected dotted.key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _apply(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section; cannot set a key below it")
        node = child
    node[parts[-1]] = value


def _explain(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return ConfigError(path, "unknown key")
    got = first.get("input")
    if not isinstance(got, dict):
        msg = f"{msg} (got {got!r})"
    return ConfigError(path, msg)


def _resolve_path(value: str, base: Path) -> Path | None:
    for candidate in (Path(value).expanduser(), base / value):
        if candidate.exists():
            return candidate.resolve()
    return None


def _check(s: Scenario, raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Cross-field and catalog checks; returns raw with relative paths made absolute."""
    cat = catalog.load(_abs(raw, "population.catalog", base, must_exist=True))
    for kind, names in (("devices", s.population.devices), ("networks", s.population.networks or {})):
        for name in names:
            if name not in cat[kind]:
                raise ConfigError(f"population.{kind}.{name}", f"not in the catalog (known: {', '.join(cat[kind])})")
        if names and not sum(names.values()) > 0:
            raise ConfigError(f"population.{kind}", "mixture weights must sum to more than 0")
    for zone in s.population.diurnal.timezones:
        try:
            ok = -12.0 <= float(zone) <= 14.0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"population.diurnal.timezones.{zone}", "expected a UTC offset in hours, -12 to 14")
    if not s.population.devices:
        raise ConfigError("population.devices", "expected at least one device class")
    n_sel = math.ceil(s.server.clients_per_round * s.server.over_selection)
    if n_sel > s.population.num_clients:
        raise ConfigError(
            "server.clients_per_round",
            f"{s.server.clients_per_round} x over_selection {s.server.over_selection} = {n_sel} "
            f"exceeds population.num_clients {s.population.num_clients}",
        )
    if s.data.samples_per_client.min > s.data.samples_per_client.max:
        raise ConfigError("data.samples_per_client.min", "must be <= data.samples_per_client.max")
    for key, name in (("model.name", s.model.name), ("model.cost_as", s.model.cost_as)):
        if name is not None and name not in catalog.model_configs():
            path = _resolve_path(name, base)
            if path is None:
                raise ConfigError(key, f"{name!r} is neither a catalog model ({', '.join(catalog.model_configs())}) "
                                       "nor an existing local model directory or config.json")
            _apply(raw, key, str(path))
    src = s.data.source
    if src != "synthetic" and (src.endswith(_DATA_SUFFIXES) or "/" in src and Path(src).suffix):
        _abs(raw, "data.source", base, must_exist=True)
    for key in ("device", "behavior"):
        if getattr(s.population.traces, key) is not None:
            _abs(raw, f"population.traces.{key}", base, must_exist=True)
    if s.runtime.cluster != "local":
        load_cluster(_abs(raw, "runtime.cluster", base, must_exist=True))
    return raw


def load_cluster(name: str) -> ClusterSpec:
    """'local' (the embedded default) or a cluster YAML path -> ClusterSpec (checked like a scenario)."""
    if name == "local":
        return ClusterSpec()
    try:
        return TypeAdapter(ClusterSpec).validate_python(read_mapping(name, "runtime.cluster", "cluster keys"))
    except ValidationError as exc:
        err = _explain(exc)
        raise ConfigError(f"runtime.cluster({name}).{err.path}", str(err).split(": ", 1)[-1]) from None


def _abs(raw: dict[str, Any], dotted: str, base: Path, must_exist: bool) -> str | None:
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return None
    path = _resolve_path(str(node), base)
    if path is None:
        if must_exist:
            raise ConfigError(dotted, f"file not found: {node}")
        return str(node)
    _apply(raw, dotted, str(path))
    return str(path)


def load(source: str | Path | dict[str, Any], overrides: list[str] | dict[str, Any] | None = None) -> Scenario:
    """Read a scenario (a YAML path or an already-parsed dict), apply overrides, validate everything."""
    if isinstance(source, dict):
        raw, base = copy.deepcopy(source), Path.cwd()  # overrides must never write into the caller's dict
    else:
        raw = read_mapping(source, "scenario", "sections (model, peft, data, ...)")
        base = Path(source).resolve().parent
    for key, value in parse_overrides(overrides).items():
        _apply(raw, key, value)
    try:
        scenario = _ADAPTER.validate_python(raw)
    except ValidationError as err:
        raise _explain(err) from None
    raw = _check(scenario, dump(scenario), base)
    return _ADAPTER.validate_python(raw)


def dump(scenario: Scenario) -> dict[str, Any]:
    """The fully resolved scenario as plain data (what `config.yaml` holds)."""
    return _ADAPTER.dump_python(scenario, mode="json", by_alias=True)
