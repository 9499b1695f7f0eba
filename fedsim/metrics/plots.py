"""Figures of a run directory, drawn from the same numbers its JSONL/JSON files hold (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def budget_figure(run_dir: Path, rounds: list[dict[str, Any]], per_device: dict[str, dict[str, Any]]) -> Path:
    """budget.png: cumulative GB, kWh and kg CO2 over virtual time, and each device class's share.

    The curves are cumulative sums of rounds.jsonl fields (bytes_*, wasted_bytes, energy_j, server_energy_j,
    wasted_energy_j, co2_g); the bars come from summary.json's per_device.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["sim_time_s"] for r in rounds]) / 3600

    def cum(key: str, scale: float) -> np.ndarray:
        return np.cumsum([r.get(key, 0.0) / scale for r in rounds])

    panels = [
        ("data moved (GB)", {"down": cum("bytes_down", 1e9), "up": cum("bytes_up", 1e9),
                             "wasted": cum("wasted_bytes", 1e9)}),
        ("energy (kWh)", {"clients": cum("energy_j", 3.6e6), "server": cum("server_energy_j", 3.6e6),
                          "wasted (clients)": cum("wasted_energy_j", 3.6e6)}),
        ("CO2 (kg)", {"clients + server": cum("co2_g", 1000)}),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (label, lines) in zip(axes.flat, panels):
        for name, y in lines.items():
            ax.plot(t, y, lw=2, label=name)
        ax.set_xlabel("virtual time (h)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[3]
    names = list(per_device)
    x = np.arange(len(names))
    for i, (key, label) in enumerate([("energy_j", "energy"), ("bytes", "bytes"), ("completed", "updates used")]):
        vals = np.array([per_device[n]["bytes_up"] + per_device[n]["bytes_down"] if key == "bytes"
                         else per_device[n][key] for n in names], dtype=float)
        ax.bar(x + (i - 1) * 0.27, vals / max(vals.sum(), 1e-12), width=0.27, label=label)
    ax.plot(x, [per_device[n]["eligible_share"] for n in names], "k^", label="eligible share")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.suptitle(f"{rounds[-1]['round'] if rounds else 0} rounds: budget")
    fig.tight_layout()
    path = run_dir / "budget.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
