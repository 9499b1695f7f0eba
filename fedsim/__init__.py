"""fedsim: simulate federated fine-tuning of LLMs (LoRA via peft) with virtual clients on a Ray actor pool.

    import fedsim
    result = fedsim.run("scenarios/quickstart.yaml", overrides={"server.rounds": 5}, out="runs/qs")
    result.summary["final_eval_loss"], result.rounds[-1], result.run_dir

Heavy libraries (torch, transformers, peft, ray) load only when a run needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fedsim.rundir import RunResult
    from fedsim.scenario.schema import Scenario
    from fedsim.sweeps.runner import SweepResult


def run(scenario=None, overrides: dict[str, Any] | list[str] | None = None, out=None, overwrite: bool = False,
        quiet: bool = False, resume=None, stop_after: int | None = None, report: str = "inline") -> RunResult:
    """Run a scenario (path, dict or Scenario) in train mode; returns summary, per-round records, run dir.

    `stop_after=N` stops after round N with a checkpoint; `resume=RUN_DIR` continues from its newest one.
    `report`: "inline" (report.html written before returning), "background" (a detached process) or "off".
    """
    from fedsim.runtime.engine import run as _run

    return _run(scenario, overrides, out, overwrite=overwrite, quiet=quiet, resume=resume, stop_after=stop_after,
                report=report)


def estimate(scenario, overrides: dict[str, Any] | list[str] | None = None, out=None, overwrite: bool = False,
             quiet: bool = True) -> RunResult:
    """Compute a scenario's costs without training (vectorized); same run-directory contract, null losses."""
    from fedsim.estimator import estimate as _estimate

    return _estimate(scenario, overrides, out, overwrite=overwrite, quiet=quiet)


def sweep(path, overrides: dict[str, Any] | list[str] | None = None, out=None, overwrite: bool = False,
          quiet: bool = True) -> SweepResult:
    """Run (or, into the same `out`, resume) a sweep file on Ray Tune; returns its table (sweep.parquet as a
    DataFrame), directory and figures. See scenarios/sweeps/."""
    from fedsim.sweeps.runner import sweep as _sweep

    return _sweep(path, overrides, out, overwrite=overwrite, quiet=quiet)


def validate(scenario, overrides: dict[str, Any] | list[str] | None = None) -> Scenario:
    """Load and check a scenario without running it; raises fedsim.errors.ConfigError naming the bad key."""
    from fedsim.scenario import load

    return load(scenario, overrides)
