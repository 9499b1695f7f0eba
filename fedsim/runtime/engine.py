"""The engine: scenario -> run directory. Virtual plane (clock, schedule, costs) decides; the pool trains.

`run()` sets up once (population, cost profile, base model, data, Ray actors), then loops over rounds:
plan the round on the virtual clock, train only the clients that will count, aggregate, evaluate when due,
record. Everything a round costs is in the ledger; wall time is measured apart from virtual time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedsim.costs.profile import scenario_costs
from fedsim.metrics.console import RunConsole
from fedsim.metrics.plots import budget_figure
from fedsim.metrics.records import DeviceTotals, client_columns, device_columns, round_row, summarize
from fedsim.rundir import RunResult, open_run_dir, write_summary
from fedsim.runtime import checkpoint
from fedsim.scenario import Scenario, dump, load
from fedsim.schedules import make_schedule


def _setup(s: Scenario, run_dir: Path, con: RunConsole, resume=None):
    from fedsim.logs import quiet_libraries

    quiet_libraries()
    from transformers import AutoTokenizer

    from fedsim.data.prepare import prepare
    from fedsim.models.base import ensure_base_model
    from fedsim.runtime.cluster import init_ray, pool_size
    from fedsim.runtime.pool import Pool
    from fedsim.scenario.load import load_cluster

    model_dir = ensure_base_model(s.model, log=con.log)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = prepare(s.data, s.population.num_clients, s.seed, tokenizer, s.training.seq_len, str(model_dir))
    if data.reuse > 1:
        con.log(f"[yellow]data.source has fewer rows than the clients ask for: rows reused up to {data.reuse:.1f}x")
    _, pop, profile = scenario_costs(s, str(model_dir))
    spec = load_cluster(s.runtime.cluster)
    ray = init_ray(spec)
    n = pool_size(ray, spec, s.runtime)
    con.log(f"{s.population.num_clients} virtual clients on {n} worker actor(s); base model {model_dir.name}")
    pool = Pool(ray, n, spec, dump(s), str(model_dir), data, str(run_dir), resume)
    return pop, profile, data, pool, n


def _open(scenario, overrides, out, overwrite: bool, resume: str | Path | None):
    """(scenario, run dir, checkpoint state or None, checkpoint versions or None) for a new or resumed run."""
    if resume is None:
        s = scenario if isinstance(scenario, Scenario) else load(scenario, overrides)
        return s, open_run_dir(out, s, overwrite), None, None
    run_dir = Path(resume)
    s = load(run_dir / "config.yaml", overrides)
    state, versions = checkpoint.latest(run_dir)
    checkpoint.truncate_ledger(run_dir, state["round"])
    return s, run_dir, state, versions


def run(
    scenario: str | Path | dict | Scenario | None,
    overrides: list[str] | dict[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    resume: str | Path | None = None,
    stop_after: int | None = None,
) -> RunResult:
    """Run a scenario in train mode and write its run directory (see README: outputs).

    `resume`: continue the run directory from its newest checkpoint (bit for bit: same rows, same adapter as an
    uninterrupted run). `stop_after`: stop (with a checkpoint) after that round, to resume later.
    """
    t0 = time.perf_counter()
    s, run_dir, state, versions = _open(scenario, overrides, out, overwrite, resume)
    con = RunConsole(quiet)
    pop, profile, data, pool, n_workers = _setup(s, run_dir, con, (versions, state["rows"]) if state else None)
    schedule = make_schedule(s, pop, profile)
    try:
        if state:
            schedule.restore(state["schedule"])
            initial_eval, rows, totals = state["initial_eval"], state["rows"], state["totals"]
        else:
            initial_eval, rows, totals = pool.evaluate(), [], DeviceTotals(pop.device_names)
        startup_s = time.perf_counter() - t0
        last = min(s.server.rounds, stop_after or s.server.rounds)
        con.start(s.server.rounds, done=len(rows))
        for rnd in range(len(rows) + 1, last + 1):
            t_round = time.perf_counter()
            plan = schedule.next_round(rnd)
            tasks = [(int(c), data.client_rows(c), float(data.sizes[c] * w), int(v))
                     for c, v, w in zip(plan.to_train, plan.train_versions, plan.train_weights)]
            stats = pool.train_round(rnd, tasks, keep_versions_from=schedule.min_live_version())
            due = rnd == s.server.rounds or (s.server.eval_every and rnd % s.server.eval_every == 0)
            eval_loss = pool.evaluate() if due else None
            row = round_row(plan, stats, eval_loss, time.perf_counter() - t_round, profile)
            pool.record(row, client_columns(plan, pop, data.sizes, stats["client_losses"], profile.quantizations))
            rows.append(row)
            totals.add(device_columns(plan, pop))
            con.update(row)
            if rnd == last or (s.runtime.checkpoint_every and rnd % s.runtime.checkpoint_every == 0):
                pool.flush()
                checkpoint.save(run_dir, rnd, {"schedule": schedule.state(), "rows": rows, "totals": totals,
                                               "initial_eval": initial_eval}, pool.version_states())
        _write_adapter(run_dir / "adapter", pool.export_adapter())
    finally:
        pool.close()
    summary = summarize(rows, initial_eval, {
        "mode": "train",
        "complete": len(rows) == s.server.rounds,
        "wall_time_s": time.perf_counter() - t0,
        "startup_s": startup_s,
        "num_workers": n_workers,
        **profile.facts(),
        "per_device": totals.table(pop, profile),
    }, target=s.server.target_loss)
    budget_figure(run_dir, rows, summary["per_device"])
    write_summary(run_dir, summary)
    from fedsim.report import write_report

    write_report(run_dir)
    con.finish(summary, str(run_dir))
    return RunResult(summary, rows, run_dir)


def _write_adapter(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(blob)
