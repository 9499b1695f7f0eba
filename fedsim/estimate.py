"""Estimate mode: the whole federation's costs without training, fully vectorized (numpy only).

Same scenario, population, cost profile and sync schedule as train mode; nothing is trained, so loss fields
are null. A million clients and a thousand rounds take seconds: torch, transformers and peft are not
imported when the model's shape is already in the cache (`fedsim.models.shapes`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsim import catalog, population
from fedsim.clock import Clock
from fedsim.costs.profile import CostProfile, build_profile, fitting_option
from fedsim.data.partition import client_sizes
from fedsim.metrics.ledger import Ledger
from fedsim.metrics.records import AGGREGATED, client_columns, device_columns, round_row, summarize
from fedsim.rundir import RunResult, open_run_dir, write_summary
from fedsim.scenario import Scenario, load
from fedsim.schedule import STATUSES, plan_round


class DeviceTotals:
    """Per-device-class totals over the run (counts by status, time, bytes, energy)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.counts = np.zeros((len(names), len(STATUSES)), np.int64)
        self.sums = {k: np.zeros(len(names)) for k in AGGREGATED}

    def add(self, cols: dict[str, np.ndarray]) -> None:
        """Fold in one round's per-device rows (`device_columns`)."""
        dev = np.array([self.names.index(d) for d in cols["device"]], dtype=np.int64)
        st = np.array([STATUSES.index(x) for x in cols["status"]], dtype=np.int64)
        np.add.at(self.counts, (dev, st), cols["clients"])
        for k in AGGREGATED:
            np.add.at(self.sums[k], dev, cols[k])

    def table(self, pop: population.Population, profile: CostProfile) -> dict[str, dict[str, Any]]:
        """summary.json's per_device: eligibility share, fallback use, counts, time, bytes, energy, CO2."""
        option = fitting_option(profile, pop.memory_bytes)
        out = {}
        for i, name in enumerate(self.names):
            mine = pop.device == i
            row: dict[str, Any] = {"population": int(mine.sum()),
                                   "eligible_share": float(np.mean(option[mine] >= 0)) if mine.any() else 0.0}
            for q, quant in enumerate(profile.quantizations):
                row[f"share_{quant}"] = float(np.mean(option[mine] == q)) if mine.any() else 0.0
            row.update({s: int(self.counts[i, j]) for j, s in enumerate(STATUSES)})
            row.update({k: float(v[i]) for k, v in self.sums.items()})
            row["co2_g"] = row["energy_j"] / 3.6e6 * profile.grid_gco2_per_kwh
            out[name] = row
        return out


def model_facts(profile: CostProfile) -> dict[str, Any]:
    """Model and per-client work facts for summaries and `fedsim cost`."""
    shape = profile.shape
    return {
        "model_params": shape.n_params,
        "trainable_params": shape.n_trainable,
        "adapter_bytes": profile.bytes_down,
        "upload_bytes": profile.bytes_up,
        "memory_bytes": profile.memory_bytes,
        "memory_breakdown": profile.memory_breakdown,
        "flops_per_client_round": profile.flops_per_client,
    }


def setup_costs(s: Scenario):
    """Catalog, population and cost profile of a scenario (shared by estimate and cost)."""
    from fedsim.models.shapes import model_shape

    cat = catalog.load(s.population.catalog)
    pop = population.sample(s.population, cat, s.seed)
    shape = model_shape(s.model.cost_as or s.model.name, s.peft)
    return cat, pop, build_profile(s, shape, cat, pop)


def estimate(scenario: str | Path | dict | Scenario, overrides=None, out=None, overwrite: bool = False,
             quiet: bool = False) -> RunResult:
    """Run a scenario in estimate mode and write its run directory (costs only, loss fields null)."""
    t0 = time.perf_counter()
    s = scenario if isinstance(scenario, Scenario) else load(scenario, overrides)
    run_dir = open_run_dir(out, s, overwrite)
    _, pop, profile = setup_costs(s)
    sizes = client_sizes(s.data, s.population.num_clients, s.seed)
    per_device = s.server.rounds * math.ceil(s.server.clients_per_round * s.server.over_selection) > \
        s.estimate.client_rows_limit
    ledger = Ledger(str(run_dir), per_device=per_device)
    totals = DeviceTotals(pop.device_names)
    clock, rows = Clock(), []
    for rnd in range(1, s.server.rounds + 1):
        t_round = time.perf_counter()
        plan = plan_round(s, pop, profile, clock, rnd)
        by_device = device_columns(plan, pop)
        totals.add(by_device)
        row = round_row(plan, {}, None, time.perf_counter() - t_round, profile)
        ledger.record(row, by_device if per_device else client_columns(plan, pop, sizes, None, profile.quantizations))
        rows.append(row)
    ledger.close()
    summary = summarize(rows, None, {
        "mode": "estimate",
        **model_facts(profile),
        "energy_kwh": sum(r["energy_j"] + r["server_energy_j"] for r in rows) / 3.6e6,
        "co2_kg": sum(r["co2_g"] for r in rows) / 1000,
        "sim_time_days": (rows[-1]["sim_time_s"] if rows else 0.0) / 86400,
        "per_device": totals.table(pop, profile),
        "client_rows": "clients_by_device.parquet" if per_device else "clients.parquet",
    }, trained=False)
    from fedsim.metrics.plots import budget_figure

    budget_figure(run_dir, rows, summary["per_device"])
    summary["wall_time_s"] = time.perf_counter() - t0
    write_summary(run_dir, summary)
    if not quiet:
        from fedsim.metrics.console import RunConsole

        RunConsole().finish(summary, str(run_dir))
    return RunResult(summary, rows, run_dir)
