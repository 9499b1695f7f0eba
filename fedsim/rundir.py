"""The run directory both modes write (see README: outputs) and the result object the API returns."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsim.errors import ConfigError
from fedsim.scenario import Scenario, dump


@dataclass(frozen=True)
class RunResult:
    """What `fedsim.run` / `fedsim.estimate` return: the summary, every round's record, where the files are."""

    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    run_dir: Path


def open_run_dir(out: str | Path | None, s: Scenario, overwrite: bool) -> Path:
    """Create the run directory with config.yaml; refuse to touch a non-empty one unless told to overwrite."""
    path = Path(out) if out else Path("runs") / s.name
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError("--out", f"{path} exists and is not empty (choose another directory or --overwrite)")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(dump(s), sort_keys=False))
    return path


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """summary.json."""
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
