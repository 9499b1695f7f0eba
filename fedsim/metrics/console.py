"""Console output: a progress bar over rounds (virtual time, bytes, loss) and a final summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def human_bytes(n: float) -> str:
    """1234567 -> '1.23 MB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


def human_time(s: float) -> str:
    """Seconds -> '1h02m', '3m05s', '4.2s'."""
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{s:.3g}s"


class RunConsole:
    """Progress while rounds run, a table at the end; silent when quiet."""

    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, quiet=quiet)
        self.progress: Progress | None = None
        self._bytes = 0.0
        self._loss = "-"

    def log(self, msg: str) -> None:
        """A status line."""
        self.console.print(f"[dim]fedsim[/dim] {msg}")

    def start(self, rounds: int, done: int = 0) -> None:
        """Begin the round progress bar (`done` rounds already run, when resuming)."""
        self.progress = Progress(
            TextColumn("round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("rounds", total=rounds, completed=done, info="")

    def update(self, row: dict[str, Any]) -> None:
        """Advance by one closed round."""
        self._bytes += row["bytes_up"] + row["bytes_down"]
        loss = row["eval_loss"] if row["eval_loss"] is not None else row["train_loss"]
        if loss is not None:
            self._loss = f"{loss:.3f}" + (" eval" if row["eval_loss"] is not None else " train")
        info = f"virtual {human_time(row['sim_time_s'])} | {human_bytes(self._bytes)} | loss {self._loss}"
        self.progress.update(self.task, advance=1, info=info)

    def stop(self) -> None:
        """Stop the progress bar (on an error path: the terminal gets its cursor back)."""
        if self.progress:
            self.progress.stop()
            self.progress = None

    def finish(self, summary: dict[str, Any], run_dir: str) -> None:
        """Stop the bar and print the summary table."""
        if self.progress:
            self.progress.stop()
        table = Table(title=f"fedsim {'estimate' if summary.get('mode') == 'estimate' else 'run'}: {run_dir}",
                      show_header=False)
        fmt = {
            "rounds": str, "sim_time_s": human_time, "wall_time_s": lambda v: f"{v:.1f}s",
            "bytes_up": human_bytes, "bytes_down": human_bytes, "energy_j": lambda v: f"{v / 3.6e6:.4g} kWh",
            "server_energy_j": lambda v: f"{v / 3.6e6:.4g} kWh",
            "co2_g": lambda v: f"{v:.4g} g", "clients_trained": str, "completed_total": str, "dropped_total": str, "late_total": str,
            "ineligible_total": str, "initial_eval_loss": lambda v: f"{v:.4f}", "final_eval_loss": lambda v: f"{v:.4f}",
        }
        for key, f in fmt.items():
            if summary.get(key) is not None:
                table.add_row(key, f(summary[key]))
        self.console.print(table)
