"""The engine: scenario -> run directory. Virtual plane (clock, schedule, costs) decides; the pool trains.

`run()` prepares while Ray starts (a background thread: model directory, data partition, population, cost
profile and schedule are numpy work that needs neither Ray nor torch), opens the run directory only once the
scenario proved sound, starts the actors without waiting for them, then loops over rounds: plan the round on
the virtual clock, train only the clients that will count, aggregate, evaluate when due, record.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.errors import ConfigError, RunAborted, one_line
from fedsim.scenario import Scenario, dump, load

if TYPE_CHECKING:
    from fedsim.rundir import RunResult

# Everything else is imported by the preparation thread (numpy, pyarrow, rich, the cost models, ...) while the
# main thread starts Ray: start-up is Ray's start, not Ray's start plus our imports.


def process_start_time() -> float:
    """Epoch seconds at which this process started, to ~10 ms (psutil's create_time rests on the boot time,
    which Linux gives in whole seconds: up to a second off)."""
    import os

    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().create_time()


def _scenario(scenario, overrides, resume) -> Scenario:
    if resume is None:
        return scenario if isinstance(scenario, Scenario) else load(scenario, overrides)
    if overrides:
        raise ConfigError("--set", "cannot be combined with --resume: a resumed run continues its config.yaml")
    return load(Path(resume) / "config.yaml")


def _prepare(s: Scenario, quiet: bool, marks: dict[str, float]):
    """Everything the driver computes before the first round, overlapped with Ray's start.

    Ray starts on the main thread (the processes it spawns are bound to the thread that started them), the
    driver's own imports and preparation run meanwhile on a helper thread: ray.init mostly waits on its
    subprocesses.
    """
    from fedsim.runtime.cluster import init_ray
    from fedsim.scenario.load import load_cluster

    spec = load_cluster(s.runtime.cluster)
    with ThreadPoolExecutor(1, thread_name_prefix="fedsim-prepare") as ex:
        prepared = ex.submit(_driver_side, s, quiet, marks)
        try:
            ray = init_ray(spec)
            marks["ray_ready"] = time.time()
        finally:
            prepared.exception()  # let the preparation finish (or fail) before anything else happens
        return (spec, ray, *prepared.result())


def _driver_side(s: Scenario, quiet: bool, marks: dict[str, float]):
    """Console, base model directory, the trained model's shape (checks its target modules), data,
    population, costs, schedule; and the modules the run needs later."""
    from fedsim.costs.profile import scenario_costs
    from fedsim.data.prepare import prepare_data
    from fedsim.metrics.console import RunConsole
    from fedsim.models.base import ensure_base_model
    from fedsim.models.shapes import model_shape
    from fedsim.runtime import pool  # noqa: F401 - imported here, off the critical path
    from fedsim.schedules import make_schedule

    con = RunConsole(quiet)
    model_dir = str(ensure_base_model(s.model, log=con.log))
    if not Path(model_dir).is_dir():
        raise ConfigError("model.name", f"{model_dir} is a config file; train mode needs a model directory "
                                        "(config.json, weights, tokenizer); use it as model.cost_as instead")
    model_shape(model_dir, s.peft)  # on the meta device, cached: the trained model has the target modules
    data = prepare_data(s, model_dir, con.log)
    _, pop, profile = scenario_costs(s, model_dir)
    schedule = make_schedule(s, pop, profile)
    marks["prepared"] = time.time()
    return con, model_dir, data, pop, profile, schedule


def run(
    scenario: str | Path | dict | Scenario | None,
    overrides: list[str] | dict[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    report: str = "inline",
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run a scenario in train mode and write its run directory (see README: outputs).

    `resume`: continue the run directory from its newest checkpoint (bit for bit: same rows, same adapter as an
    uninterrupted run). `stop_after`: stop (with a checkpoint) after that round, to resume later. `report`:
    "inline" writes report.html before returning, "background" hands it to a detached process (the CLI's
    default: the user is not held up), "off" skips it (`fedsim report` writes it any time). `on_round` is called
    with each round's rounds.jsonl row once the round is recorded (and checkpointed when due): a sweep reports it
    to Ray Tune.
    """
    t0 = time.perf_counter()
    timing = {"process_start": process_start_time(), "run_called": time.time()}
    s = _scenario(scenario, overrides, resume)
    spec, ray, con, model_dir, data, pop, profile, schedule = _prepare(s, quiet, timing)
    from fedsim.adversary import adversary_mask
    from fedsim.metrics.records import DeviceTotals, summarize
    from fedsim.rounds import run_rounds
    from fedsim.rundir import RunResult, open_run_dir, write_summary
    from fedsim.runtime import checkpoint
    from fedsim.runtime.cluster import pool_size
    from fedsim.runtime.plane import TrainPlane
    from fedsim.runtime.pool import Pool, WorkerLost
    from fedsim.strategies.privacy import accountant_for

    if resume is None:
        run_dir, state, versions, rows = open_run_dir(out, s, overwrite), None, None, []
    else:
        run_dir = Path(resume)
        state, versions = checkpoint.latest(run_dir)
        rows = checkpoint.truncate_ledger(run_dir, state["round"])
    adversaries = adversary_mask(s.seed, s.population.num_clients, s.population.adversaries.fraction)
    n = pool_size(ray, spec, s.runtime)
    con.log(f"{s.population.num_clients:,} virtual clients on {n} worker actor(s); base model {Path(model_dir).name}")
    pool = Pool(ray, n, spec, dump(s), model_dir, data.spec, str(run_dir),
                (versions, rows, state.get("server_opt")) if state else None)
    timing["pool_started"] = time.time()
    try:
        if state:
            schedule.restore(state["schedule"])
            initial, totals = state["initial"], state["totals"]
        else:
            # the initial evaluation and digest run while round 1 is planned; resolved after it (`plane.resolved`)
            initial = {"eval": pool.evaluate_async(), "sha": pool.digest_async(), "pending": True}
            totals = DeviceTotals(pop.device_names)
        last = min(s.server.rounds, stop_after or s.server.rounds)
        con.start(s.server.rounds, done=len(rows))
        plane = TrainPlane(s, run_dir, pool, schedule, data, pop, profile, adversaries, con, rows, totals, timing,
                           initial, last, on_round)
        try:
            run_rounds(schedule, plane, len(rows) + 1, last, profile, accountant_for(s, pop, profile))
        except (WorkerLost, ray.exceptions.RayError) as lost:
            raise _abort(run_dir, pool, plane.rnd, plane.snapshot, plane.initial, lost) from None
        initial = plane.initial
        timing["last_round"] = time.time()
        try:
            _write_adapter(run_dir / "adapter", pool.export_adapter())
        except ray.exceptions.RayError as exc:
            raise RunAborted(f"the final adapter could not be exported ({one_line(exc)}); every round is "
                             f"checkpointed: fedsim run --resume {run_dir} writes it") from None
    except ConfigError:
        con.stop()
        pool.close(quiet=True)
        if resume is None and not rows:
            shutil.rmtree(run_dir, ignore_errors=True)  # a worker could not load: nothing half-written stays
        raise
    except BaseException:
        con.stop()
        pool.close(quiet=True)
        raise
    pool.close()
    summary = summarize(rows, initial["eval"], {
        "mode": "train",
        "complete": len(rows) == s.server.rounds,
        "wall_time_s": time.perf_counter() - t0,
        # process start -> first round dispatched (tasks queue on actors that may still be loading)
        "startup_s": timing["first_dispatch"] - timing["process_start"] if "first_dispatch" in timing else None,
        "timeline": timing,  # epoch seconds: process start, run() called, first dispatch / round, last round
        "num_workers": n,
        **plane.placement,  # train_device, train_dtype, base_quantization
        "initial_global_sha": initial["sha"],
        **profile.facts(),
        "per_device": totals.table(pop, profile),
    }, target=s.server.target_loss)
    write_summary(run_dir, summary)
    start_report(run_dir, report)
    con.finish(summary, str(run_dir))
    return RunResult(summary, rows, run_dir)


def _abort(run_dir: Path, pool, rnd: int, before: tuple, initial: dict, lost: Exception) -> RunAborted:
    """Checkpoint the state before round `rnd` (an update or the aggregator was lost) and say how to go on."""
    from fedsim.runtime import checkpoint
    from fedsim.runtime.plane import resolved
    from fedsim.runtime.pool import WorkerLost

    schedule_state, versions, totals = before
    load = pool.load_error()  # a worker that could not load is the cause of whatever failed after it
    if load and load[0]:
        raise ConfigError(*load)
    try:
        pool.flush()
        initial = resolved(pool, initial)
        checkpoint.save(run_dir, rnd - 1, {"schedule": schedule_state, "totals": totals, "initial": initial,
                                           "server_opt": pool.server_state(rnd - 1)}, pool.version_states(versions))
        where = f"round {rnd - 1}"
    except Exception as exc:  # noqa: BLE001 - the aggregator itself is gone: the newest regular checkpoint stands
        if isinstance(getattr(exc, "cause", None), ValueError):
            raise  # fedsim's own inconsistency, not a lost process: say so
        newest = checkpoint.newest_round(run_dir)
        where = None if newest is None else f"round {newest}"
    what = load[1] if load else str(lost) if isinstance(lost, WorkerLost) else one_line(lost)
    if where is None:
        return RunAborted(f"round {rnd}: {what}; no checkpoint could be written: rerun the scenario")
    return RunAborted(f"round {rnd}: {what}; nothing of round {rnd} was applied. Continue from the checkpoint "
                      f"of {where}: fedsim run --resume {run_dir}")


def start_report(run_dir: Path, mode: str) -> None:
    """report.html (and budget.png) now ("inline"), by a detached process ("background": the run's process
    exits at once, the page appears seconds later; its output goes to report.log), or not at all ("off")."""
    if mode == "inline":
        from fedsim.report import write_report

        write_report(run_dir)
    elif mode == "background":
        import subprocess
        import sys

        with open(run_dir / "report.log", "wb") as log:
            subprocess.Popen([sys.executable, "-m", "fedsim", "report", str(run_dir)], stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL, start_new_session=True)


def _write_adapter(path: Path, files: dict[str, bytes]) -> None:
    from fedsim.atomic import atomic_write_bytes

    path.mkdir(parents=True, exist_ok=True)
    for name, blob in sorted(files.items()):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / name, blob)
