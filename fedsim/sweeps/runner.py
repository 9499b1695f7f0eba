"""Run a sweep on Ray Tune: every trial is a whole federation, in its own run directory.

A trial's resources are a placement group: a head bundle pinned to the sweep driver's node (the trial's own
process, which plans the rounds and opens its run directory there, so every run directory of the sweep is
written on the driver's node) and one bundle per worker actor, sized by the cluster spec's `worker`. Ray Tune
starts the trial's actors inside that group (child tasks are captured), so a federation never sizes itself from
the whole cluster. A train-mode trial reports after every round, so a scheduler (ASHA) can stop it early.

The sweep is resumable: Tune keeps its experiment state in OUT/tune, and running the same sweep into the same
OUT again restores it; finished trials are not rerun, and an unfinished trial continues from its federation's
newest checkpoint (`fedsim run --resume`), not from round 1.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # before Tune is imported: its console tables follow `verbose`
from ray import tune  # noqa: E402 - the sweep's runtime: only `fedsim sweep` imports this module

from fedsim.errors import ConfigError
from fedsim.sweeps.config import SweepConfig, first_point, load_sweep
from fedsim.sweeps.results import scalars

STATE = "sweep.yaml"  # the resolved sweep in OUT: a second run of a different sweep into OUT is refused
TUNE_DIR = "tune"


@dataclass(frozen=True)
class SweepResult:
    """What `fedsim.sweep` returns: the table (one row per trial), where it and the figures are."""

    table: Any  # pandas.DataFrame of sweep.parquet
    out: Path
    figures: list[Path]


def sweep(path: str | Path, overrides: list[str] | dict[str, Any] | None = None, out: str | Path | None = None,
          overwrite: bool = False, quiet: bool = False) -> SweepResult:
    """Run (or resume) the sweep file `path` on Ray Tune and write OUT/sweep.parquet and OUT/figures/."""
    from fedsim.scenario.load import load, load_cluster, parse_overrides

    cfg = load_sweep(path, parse_overrides(overrides))
    out = Path(out or Path("runs") / "sweeps" / cfg.name).resolve()
    base = load(cfg.scenario, {**cfg.set, **first_point(cfg)})  # one whole trial: its cluster, seed, contents
    spec = load_cluster(base.runtime.cluster)
    from fedsim.runtime.cluster import init_ray

    ray = init_ray(spec)
    # Tune's resume hints name Tuner.restore (ours is the same command); its warning that no trial fits stays
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.tune").addFilter(_not_incomplete)  # "Trials did not complete": our line says it
    logging.getLogger("ray.tune.execution.insufficient_resources_manager").setLevel(logging.WARNING)
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # a failed trial: one line, and its row in the table
    home = f"node:{ray.util.get_node_ip_address()}"
    resources = _resources(cfg, spec.worker, home)
    if not spec.address:
        _check_fits(resources.required_resources, ray.cluster_resources())
    resuming = _open_out(out, cfg, base, overwrite)  # only once the sweep can run: a refused one writes nothing
    trainable = tune.with_resources(tune.with_parameters(_trial, sweep=_plain(cfg), out=str(out)), resources)
    t0 = time.perf_counter()
    if resuming and tune.Tuner.can_restore(str(out / TUNE_DIR)):
        tuner = tune.Tuner.restore(str(out / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=_space(cfg), tune_config=_tune_config(cfg, base.seed, out),
                           run_config=tune.RunConfig(storage_path=str(out), name=TUNE_DIR, verbose=0,
                                                     callbacks=[] if quiet else [_Progress()]))
    grid = tuner.fit()
    # Ctrl-C: Tune saved its state and returned early (its result grid then calls every trial terminated; the
    # state it saved says which were still pending or running)
    saved = tune.ExperimentAnalysis(str(out / TUNE_DIR)).trials
    unfinished = sum(t.status not in ("TERMINATED", "ERROR") for t in saved)
    if unfinished:
        print(f"fedsim sweep: interrupted with {len(grid) - unfinished} of {len(grid)} trials finished; the same "
              f"command resumes it", file=sys.stderr)
        raise KeyboardInterrupt
    from fedsim.sweeps.results import collect, draw  # (matplotlib, pandas: only once the trials are done)

    table = collect(cfg, grid, out)
    figures = draw(cfg, table, out / "figures")
    if not quiet:
        done = int((table["status"] == "completed").sum())
        print(f"fedsim sweep: {len(table)} trials ({done} completed) in {time.perf_counter() - t0:.0f} s -> "
              f"{out / 'sweep.parquet'}")
    return SweepResult(table, out, figures)


def _check_fits(need: dict[str, float], have: dict[str, float]) -> None:
    """A trial that needs more than this machine's Ray has would wait forever: a ConfigError instead (a joined
    cluster may autoscale, so it is only checked for a local Ray)."""
    for key, amount in sorted(need.items()):
        if amount > have.get(key, 0.0) + 1e-9:
            what = {"CPU": "CPUs", "GPU": "GPUs"}.get(key, key)
            raise ConfigError("trial.workers", f"one trial needs {amount:g} {what} (trial.workers x the cluster "
                                               f"spec's worker resources), this Ray has {have.get(key, 0):g}")


def _open_out(out: Path, cfg: SweepConfig, base, overwrite: bool) -> bool:
    """Prepare OUT; True if it holds this same sweep already (resume). A different sweep there, or a directory
    that is not a sweep's, is refused unless --overwrite (which deletes only a sweep's directory)."""
    state = out / STATE
    from fedsim.paths import digest
    from fedsim.scenario import dump

    # the resolved base scenario's (first trial's) digest too: an edited base file is a different sweep
    scenario = digest(dump(base))
    text = yaml.safe_dump({**_plain(cfg), "scenario_digest": scenario}, sort_keys=True)
    if out.exists() and any(out.iterdir()):
        if not state.is_file():
            raise ConfigError("--out", f"{out} exists, is not empty and holds no sweep; choose another directory")
        if overwrite:
            shutil.rmtree(out)
        elif state.read_text() != text:
            raise ConfigError("--out", f"{out} holds a different sweep (its {STATE} differs); use another --out, "
                                       "or --overwrite to replace it")
        else:
            return True
    out.mkdir(parents=True, exist_ok=True)
    from fedsim.atomic import atomic_write_text

    atomic_write_text(state, text)
    return False


def _plain(cfg: SweepConfig) -> dict[str, Any]:
    """The sweep as plain data (for sweep.yaml and for the trials)."""
    from pydantic import TypeAdapter

    return TypeAdapter(SweepConfig).dump_python(cfg, mode="json")


def _resources(cfg: SweepConfig, worker, home: str):
    """One trial's placement group: its own process on the driver's node (no CPU in train mode: it mostly waits
    on its workers; one CPU in estimate mode, where it is the whole work) and `trial.workers` worker bundles."""
    head = {"CPU": 1.0 if cfg.mode == "estimate" else 0.0, home: 0.001}
    bundle = {k: v for k, v in (("CPU", worker.num_cpus), ("GPU", worker.num_gpus)) if v}
    workers = [] if cfg.mode == "estimate" else [bundle] * cfg.trial.workers
    return tune.PlacementGroupFactory([head, *workers])


def _space(cfg: SweepConfig) -> dict[str, Any]:
    """Tune's param_space: grid keys and seeds as grid_search (categorical choices under a search algorithm,
    which cannot enumerate a grid), random keys as Tune's sampling functions."""
    searched = cfg.search != "none"
    space: dict[str, Any] = {k: tune.choice(v) if searched else tune.grid_search(v) for k, v in cfg.grid.items()}
    for key, spec in cfg.random.items():
        (kind, args), = spec.items()
        space[key] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
    if cfg.seeds:
        space["seed"] = tune.choice(cfg.seeds) if searched else tune.grid_search(cfg.seeds)
    return space


def _tune_config(cfg: SweepConfig, seed: int, out: Path):
    """Search algorithm (Tune's variant generator or Optuna's TPE, seeded with the scenario's seed), scheduler
    (ASHA, its rungs kept in OUT for a resume), concurrency."""
    if cfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(metric=cfg.metric, mode=cfg.direction, seed=seed)
        if cfg.trial.max_concurrent:
            search = tune.search.ConcurrencyLimiter(search, max_concurrent=cfg.trial.max_concurrent)
    else:  # (a search algorithm given to Tune keeps its own concurrency limit: 0 is none)
        search = tune.search.BasicVariantGenerator(random_state=seed, max_concurrent=cfg.trial.max_concurrent)
    scheduler = None
    if cfg.scheduler.type == "asha":
        from fedsim.sweeps.asha import ResumableASHA

        sc = cfg.scheduler
        scheduler = ResumableASHA(out / "asha.pkl", time_attr="round", metric=sc.metric, mode=sc.mode,
                                  grace_period=sc.grace_period, reduction_factor=sc.reduction_factor, max_t=10**9)
    # an estimate-mode trial lasts about a second: its process (numpy, pyarrow, the cost models imported) is reused
    return tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=cfg.num_samples,
                           reuse_actors=cfg.mode == "estimate")


def _trial(config: dict[str, Any], sweep: dict, out: str) -> None:
    """One Tune trial: the base scenario with the sweep's fixed overrides and this trial's values, run in train
    or estimate mode into OUT/trials/<trial id>; reports every round (train mode) and the summary at the end."""
    from pydantic import TypeAdapter

    sys.unraisablehook = _quiet_exit  # a trial stopped early (ASHA, Ctrl-C) leaves quietly
    cfg = TypeAdapter(SweepConfig).validate_python(sweep)
    reporter = _RoundReporter(cfg.metric)
    run_dir = Path(out) / "trials" / tune.get_context().get_trial_id()
    overrides = {**cfg.set, **config, "runtime.num_workers": cfg.trial.workers}
    if cfg.mode == "estimate":
        from fedsim.estimator import estimate

        summary = estimate(cfg.scenario, overrides, run_dir, overwrite=True, quiet=True).summary
    else:
        import json

        from fedsim.runtime import checkpoint
        from fedsim.runtime.engine import run

        done = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else None
        if done and done.get("complete"):  # it finished as Tune stopped (Ctrl-C): not trained again
            reporter.replay(run_dir)
            summary = done
        elif checkpoint.newest_round(run_dir) is not None:  # interrupted: on from its newest checkpoint
            reporter.replay(run_dir)  # (the rounds kept; --resume cuts the ledger back to the checkpoint first)
            summary = run(None, resume=run_dir, quiet=True, report="off", on_round=reporter).summary
        else:
            summary = run(cfg.scenario, overrides, run_dir, overwrite=True, quiet=True, report="off",
                          on_round=reporter).summary
    # the last report: what a scheduler compares (the newest losses) and what a search optimises (the summary)
    tune.report({"round": summary["rounds"], **reporter.last, **scalars(summary),
                 cfg.metric: summary.get(cfg.metric, math.nan)})


def _not_incomplete(record: logging.LogRecord) -> bool:
    """Drops only Tune's "Trials did not complete" log record (fedsim prints one line per failed trial)."""
    return not str(record.msg).startswith("Trials did not complete")


def _quiet_exit(unraisable) -> None:
    """Ray ends a stopped trial's process with SystemExit from its SIGTERM handler, which Python may report as an
    'Exception ignored in ...' traceback on the driver's console; only that one is silenced."""
    if not isinstance(unraisable.exc_value, SystemExit):
        sys.__unraisablehook__(unraisable)


class _RoundReporter:
    """Reports each round's numbers to Tune: the round, its train loss and virtual time, the newest eval loss,
    and the sweep's metric as far as it is known (for a final_* metric: its newest value)."""

    def __init__(self, metric: str):
        self.metric, self.last = metric, {"train_loss": math.nan, "eval_loss": math.nan}

    def keep(self, row: dict[str, Any]) -> None:
        """Remember the row's losses (the newest finite ones) without reporting."""
        for key in self.last:
            if row.get(key) is not None and math.isfinite(row[key]):
                self.last[key] = float(row[key])

    def replay(self, run_dir: Path) -> None:
        """Keep the losses of every round already in run_dir/rounds.jsonl: a resumed or already finished trial's
        last report then carries the same losses as an uninterrupted one's."""
        import json

        ledger = run_dir / "rounds.jsonl"
        for line in ledger.read_text().splitlines() if ledger.is_file() else []:
            if line.strip():
                self.keep(json.loads(line))

    def __call__(self, row: dict[str, Any]) -> None:
        self.keep(row)
        report = {"round": row["round"], "sim_time_s": row["sim_time_s"], **self.last}
        stem = self.metric.removeprefix("final_")
        report[self.metric] = report.get(stem, row.get(stem, math.nan))
        tune.report(report)


class _Progress(tune.Callback):
    """Prints one line per finished trial (Tune's own console tables are off)."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        values = ", ".join(f"{k}={v}" for k, v in trial.config.items())
        print(f"fedsim sweep: trial {trial.trial_id} finished ({values})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"fedsim sweep: trial {trial.trial_id} failed (its error is in sweep.parquet)", flush=True)
