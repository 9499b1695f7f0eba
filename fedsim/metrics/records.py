"""Turn a round's plan and aggregation stats into the ledger's rows (rounds.jsonl line, clients.parquet rows)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.costs.energy import carbon_g
from fedsim.costs.profile import CostProfile, fitting_option
from fedsim.population import Population
from fedsim.schedules import PHASES, STATUSES, RoundPlan
from fedsim.schedules.base import count_key


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    """finish_p50_s / p90 / p99 of the finite values (None when there are none)."""
    values = values[np.isfinite(values)]
    qs = np.percentile(values, (50, 90, 99)) if values.size else (None,) * 3
    return {f"finish_p{q}_s": (None if v is None else float(v)) for q, v in zip((50, 90, 99), qs)}


def round_row(plan: RoundPlan, stats: dict[str, Any], eval_loss: float | None, wall_s: float,
              profile: CostProfile) -> dict:
    """One rounds.jsonl object: counts by status, summed costs, straggler metrics, losses, virtual and wall time.

    energy_j is the clients' energy (it equals the sum of clients.parquet); the server, powered for the whole
    round, is booked apart as server_energy_j; co2_g covers both. Waste is everything spent by clients whose
    update was not used (dropped, late, stale, ineligible, or all of a round that missed its quorum).
    finish_p*_s are percentiles of how long clients that did not fail needed (including stragglers cut off);
    idle_client_s sums how long used updates waited between their arrival and the aggregation.
    """
    c = plan.columns
    counts = np.bincount(c["status"], minlength=len(STATUSES))
    energy = float(c["energy_j"].sum())
    server = profile.server_power_w * plan.duration_s
    wasted = ~c["used"]
    used = c["used"]
    finishing = np.isin(c["status"], [STATUSES.index(s) for s in ("completed", "late", "stale", "failed")])
    end = plan.start_s + plan.duration_s
    return {
        "round": plan.round,
        "sim_time_s": end,
        "duration_s": plan.duration_s,
        "failed": plan.failed,
        "selected": int(len(c["client_id"])),
        **{count_key(name): int(counts[i]) for i, name in enumerate(STATUSES)},
        "aggregated": int(stats.get("aggregated", used.sum())),
        "bytes_up": float(c["bytes_up"].sum()),
        "bytes_down": float(c["bytes_down"].sum()),
        "energy_j": energy,
        "server_energy_j": server,
        "co2_g": float(carbon_g(energy + server, profile.grid_gco2_per_kwh)),
        "wasted_energy_j": float(c["energy_j"][wasted].sum()),
        "wasted_bytes": float(c["bytes_up"][wasted].sum() + c["bytes_down"][wasted].sum()),
        "wasted_compute_s": float(c["t_compute_s"][wasted].sum()),
        **_percentiles(c["full_s"][finishing]),
        "straggler_share": float(counts[2] + counts[4]) / max(int(finishing.sum()), 1),
        "idle_client_s": float((end - c["start_s"][used] - c["finish_s"][used]).sum()),
        "staleness_mean": float(c["staleness"][used].mean()) if used.any() else None,
        "staleness_max": int(c["staleness"][used].max()) if used.any() else None,
        "quarantined": int(stats.get("quarantined", 0)),
        "task_reruns": int(stats.get("task_reruns", 0)),  # reruns of tasks that raised (failed_clients: gave up)
        "worker_restarts": int(stats.get("worker_restarts", 0)),  # worker processes Ray restarted (their tasks rerun)
        "clipped": int(stats.get("clipped", 0)),
        "robust_fallback": bool(stats.get("robust_fallback", False)),
        "secagg_aborted": bool(stats.get("secagg_aborted", False)),
        "secagg_clamped": int(stats.get("secagg_clamped", 0)),
        "rows_dropped": int(stats.get("rows_dropped", 0)),
        "train_loss": stats.get("train_loss"),
        "eval_loss": eval_loss,
        "exact_match": stats.get("exact_match"),  # greedy answers equal to the reference, share of the eval set
        "exact_match_by_task": stats.get("exact_match_by_task"),
        "client_eval_mean": stats.get("client_eval_mean"),  # clients' own held-out rows (FedSA: own B too)
        "client_eval_std": stats.get("client_eval_std"),
        "global_sha": stats.get("global_sha"),
        "wall_s": wall_s,
    }


def client_columns(plan: RoundPlan, pop: Population, sizes: np.ndarray, results: list | None,
                   profile: CostProfile, adversaries: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """clients.parquet rows of one round (selection order), as arrays.

    `results` are the trained clients' `ClientResult`s in arrival order (train mode); None in estimate mode,
    where nobody is trained and `trained` is false everywhere.
    """
    c = plan.columns
    ids = c["client_id"]
    failed = c["status"] == STATUSES.index("failed")
    attempted = (c["used"] | failed) & (results is not None)  # the clients given to the workers (arrival order)
    loss = np.full(len(ids), np.nan)
    source = np.full(len(ids), None, dtype=object)
    error = np.full(len(ids), None, dtype=object)
    quarantined = np.zeros(len(ids), bool)
    rows = np.flatnonzero(attempted)[np.argsort((c["start_s"] + c["finish_s"])[attempted], kind="stable")]
    for row, res in zip(rows, results or []):  # results come in arrival order
        loss[row], source[row], error[row] = res.loss, res.trained_from or None, res.error
        quarantined[row] = not res.finite and res.error is None
    quant = np.array([*profile.quantizations, ""], dtype=object)  # -1 (ineligible) picks ""
    ranks = np.array([*(profile.ranks or [0] * len(profile.quantizations)), 0], dtype=np.int32)
    return {
        "round": np.full(len(ids), plan.round),
        "client_id": ids,
        "device": np.array(pop.device_names, dtype=object)[pop.device[ids]],
        "network": np.array(pop.network_names, dtype=object)[pop.network[ids]],
        "status": np.array(STATUSES, dtype=object)[c["status"]],
        "failed_phase": np.array(PHASES, dtype=object)[c["failed_phase"]],
        "quantization": quant[c["quantization"]],
        "rank": ranks[c["quantization"]],
        **{k: c[k] for k in ("start_s", "t_download_s", "t_compute_s", "t_upload_s", "finish_s", "bytes_up",
                             "bytes_down", "energy_j", "version", "staleness")},
        "num_samples": sizes[ids],
        "trained": attempted & ~failed,
        "train_loss": loss,
        "trained_from": source,
        "quarantined": quarantined,
        "adversary": adversaries[ids] if adversaries is not None else np.zeros(len(ids), bool),
        "error": error,
    }


AGGREGATED = ("t_download_s", "t_compute_s", "t_upload_s", "bytes_up", "bytes_down", "energy_j")


def device_columns(plan: RoundPlan, pop: Population) -> dict[str, np.ndarray]:
    """clients_by_device.parquet rows of one round: per (device class, status) counts and summed costs."""
    c = plan.columns
    n_dev, n_st = len(pop.device_names), len(STATUSES)
    cell = pop.device[c["client_id"]].astype(np.int64) * n_st + c["status"]
    counts = np.bincount(cell, minlength=n_dev * n_st)
    keep = np.flatnonzero(counts)
    return {
        "round": np.full(len(keep), plan.round),
        "device_code": keep // n_st,  # for DeviceTotals; the ledger writes only its schema's columns
        "status_code": keep % n_st,
        "device": np.array(pop.device_names, dtype=object)[keep // n_st],
        "status": np.array(STATUSES, dtype=object)[keep % n_st],
        "clients": counts[keep],
        **{k: np.bincount(cell, weights=c[k], minlength=n_dev * n_st)[keep] for k in AGGREGATED},
    }


class DeviceTotals:
    """Per-device-class totals over the run (counts by status, time, bytes, energy)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.counts = np.zeros((len(names), len(STATUSES)), np.int64)
        self.sums = {k: np.zeros(len(names)) for k in AGGREGATED}

    def _fit(self) -> None:
        """Totals checkpointed by a fedsim with fewer statuses get zero columns for the new ones."""
        if self.counts.shape[1] < len(STATUSES):
            self.counts = np.pad(self.counts, ((0, 0), (0, len(STATUSES) - self.counts.shape[1])))

    def add(self, cols: dict[str, np.ndarray]) -> None:
        """Fold in one round's per-device rows (`device_columns`)."""
        self._fit()
        dev = cols["device_code"]
        np.add.at(self.counts, (dev, cols["status_code"]), cols["clients"])
        for k in AGGREGATED:
            np.add.at(self.sums[k], dev, cols[k])

    def table(self, pop: Population, profile: CostProfile) -> dict[str, dict[str, Any]]:
        """summary.json's per_device: eligibility share, fallback use, counts, time, bytes, energy, CO2."""
        self._fit()
        option = fitting_option(profile, pop)
        out = {}
        for i, name in enumerate(self.names):
            mine = pop.device == i
            row: dict[str, Any] = {"population": int(mine.sum()),
                                   "eligible_share": float(np.mean(option[mine] >= 0)) if mine.any() else 0.0}
            quants, ranks = np.array([*profile.quantizations, ""]), np.array([*profile.ranks, 0] if profile.ranks else [0])
            for quant in dict.fromkeys(profile.quantizations):
                row[f"share_{quant}"] = float(np.mean(quants[option[mine]] == quant)) if mine.any() else 0.0
            if profile.varied_ranks:
                for r in sorted(set(profile.base_ranks or profile.ranks)):  # at the devices' ranks (before pruning)
                    row[f"share_rank_{r}"] = float(np.mean(ranks[option[mine]] == r)) if mine.any() else 0.0
            row.update({s: int(self.counts[i, j]) for j, s in enumerate(STATUSES)})
            row.update({k: float(v[i]) for k, v in self.sums.items()})
            row["co2_g"] = row["energy_j"] / 3.6e6 * profile.grid_gco2_per_kwh
            out[name] = row
        return out


def summarize(rows: list[dict], initial_eval: float | None, extra: dict[str, Any], trained: bool = True,
              target: float | None = None) -> dict:
    """summary.json: totals over rounds, first and last eval loss, plus run facts in `extra`.

    clients_trained counts client updates trained for real (0 in estimate mode; completed_total counts the
    updates the server would have used either way).
    """
    evals = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    reached = [r["sim_time_s"] for r in rows if target is not None and r["eval_loss"] is not None
               and r["eval_loss"] <= target]
    total = {k: float(sum(r[k] for r in rows)) for k in ("bytes_up", "bytes_down", "energy_j", "server_energy_j",
                                                          "co2_g", "wasted_energy_j", "wasted_bytes",
                                                          "wasted_compute_s", "idle_client_s")}
    counts = {k: int(sum(r.get(k, 0) for r in rows)) for k in ("selected", *map(count_key, STATUSES))}
    sim_time = rows[-1]["sim_time_s"] if rows else 0.0
    return {
        "rounds": len(rows),
        "sim_time_s": sim_time,
        "sim_time_days": sim_time / 86400,
        **total,
        "energy_kwh": (total["energy_j"] + total["server_energy_j"]) / 3.6e6,
        "co2_kg": total["co2_g"] / 1000,
        **{f"{k}_total": v for k, v in counts.items()},
        "clients_trained": counts["completed"] if trained else 0,
        "initial_eval_loss": initial_eval,
        "final_eval_loss": evals[-1] if evals else initial_eval,
        "final_exact_match": next((r["exact_match"] for r in reversed(rows) if r.get("exact_match") is not None), None),
        "target_loss": target,
        "time_to_target_s": reached[0] if reached else (0.0 if target and initial_eval and initial_eval <= target
                                                         else None),
        "failed_rounds": int(sum(bool(r["failed"]) for r in rows)),
        **extra,
    }
