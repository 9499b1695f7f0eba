"""A sweep's results: sweep.parquet (one row per trial: its values, status and summary numbers) and figures
drawn only from that table, so every point a figure shows can be loaded with pandas."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.atomic import atomic_write_bytes
from fedsim.errors import one_line
from fedsim.sweeps.config import ROUND_METRICS, FigureConfig, SweepConfig

DEFAULT_Y = ("sim_time_s", "bytes_up", "energy_kwh")  # drawn against every swept key, after the sweep's metric


def scalars(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's single numbers, strings and flags (not its per-device tables or timeline)."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}


def collect(cfg: SweepConfig, grid, out: Path) -> pd.DataFrame:
    """One row per trial of Tune's ResultGrid: trial_id, status (completed | stopped: a scheduler ended it
    early | error), its swept values (columns named by their dotted keys), the round it reached, and the
    numbers of its run directory's summary.json (for a stopped trial: only what it last reported), and its
    newest train and eval loss. Written
    atomically to OUT/sweep.parquet, ordered by the swept values."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        run_dir = out / "trials" / trial_id
        summary_file = run_dir / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        complete = bool(summary and summary.get("complete", True))
        status = "completed" if complete else "error" if result.error else "stopped"
        row: dict[str, Any] = {"trial_id": trial_id, "status": status,
                               **{k: (result.config or {}).get(k) for k in cfg.swept}}
        row["round_reached"] = metrics.get("round")
        known = {k: metrics[k] for k in ROUND_METRICS if k in metrics}  # the newest losses it reported
        known.update(scalars(summary) if complete else {})
        row.update({k: v for k, v in known.items() if k not in row})
        row["error"] = one_line(result.error) if result.error else None
        row["run_dir"] = str(run_dir.relative_to(out))
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table) and cfg.swept:
        table = table.sort_values([*cfg.swept, "trial_id"], kind="stable", key=_sortable).reset_index(drop=True)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write_bytes(out / "sweep.parquet", buf.getvalue())
    return table


def _sortable(col: pd.Series) -> pd.Series:
    """Mixed columns (numbers and strings, None) sort by their text."""
    try:
        return pd.to_numeric(col)
    except (ValueError, TypeError):
        return col.astype(str)


def figures_of(cfg: SweepConfig) -> list[FigureConfig]:
    """The sweep's figures, or by default the metric, virtual time, upload bytes and energy against each swept
    key (seeds excepted), one line per value of the next swept key."""
    if cfg.figures:
        return list(cfg.figures)
    keys = [k for k in cfg.swept if k != "seed"]
    out = []
    for i, x in enumerate(keys):
        hue = next((k for k in keys[i + 1:] + keys[:i]), None)
        out += [FigureConfig(x=x, y=y, hue=hue) for y in dict.fromkeys((cfg.metric, *DEFAULT_Y))]
    return out


def draw(cfg: SweepConfig, table: pd.DataFrame, where: Path) -> list[Path]:
    """PNG figures of the completed trials: each `y` averaged over seeds and every key not drawn, with
    min-max bars. A figure whose `y` no completed trial has is skipped."""
    from fedsim.metrics.figures import pyplot, save

    done = (table[table["status"] == "completed"] if len(table) else table).copy()
    for key in cfg.swept:  # a list or mapping value (e.g. runtime.fail_clients) is drawn as its text
        if key in done and done[key].map(lambda v: isinstance(v, (list, dict, tuple, np.ndarray))).any():
            done[key] = done[key].map(str)
    paths = []
    for fig_cfg in figures_of(cfg):
        if fig_cfg.y not in done or done[fig_cfg.y].isna().all():
            continue
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        groups = [(None, done)] if fig_cfg.hue is None else list(done.groupby(fig_cfg.hue, dropna=False, sort=True))
        numeric = pd.api.types.is_numeric_dtype(done[fig_cfg.x])
        order = sorted(done[fig_cfg.x].dropna().unique().tolist(), key=lambda v: v if numeric else str(v))
        for label, sub in groups:
            stats = sub.groupby(fig_cfg.x)[fig_cfg.y].agg(["mean", "min", "max"]).reindex(order).dropna()
            xs = stats.index.to_numpy(dtype=float) if numeric else np.array([order.index(v) for v in stats.index])
            ax.errorbar(xs, stats["mean"], yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
                        marker="o", capsize=3, label=None if label is None else f"{fig_cfg.hue}={label}")
        if not numeric:
            ax.set_xticks(range(len(order)), [str(v) for v in order])
        ax.set_xlabel(fig_cfg.x)
        ax.set_ylabel(fig_cfg.y)
        ax.set_title(f"{cfg.name}: {fig_cfg.y} vs {fig_cfg.x}")
        if fig_cfg.hue is not None:
            ax.legend(fontsize=8)
        where.mkdir(parents=True, exist_ok=True)
        paths.append(save(fig, where / f"{_slug(fig_cfg.y)}_vs_{_slug(fig_cfg.x)}.png"))
    return paths


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)
