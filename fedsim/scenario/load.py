"""Load a scenario: YAML file + `dotted.key=value` overrides -> validated, frozen `Scenario`.

Errors are `ConfigError`s naming the key path and what was expected; they are raised before anything starts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import TypeAdapter, ValidationError

from fedsim import catalog, traces
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
    n_sel = s.server.selected_per_round
    if n_sel > s.population.num_clients:
        raise ConfigError(
            "server.clients_per_round",
            f"{s.server.clients_per_round} x over_selection {s.server.over_selection} = {n_sel} "
            f"exceeds population.num_clients {s.population.num_clients}",
        )
    if s.peft.method == "lora" and not s.peft.target_modules:
        raise ConfigError("peft.target_modules", "expected at least one module name (or [all-linear])")
    if s.peft.method == "ia3" and s.peft.target_modules is not None and not s.peft.target_modules:
        raise ConfigError("peft.target_modules", "expected at least one module name, or null for peft's default")
    _check_robust_rule(s)
    _check_strategy(s)
    if s.data.samples_per_client.min > s.data.samples_per_client.max:
        raise ConfigError("data.samples_per_client.min", "must be <= data.samples_per_client.max")
    for key, name in (("model.name", s.model.name), ("model.cost_as", s.model.cost_as)):
        if name is not None and name not in catalog.model_configs():
            path = _resolve_path(name, base)
            if path is None:
                raise ConfigError(key, f"{name!r} is neither a catalog model ({', '.join(catalog.model_configs())}) "
                                       "nor an existing local model directory or config.json")
            check_model_path(key, path, need_tokenizer=key == "model.name")
            _apply(raw, key, str(path))
    src = s.data.source
    if src != "synthetic" and (src.endswith(_DATA_SUFFIXES) or "/" in src and Path(src).suffix):
        _abs(raw, "data.source", base, must_exist=True)
    tr = s.population.traces
    device, behavior = (_abs(raw, f"population.traces.{key}", base, must_exist=True) if getattr(tr, key) else None
                        for key in ("device", "behavior"))
    traces.check(device, behavior, tr.reference_forward_flops)
    if s.runtime.cluster != "local":
        load_cluster(_abs(raw, "runtime.cluster", base, must_exist=True))
    return raw


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_path(key: str, path: Path, need_tokenizer: bool) -> None:
    """A local model directory (or config.json) must hold what fedsim reads from it, checked before anything runs.

    A directory needs config.json (architecture, for the shape and cost models) and, for the trained model
    (`model.name`), tokenizer files; a config.json must be a JSON object naming its `model_type`.
    """
    config = path / "config.json" if path.is_dir() else path
    if path.is_dir():
        missing = [] if config.is_file() else ["config.json"]
        if need_tokenizer and not any((path / f).is_file() for f in _TOKENIZER_FILES):
            missing.append(" or ".join(_TOKENIZER_FILES))
        if missing:
            raise ConfigError(key, f"local model directory {path} has no {' and no '.join(missing)}")
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(key, f"{config} is not a readable JSON model config ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ConfigError(key, f"{config} is not a Hugging Face model config (no model_type)")


# Share of the memory available now that the population's arrays may take (the rest: Python, numpy temporaries
# while sampling, torch and the data pipeline).
MEMORY_SHARE = 0.8
_PROBE_CLIENTS = 1024


def population_bytes_per_client(s: Scenario, cat: dict[str, Any]) -> float:
    """Bytes per client of the arrays a run keeps for the whole population, measured on a small sample.

    That is every per-client array of `fedsim.population.Population` (their real dtypes; behaviour-trace
    windows included) plus the per-client data sizes (`fedsim.data.partition.client_sizes`).
    """
    from fedsim.data.partition import client_sizes
    from fedsim.population import sample

    n = min(s.population.num_clients, _PROBE_CLIENTS)
    pop = sample(dataclasses.replace(s.population, num_clients=n), cat, s.seed)
    arrays = [getattr(pop, f.name) for f in dataclasses.fields(pop)]
    if pop.windows is not None:
        arrays += [getattr(pop.windows, f.name) for f in dataclasses.fields(pop.windows)]
    total = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
    return (total + client_sizes(s.data, n, s.seed).nbytes) / n


def check_population_memory(s: Scenario, cat: dict[str, Any]) -> None:
    """Refuse a population whose arrays cannot fit in this machine's available memory (before allocating them)."""
    import psutil

    n = s.population.num_clients
    per_client = population_bytes_per_client(s, cat)
    need, available = n * per_client, psutil.virtual_memory().available
    if need > MEMORY_SHARE * available:
        raise ConfigError("population.num_clients",
                          f"{n} clients need ~{_si_bytes(need)} for the population arrays "
                          f"(~{per_client:.0f} B per client); this machine has {_si_bytes(available)} available")


def _si_bytes(n: float) -> str:
    """9.3e12 -> '9.3 TB', 2.1e10 -> '21 GB' (decimal units, at least two significant digits)."""
    units, i = ("B", "kB", "MB", "GB", "TB", "PB", "EB"), 0
    while n >= 999.5 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.1f} {units[i]}" if i and n < 9.95 else f"{n:.0f} {units[i]}"


def _check_robust_rule(s: Scenario) -> None:
    """A robust rule must be able to act on a full round: Krum needs n >= 2f + 3 updates (Blanchard et al.
    2017), a trimmed mean must trim at least one update from each side."""
    sv = s.server
    n, what = (sv.async_.buffer_size, "server.async.buffer_size") if sv.schedule == "async" else \
        (sv.clients_per_round, "server.clients_per_round")
    if sv.aggregation == "krum" and n < 2 * sv.krum_byzantine + 3:
        raise ConfigError("server.krum_byzantine", f"Krum with f = {sv.krum_byzantine} needs rounds of at least "
                                                   f"{2 * sv.krum_byzantine + 3} updates; {what} is {n}")
    if sv.aggregation == "trimmed_mean" and sv.trim_fraction > 0 and math.floor(sv.trim_fraction * n) == 0:
        raise ConfigError("server.trim_fraction", f"{sv.trim_fraction} of {n} updates ({what}) trims none; "
                                                  f"use at least {1 / n:.3g}")


def _check_strategy(s: Scenario) -> None:
    """Combinations a strategy's paper does not define are refused with the reason, not silently run."""
    sv, dp, sa = s.server, s.privacy.dp, s.privacy.secagg
    mu = s.training.proximal_mu
    if sv.strategy == "fedprox" and mu == 0:
        raise ConfigError("training.proximal_mu", "server.strategy fedprox needs a proximal mu > 0 (Li et al. 2020)")
    if sv.strategy != "fedprox" and mu > 0:
        raise ConfigError("training.proximal_mu", f"a proximal term is FedProx: set server.strategy: fedprox "
                                                  f"(it is {sv.strategy})")
    if sv.strategy == "scaffold" and sv.aggregation != "mean":
        raise ConfigError("server.aggregation", "SCAFFOLD's control variates are defined for the mean only")
    for on, key, what in ((dp.enabled, "privacy.dp.enabled", "DP's accountant assumes Poisson-sampled rounds"),
                          (sa.enabled, "privacy.secagg.enabled", "secure aggregation masks a round's cohort")):
        if on and sv.schedule == "async":
            raise ConfigError(key, f"{what}; it is not simulated with server.schedule async (FedBuff)")
        if on and sv.aggregation != "mean":
            raise ConfigError(key, f"needs server.aggregation mean (it is {sv.aggregation}): a robust rule "
                                   "needs the individual updates")
    if dp.enabled and sv.strategy == "scaffold":
        raise ConfigError("privacy.dp.enabled", "SCAFFOLD's control variates would leave the clients unclipped and "
                                                "unnoised: the reported epsilon would not hold")
    if dp.enabled and sv.selection == "oort":
        raise ConfigError("privacy.dp.enabled", "Oort selects clients by their losses: the accountant's random "
                                                "sampling does not hold (use server.selection uniform or eligible)")
    if dp.enabled and sv.clip_norm is not None:
        raise ConfigError("server.clip_norm", "DP clips with privacy.dp.clip_norm; a second, server-side clip "
                                              "would shrink client-added noise")
    if dp.enabled and sv.weighting != "uniform":
        raise ConfigError("server.weighting", "DP-FedAvg bounds each client's influence: use server.weighting "
                                              "uniform with privacy.dp (McMahan et al. 2018)")
    if sa.enabled and sv.schedule == "sync":
        from fedsim.strategies.base import secagg_threshold

        cohort = sv.selected_per_round
        if secagg_threshold(sa.threshold, cohort) > sv.clients_per_round:
            raise ConfigError("privacy.secagg.threshold", f"{sa.threshold} of a cohort of {cohort} needs more "
                                                          f"survivors than the {sv.clients_per_round} a round keeps: "
                                                          f"every round would abort")
    if s.peft.method == "prefix_tuning" and s.training.gradient_checkpointing:
        raise ConfigError("training.gradient_checkpointing", "peft's prefix tuning does not work with gradient "
                                                             "checkpointing")
    fed = s.peft.federation
    if fed != "standard" and s.peft.method != "lora":
        raise ConfigError("peft.federation", f"{fed} federates LoRA's A and B; peft.method is {s.peft.method}")
    if fed == "fedsa" and sv.strategy == "scaffold":
        raise ConfigError("peft.federation", "FedSA-LoRA's personal B and SCAFFOLD's control variates are not "
                                             "combined in either paper: not simulated")
    if sa.enabled and sv.strategy == "scaffold":
        raise ConfigError("privacy.secagg.enabled", "SCAFFOLD's control variates are not masked: not simulated")
    if sa.enabled and sv.clip_norm is not None:
        raise ConfigError("server.clip_norm", "the server cannot clip updates it only sees masked (secure "
                                              "aggregation); use privacy.dp.clip_norm, applied by the clients")
    from fedsim.costs import ranks
    from fedsim.models import deepspeed_step, loss
    from fedsim.strategies import fedkseed

    ranks.check(s)
    fedkseed.check(s)
    deepspeed_step.check(s)
    loss.check(s)
    if s.training.master_weights and sv.strategy == "fedkseed":
        raise ConfigError("training.master_weights", "does not apply to FedKSeed's zeroth-order steps: no optimizer "
                                                     "updates the weights")


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


_PEFT_KEYS = {  # the peft keys each method reads (the others must keep their defaults)
    "lora": {"r", "alpha", "dropout", "target_modules", "federation", "ranks", "rank_choices", "rank_pruning",
             "pruning_lambda"},
    "ia3": {"target_modules", "feedforward_modules"},
    "prompt_tuning": {"num_virtual_tokens"},
    "prefix_tuning": {"num_virtual_tokens"},
    "p_tuning": {"num_virtual_tokens", "encoder_hidden_size"},
}


def _check_peft_keys(s: Scenario, given: dict[str, Any]) -> None:
    """A peft key the chosen method does not read, set to something else than its default, is a mistake the
    user should hear about (e.g. `r: 16` under prompt tuning would otherwise be ignored silently)."""
    from fedsim.scenario.schema import PeftConfig

    default, used = PeftConfig(), _PEFT_KEYS[s.peft.method] | {"method"}
    for key in sorted(set(given) - used):
        if getattr(s.peft, key, None) != getattr(default, key, None) and not (
                key == "target_modules" and s.peft.target_modules is None):
            raise ConfigError(f"peft.{key}", f"is not used by peft.method {s.peft.method} (it reads "
                                             f"{', '.join(sorted(used - {'method'}))})")


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
    _check_peft_keys(scenario, raw.get("peft") if isinstance(raw.get("peft"), dict) else {})
    raw = _check(scenario, dump(scenario), base)
    scenario = _ADAPTER.validate_python(raw)
    check_population_memory(scenario, catalog.load(scenario.population.catalog))
    return scenario


def resolved(data: dict[str, Any]) -> Scenario:
    """A scenario from `dump()` of one that `load()` already checked (a worker actor, a resumed run's config):
    validated against the schema only, without the file, catalog and memory checks of the machine that
    loaded it."""
    try:
        return _ADAPTER.validate_python(copy.deepcopy(data))
    except ValidationError as err:
        raise _explain(err) from None


def dump(scenario: Scenario) -> dict[str, Any]:
    """The fully resolved scenario as plain data (what `config.yaml` holds)."""
    return _ADAPTER.dump_python(scenario, mode="json", by_alias=True)
