"""A sweep file: one base scenario, fixed overrides, and a space over dotted scenario keys and seeds.

    name: stragglers-grid
    scenario: ../stragglers.yaml          # relative to this file
    mode: train                           # train | estimate
    set: {server.rounds: 4}               # every trial
    grid:                                 # every combination (Tune's grid_search)
      server.clients_per_round: [4, 8]
      server.deadline_s: [30, 120]
    random:                               # num_samples draws (Tune's search spaces)
      training.lr: {loguniform: [1.0e-4, 1.0e-2]}
    seeds: [1, 2]                         # a grid over the scenario's seed
    search: none                          # none | optuna (Optuna's TPE through Tune)
    metric: final_eval_loss               # a summary.json number the search optimises
    direction: min
    scheduler: {type: asha, grace_period: 2}   # stop hopeless federations early (train mode)
    trial: {workers: 1, max_concurrent: 0}     # worker actors per federation; 0: as many as fit
    figures: [{x: server.clients_per_round, y: time_to_target_s, hue: server.deadline_s}]

Pure: parsing and checking need neither Ray nor torch. Every grid point (and each random key's range ends) is
loaded as a scenario before anything starts, so a bad value is a one-line ConfigError naming its key.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from fedsim.errors import ConfigError
from fedsim.yamlfile import read_mapping

_CFG = ConfigDict(extra="forbid")
# Tune's sampling functions a `random:` entry may name, with how many arguments each takes
DISTRIBUTIONS = {"uniform": 2, "loguniform": 2, "randint": 2, "lograndint": 2, "quniform": 3, "choice": 1}
# the per-round numbers a scheduler can compare (reported to Tune after every round of a train-mode trial)
ROUND_METRICS = ("train_loss", "eval_loss", "sim_time_s")
# the summary.json numbers a sweep's `metric` may name (every trial's are columns of sweep.parquet)
SUMMARY_NUMBERS = ("final_eval_loss", "initial_eval_loss", "final_exact_match", "time_to_target_s", "sim_time_s",
                   "sim_time_days", "bytes_up", "bytes_down", "energy_j", "server_energy_j", "energy_kwh", "co2_g",
                   "co2_kg", "wasted_energy_j", "wasted_bytes", "wasted_compute_s", "idle_client_s", "selected_total",
                   "completed_total", "dropped_total", "late_total", "ineligible_total", "stale_total",
                   "failed_clients_total", "clients_trained", "failed_rounds", "wall_time_s")
VALIDATE_LIMIT = 2000  # grid points loaded as scenarios up front (beyond: the first ones, and every value once)


@dataclass(frozen=True, config=_CFG)
class SchedulerConfig:
    """A Tune trial scheduler. ASHA (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning")
    stops a federation at a rung (grace_period x reduction_factor^k rounds) when its `metric` is not in the
    best 1/reduction_factor of the federations that reached that rung."""

    type: Literal["none", "asha"] = "none"
    metric: Literal[ROUND_METRICS] = "train_loss"
    mode: Literal["min", "max"] = "min"
    # Ray Tune's ASHAScheduler defaults (grace period 1; reduction factor 4, the eta = 4 of Li et al. 2020)
    grace_period: Annotated[int, Field(gt=0)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 4.0


@dataclass(frozen=True, config=_CFG)
class TrialConfig:
    """Resources of one trial: its federation's worker actors (each sized by the cluster spec's `worker`)."""

    workers: Annotated[int, Field(gt=0)] = 1
    max_concurrent: Annotated[int, Field(ge=0)] = 0  # 0: as many trials at once as the cluster holds


@dataclass(frozen=True, config=_CFG)
class FigureConfig:
    """One figure of sweep.parquet: `y` (mean over seeds and other keys, with min-max bars) against `x`, one
    line per value of `hue`."""

    x: str
    y: str
    hue: str | None = None


@dataclass(frozen=True, config=_CFG)
class SweepConfig:
    """A whole sweep; `load_sweep` builds it from YAML."""

    name: str
    scenario: str  # absolute path once loaded
    mode: Literal["train", "estimate"] = "train"
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    random: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    num_samples: Annotated[int, Field(gt=0)] = 1
    search: Literal["none", "optuna"] = "none"
    metric: str = "final_eval_loss"  # the summary number a search optimises and figures default to (SUMMARY_NUMBERS)
    direction: Literal["min", "max"] = "min"
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trial: TrialConfig = Field(default_factory=TrialConfig)
    figures: list[FigureConfig] = Field(default_factory=list)

    @property
    def swept(self) -> list[str]:
        """The dotted keys that vary between trials (grid, then random, then "seed"), in file order."""
        return [*self.grid, *self.random, *(["seed"] if self.seeds else [])]

    def num_trials(self) -> int:
        """How many trials Tune will run: grid points x num_samples (a search: num_samples)."""
        if self.search != "none":
            return self.num_samples
        return math.prod(len(v) for v in self.grid.values()) * max(1, len(self.seeds)) * self.num_samples


_ADAPTER = TypeAdapter(SweepConfig)


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Parse and check a sweep file (`overrides` are extra `set:` entries, as `--set` gives them); every value a
    trial can take is loaded as a scenario first, so a typo fails here, not in trial 37."""
    path = Path(path)
    raw = read_mapping(path, "sweep", "sweep keys (name, scenario, grid, ...)")
    raw.setdefault("name", path.stem)
    if "scenario" not in raw:
        raise ConfigError("scenario", f"{path}: a sweep needs `scenario:` (the base scenario file)")
    raw["scenario"] = str((path.parent / str(raw["scenario"])).resolve())
    for key in ("set", "grid", "random"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ConfigError(key, f"expected a mapping of dotted scenario keys, got {raw[key]!r}")
    raw["set"] = {**(raw.get("set") or {}), **(overrides or {})}
    try:
        cfg = _ADAPTER.validate_python(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(".".join(str(p) for p in first["loc"]) or "sweep", first["msg"]) from None
    _check(cfg)
    return cfg


def _check(cfg: SweepConfig) -> None:
    """Structural rules, then every trial value through the scenario loader."""
    for key, values in cfg.grid.items():
        if not values:
            raise ConfigError(f"grid.{key}", "needs at least one value")
    for key, spec in cfg.random.items():
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"random.{key}", f"expected one of {sorted(DISTRIBUTIONS)}: [arguments]")
        (kind, args), = spec.items()
        if kind != "choice" and len(args) != DISTRIBUTIONS[kind]:
            raise ConfigError(f"random.{key}.{kind}", f"takes {DISTRIBUTIONS[kind]} numbers, got {args}")
        if kind == "choice" and not args:
            raise ConfigError(f"random.{key}.choice", "needs at least one value")
        _check_range(f"random.{key}.{kind}", kind, args)
    both = set(cfg.grid) & set(cfg.random) | set(cfg.set) & set(cfg.swept)
    if both:
        raise ConfigError(sorted(both)[0], "is both fixed/gridded and swept: give it in one place")
    if "runtime.num_workers" in {*cfg.set, *cfg.swept}:
        raise ConfigError("runtime.num_workers", "a trial's worker actors are `trial.workers` in a sweep")
    if "runtime.cluster" in cfg.swept:  # every trial's placement group is sized by one cluster spec
        raise ConfigError("runtime.cluster", "cannot vary between trials (set it once, in `set:`)")
    if cfg.search != "none" and cfg.seeds:
        raise ConfigError("seeds", "a search would optimise over the seed; give `set: {seed: N}` (or search "
                                   "without seeds, then rerun the best values as a grid over seeds)")
    if "seed" in cfg.grid or "seed" in cfg.random:
        raise ConfigError("seeds", "sweep seeds with `seeds: [...]`, not as a grid or random key")
    if cfg.metric not in SUMMARY_NUMBERS:
        raise ConfigError("metric", f"expected a number of summary.json: one of {', '.join(SUMMARY_NUMBERS)}")
    if cfg.scheduler.type != "none" and cfg.mode == "estimate":
        raise ConfigError("scheduler", "an estimate-mode trial reports once, at its end: no scheduler can stop it "
                                       "early")
    for fig in cfg.figures:
        for axis in (fig.x, fig.hue):
            if axis is not None and axis not in cfg.swept:
                raise ConfigError("figures", f"{axis!r} is not a swept key ({', '.join(cfg.swept) or 'none'})")
        if fig.y not in (*SUMMARY_NUMBERS, *ROUND_METRICS, "round_reached"):
            raise ConfigError("figures", f"y {fig.y!r} is not a number fedsim draws (a summary.json number, "
                                         f"{', '.join(ROUND_METRICS)} or round_reached)")
    _check_values(cfg)


def _check_range(key: str, kind: str, args: list) -> None:
    """The rules Ray Tune's sampling functions enforce only once the sweep starts: numbers, low < high, a
    positive lower bound on a log scale, a positive quantum."""
    if kind == "choice":
        return
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(key, f"expects numbers, got {args}")
    low, high = args[0], args[1]
    if kind in ("randint", "lograndint") and not all(float(a).is_integer() for a in (low, high)):
        raise ConfigError(key, f"expects integers, got {args}")
    if not low < high:
        raise ConfigError(key, f"needs low < high (the upper end is excluded for {kind}), got {args}")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(key, f"a log scale needs a positive lower end, got {low}")
    if kind == "quniform" and args[2] <= 0:
        raise ConfigError(key, f"needs a positive quantum, got {args[2]}")
    if kind == "quniform" and not ends(kind, args)[0] <= ends(kind, args)[1]:
        raise ConfigError(key, f"holds no multiple of {args[2]} between {low} and {high}")


def ends(kind: str, args: list) -> list:
    """The values a random key can take at its extremes (randint's upper end is excluded), or all its choices."""
    if kind == "choice":
        return list(args)
    if kind == "quniform":  # Tune snaps the range inward to multiples of q
        low, high, q = args
        return [math.ceil(low / q) * q, math.floor(high / q) * q]
    return [args[0], args[1] - 1] if kind in ("randint", "lograndint") else list(args[:2])


def first_point(cfg: SweepConfig) -> dict[str, Any]:
    """The values of one trial (the first grid point, each random key's lower end, the first seed): with them
    the base scenario is whole even when the grid alone completes it."""
    point = {k: v[0] for k, v in cfg.grid.items()}
    point.update({k: ends(*next(iter(spec.items())))[0] for k, spec in cfg.random.items()})
    return {**point, **({"seed": cfg.seeds[0]} if cfg.seeds else {})}


def _check_values(cfg: SweepConfig) -> None:
    """Load the base scenario with each grid point (up to VALIDATE_LIMIT, then each value once) and with each
    random key's range ends; a bad combination is a ConfigError that says which trial values caused it."""
    from fedsim.scenario.load import load

    points: list[dict[str, Any]] = [dict(zip(cfg.grid, combo)) for combo in
                                    itertools.islice(itertools.product(*cfg.grid.values()), VALIDATE_LIMIT)]
    points += [{k: v} for k, values in cfg.grid.items() for v in values]
    for key, spec in cfg.random.items():
        (kind, args), = spec.items()
        points += [{key: v} for v in ends(kind, args)]
    for seed in cfg.seeds[:1]:
        points.append({"seed": seed})
    seen: set[str] = set()
    first = first_point(cfg)  # the rest of a trial around each value checked alone
    for point in points or [{}]:
        label = repr(sorted(point.items()))
        if label in seen:
            continue
        seen.add(label)
        trial = {**first, **point}
        try:
            load(cfg.scenario, {**cfg.set, **trial})
        except ConfigError as err:
            where = ", ".join(f"{k}={v!r}" for k, v in trial.items())
            raise ConfigError(err.path, f"{err.message}" + (f" (in the trial with {where})" if where else "")) from None
