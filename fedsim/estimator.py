"""Estimate mode: the whole federation's costs without training, fully vectorized (numpy only).

Same scenario, population, cost profile and schedule (sync or async) as train mode, so for the same seed it
books exactly the same times, bytes and energy; nothing is trained, so loss fields are null. A million clients and a thousand rounds take seconds: torch, transformers and peft are not
imported when the model's shape is already in the cache (`fedsim.models.shapes`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from fedsim.adversary import adversary_mask
from fedsim.costs.profile import scenario_costs
from fedsim.data.partition import client_sizes
from fedsim.metrics.ledger import Ledger
from fedsim.metrics.records import DeviceTotals, client_columns, device_columns, round_row, summarize
from fedsim.rundir import RunResult, open_run_dir, write_summary
from fedsim.scenario import Scenario, load
from fedsim.schedules import make_schedule


def expected_client_rows(s: Scenario) -> int:
    """Roughly how many client rows a run writes (async: a step resolves ~2 buffers' worth of dispatches)."""
    per_step = 2 * s.server.async_.buffer_size if s.server.schedule == "async" else \
        math.ceil(s.server.clients_per_round * s.server.over_selection)
    return s.server.rounds * per_step


def estimate(scenario: str | Path | dict | Scenario, overrides=None, out=None, overwrite: bool = False,
             quiet: bool = False, report: bool = False) -> RunResult:
    """Run a scenario in estimate mode and write its run directory (costs only, loss fields null); with
    `report`, also report.html."""
    t0 = time.perf_counter()
    s = scenario if isinstance(scenario, Scenario) else load(scenario, overrides)
    _, pop, profile = scenario_costs(s)  # before the run directory: a bad model or PEFT config leaves nothing
    run_dir = open_run_dir(out, s, overwrite)
    sizes = client_sizes(s.data, s.population.num_clients, s.seed)
    adversaries = adversary_mask(s.seed, s.population.num_clients, s.population.adversaries.fraction)
    per_device = expected_client_rows(s) > s.estimate.client_rows_limit
    ledger = Ledger(str(run_dir), per_device=per_device)
    totals = DeviceTotals(pop.device_names)
    schedule, rows = make_schedule(s, pop, profile), []
    for rnd in range(1, s.server.rounds + 1):
        t_round = time.perf_counter()
        plan = schedule.next_round(rnd)
        by_device = device_columns(plan, pop)
        totals.add(by_device)
        row = round_row(plan, {}, None, time.perf_counter() - t_round, profile)
        ledger.record(row, by_device if per_device else client_columns(plan, pop, sizes, None, profile.quantizations, adversaries))
        rows.append(row)
    ledger.close()
    summary = summarize(rows, None, {
        "mode": "estimate",
        **profile.facts(),
        "per_device": totals.table(pop, profile),
        "client_rows": "clients_by_device.parquet" if per_device else "clients.parquet",
    }, trained=False, target=s.server.target_loss)
    from fedsim.metrics.plots import budget_figure

    budget_figure(run_dir, rows, summary["per_device"])
    summary["wall_time_s"] = time.perf_counter() - t0
    write_summary(run_dir, summary)
    if report:
        from fedsim.report import write_report

        write_report(run_dir)
    if not quiet:
        from fedsim.metrics.console import RunConsole

        RunConsole().finish(summary, str(run_dir))
    return RunResult(summary, rows, run_dir)
