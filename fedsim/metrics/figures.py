"""Report figures. Each is drawn only from tables in the run directory (rounds.jsonl, clients.parquet,
summary.json), so every number it shows can be loaded with pandas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

STATUS_COLORS = {"completed": "#2a9d8f", "late": "#f4a261", "dropped": "#e63946", "stale": "#8e6cc1",
                 "ineligible": "#adb5bd", "failed": "#343a40"}
PHASE_SHADES = (0.45, 1.0, 0.7)  # download, compute, upload (alpha)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (for figures drawn elsewhere, e.g. a sweep's)."""
    return _plt()


def save(fig, path: Path) -> Path:
    """Lay out, write as PNG at fedsim's resolution, close; returns `path`."""
    return _save(fig, path)


def timeline(clients: pd.DataFrame, rounds: pd.DataFrame, path: Path, max_clients: int = 80) -> Path:
    """Gantt of the first clients dispatched: download, compute and upload segments, coloured by status;
    dotted lines where rounds (server steps) close."""
    plt = _plt()
    rows = clients[clients.status != "ineligible"].sort_values(["start_s", "client_id"], kind="stable").head(max_clients)
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.16 * len(rows) + 1.2)))
    for y, r in enumerate(rows.itertuples()):
        t = r.start_s
        for dur, alpha in zip((r.t_download_s, r.t_compute_s, r.t_upload_s), PHASE_SHADES):
            ax.barh(y, dur, left=t, height=0.8, color=STATUS_COLORS[r.status], alpha=alpha, lw=0)
            t += dur
        if r.status in ("dropped", "late"):
            ax.plot([t], [y], marker="x" if r.status == "dropped" else "|", color="k", ms=5)
    if len(rows):
        horizon = (rows.start_s + rows.t_download_s + rows.t_compute_s + rows.t_upload_s).max()
        for end in rounds.sim_time_s[rounds.sim_time_s <= horizon * 1.02]:
            ax.axvline(end, color="k", ls=":", lw=0.8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STATUS_COLORS.values()]
    ax.legend(handles, STATUS_COLORS, fontsize=8, loc="lower right")
    ax.set_xlabel("virtual time (s)   [each bar: download (light) | compute | upload; x = dropped, | = cut off]")
    ax.set_ylabel("client dispatches")
    ax.invert_yaxis()
    return _save(fig, path)


def round_times(rounds: pd.DataFrame, path: Path) -> Path:
    """Round (server step) duration and client finish-time percentiles vs virtual time; straggler share."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    t = rounds.sim_time_s / 3600
    a.plot(t, rounds.duration_s, "k-", lw=2, label="round duration")
    for q, style in (("50", ":"), ("90", "--"), ("99", "-.")):
        a.plot(t, rounds[f"finish_p{q}_s"], style, label=f"client finish p{q}")
    a.set_xlabel("virtual time (h)")
    a.set_ylabel("seconds")
    a.legend(fontsize=8)
    b.plot(t, rounds.straggler_share, "o-", color=STATUS_COLORS["late"], label="stragglers (late + stale)")
    b.plot(t, rounds.dropped / rounds.selected.clip(lower=1), "s-", color=STATUS_COLORS["dropped"], label="dropped")
    b.set_xlabel("virtual time (h)")
    b.set_ylabel("share of the round's clients")
    b.legend(fontsize=8)
    return _save(fig, path)


def loss_curve(runs: dict[str, pd.DataFrame], path: Path, target: float | None = None,
               initial: dict[str, float | None] | None = None) -> Path:
    """Eval loss (markers, from the initial evaluation at time 0) and train loss (thin line) vs virtual time,
    one colour per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, rounds) in enumerate(runs.items()):
        color = f"C{i}"
        ax.plot(rounds.sim_time_s / 3600, rounds.train_loss, color=color, lw=1, alpha=0.5)
        ev = rounds.dropna(subset=["eval_loss"])
        t, y = list(ev.sim_time_s / 3600), list(ev.eval_loss)
        if initial and initial.get(name) is not None:
            t, y = [0.0, *t], [initial[name], *y]
        ax.plot(t, y, "o-", color=color, lw=2, label=f"{name} eval loss".strip())
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target}")
    ax.set_xlabel("virtual time (h)")
    ax.set_ylabel("loss (thin: train)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def cost_breakdown(rounds: pd.DataFrame, per_device: dict, path: Path) -> Path:
    """Per device class energy and bytes split into used and wasted; per-round client status counts."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = list(per_device)
    x = np.arange(len(names))
    energy = np.array([per_device[n]["energy_j"] for n in names]) / 3.6e6
    a.bar(x, energy, color="#457b9d")
    a.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    a.set_ylabel("client energy (kWh)")
    ax2 = a.twinx()
    ax2.plot(x, [per_device[n]["eligible_share"] for n in names], "k^", label="eligible share")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("eligible share")
    bottom = np.zeros(len(rounds))
    from fedsim.schedules.base import count_key

    for status, color in STATUS_COLORS.items():
        key = count_key(status)  # "failed" is the round's quorum flag; its clients count is failed_clients
        if key in rounds:
            b.bar(rounds["round"], rounds[key], bottom=bottom, color=color, label=status, width=0.9)
            bottom += rounds[key].to_numpy()
    b.set_xlabel("round")
    b.set_ylabel("clients")
    b.legend(fontsize=8)
    return _save(fig, path)


def staleness_hist(clients: pd.DataFrame, path: Path) -> Path | None:
    """Histogram of the staleness of arrived updates (async runs), used vs discarded."""
    arrived = clients[clients.status.isin(["completed", "stale"])]
    if arrived.empty or arrived.staleness.max() <= 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.arange(arrived.staleness.max() + 2) - 0.5
    for status in ("completed", "stale"):
        part = arrived[arrived.status == status]
        ax.hist(part.staleness, bins=bins, color=STATUS_COLORS[status], label=status, alpha=0.85)
    ax.set_xlabel("staleness (server versions since dispatch)")
    ax.set_ylabel("updates")
    ax.legend(fontsize=8)
    return _save(fig, path)


def compare_costs(runs: dict[str, pd.DataFrame], path: Path) -> Path:
    """Cumulative client energy and round duration vs virtual time for several runs on shared axes."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, r) in enumerate(runs.items()):
        a.plot(r.sim_time_s / 3600, r.energy_j.cumsum() / 3.6e6, color=f"C{i}", lw=2, label=name)
        b.plot(r.sim_time_s / 3600, r.duration_s, color=f"C{i}", lw=1.5, label=name)
    a.set_xlabel("virtual time (h)")
    a.set_ylabel("cumulative client energy (kWh)")
    b.set_xlabel("virtual time (h)")
    b.set_ylabel("round duration (s)")
    a.legend(fontsize=8)
    return _save(fig, path)


def evaluation(rounds: pd.DataFrame, path: Path) -> Path | None:
    """Exact-match accuracy of the global model (overall, and per task family) and the per-client evaluation
    (mean and spread of clients' own held-out loss) vs virtual time; None when no round was evaluated."""
    ev = rounds.dropna(subset=["exact_match"]) if "exact_match" in rounds else rounds.iloc[:0]
    if ev.empty:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    t = ev.sim_time_s / 3600
    left.plot(t, 100 * ev.exact_match, "o-", color="k", lw=2, label="all tasks")
    by_task = [r for r in ev.get("exact_match_by_task", []) if isinstance(r, dict)]
    if len(by_task) == len(ev):
        for task in sorted(by_task[0]):
            left.plot(t, [100 * r.get(task, float("nan")) for r in by_task], lw=1, alpha=0.7, label=task)
    left.set_xlabel("virtual time (h)")
    left.set_ylabel("exact match (%)")
    left.set_ylim(-2, 102)
    left.legend(fontsize=7, ncol=2)
    if "client_eval_mean" in ev and ev.client_eval_mean.notna().any():
        c = ev.dropna(subset=["client_eval_mean"])
        right.errorbar(c.sim_time_s / 3600, c.client_eval_mean, yerr=c.client_eval_std, fmt="o-", capsize=3,
                       label="clients' own held-out rows (mean +- sd)")
    right.plot(t, ev.eval_loss, "s--", color="gray", label="global eval set")
    right.set_xlabel("virtual time (h)")
    right.set_ylabel("eval loss")
    right.legend(fontsize=8)
    return _save(fig, path)
