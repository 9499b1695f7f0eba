"""Turn a round's plan and aggregation stats into the ledger's rows (rounds.jsonl line, clients.parquet rows)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.costs.energy import carbon_g
from fedsim.costs.profile import CostProfile
from fedsim.population import Population
from fedsim.schedule import PHASES, STATUSES, RoundPlan


def round_row(plan: RoundPlan, stats: dict[str, Any], eval_loss: float | None, wall_s: float,
              profile: CostProfile) -> dict:
    """One rounds.jsonl object: counts by status, summed costs, losses, virtual and wall time.

    energy_j is the clients' energy (it equals the sum of clients.parquet); the server, powered for the whole
    round, is booked apart as server_energy_j; co2_g covers both.
    """
    c = plan.columns
    counts = np.bincount(c["status"], minlength=len(STATUSES))
    energy = float(c["energy_j"].sum())
    server = profile.server_power_w * plan.duration_s
    wasted = c["status"] != 0
    return {
        "round": plan.round,
        "sim_time_s": plan.start_s + plan.duration_s,
        "duration_s": plan.duration_s,
        "selected": int(len(c["client_id"])),
        **{name: int(counts[i]) for i, name in enumerate(STATUSES)},
        "aggregated": int(stats.get("aggregated", 0)),
        "bytes_up": float(c["bytes_up"].sum()),
        "bytes_down": float(c["bytes_down"].sum()),
        "energy_j": energy,
        "server_energy_j": server,
        "co2_g": float(carbon_g(energy + server, profile.grid_gco2_per_kwh)),
        "wasted_energy_j": float(c["energy_j"][wasted].sum()),
        "wasted_bytes": float(c["bytes_up"][wasted].sum() + c["bytes_down"][wasted].sum()),
        "train_loss": stats.get("train_loss"),
        "eval_loss": eval_loss,
        "wall_s": wall_s,
    }


def client_columns(plan: RoundPlan, pop: Population, sizes: np.ndarray, losses: list[float],
                   quantizations: tuple[str, ...]) -> dict[str, list]:
    """clients.parquet rows of one round (selection order); train_loss only for trained clients."""
    c = plan.columns
    ids = c["client_id"]
    trained = c["status"] == 0
    loss = np.full(len(ids), np.nan)
    order = np.argsort(c["finish_s"][trained], kind="stable")  # losses come in arrival order
    loss[np.flatnonzero(trained)[order]] = losses
    return {
        "round": [plan.round] * len(ids),
        "client_id": ids.tolist(),
        "device": [pop.device_names[d] for d in pop.device[ids]],
        "network": [pop.network_names[n] for n in pop.network[ids]],
        "status": [STATUSES[s] for s in c["status"]],
        "failed_phase": [PHASES[p] for p in c["failed_phase"]],
        "quantization": [quantizations[q] if q >= 0 else "" for q in c["quantization"]],
        "t_download_s": c["t_download_s"].tolist(),
        "t_compute_s": c["t_compute_s"].tolist(),
        "t_upload_s": c["t_upload_s"].tolist(),
        "finish_s": [None if np.isnan(x) else float(x) for x in c["finish_s"]],
        "bytes_up": c["bytes_up"].tolist(),
        "bytes_down": c["bytes_down"].tolist(),
        "energy_j": c["energy_j"].tolist(),
        "num_samples": sizes[ids].tolist(),
        "trained": trained.tolist(),
        "train_loss": [None if np.isnan(x) else float(x) for x in loss],
    }


def summarize(rows: list[dict], initial_eval: float | None, extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json: totals over rounds, first and last eval loss, plus run facts in `extra`."""
    evals = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    total = {k: float(sum(r[k] for r in rows)) for k in ("bytes_up", "bytes_down", "energy_j", "server_energy_j",
                                                          "co2_g", "wasted_energy_j", "wasted_bytes")}
    counts = {k: int(sum(r[k] for r in rows)) for k in ("selected", *STATUSES)}
    return {
        "rounds": len(rows),
        "sim_time_s": rows[-1]["sim_time_s"] if rows else 0.0,
        **total,
        **{f"{k}_total": v for k, v in counts.items()},
        "clients_trained": counts["completed"],
        "initial_eval_loss": initial_eval,
        "final_eval_loss": evals[-1] if evals else initial_eval,
        **extra,
    }
