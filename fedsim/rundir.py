"""The run directory both modes write (see README: outputs) and the result object the API returns."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsim.atomic import atomic_write_text, fsync_dir
from fedsim.errors import ConfigError
from fedsim.scenario import Scenario, dump

MARKER = ".fedsim-run"  # written into every run directory fedsim creates; --overwrite deletes only these


@dataclass(frozen=True)
class RunResult:
    """What `fedsim.run` / `fedsim.estimate` return: the summary, every round's record, where the files are."""

    summary: dict[str, Any]
    rounds: list[dict[str, Any]]
    run_dir: Path


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a fedsim run directory: it has the marker, or (written before the marker existed)
    config.yaml together with rounds.jsonl or summary.json. Only such a directory may be deleted by --overwrite."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / MARKER).is_file():
        return True
    return (path / "config.yaml").is_file() and ((path / "rounds.jsonl").is_file() or (path / "summary.json").is_file())


def open_run_dir(out: str | Path | None, s: Scenario, overwrite: bool) -> Path:
    """Create the run directory with its marker and config.yaml.

    A non-empty directory is never touched without `overwrite`, and even with it only a fedsim run directory is
    deleted, so a mistyped --out cannot wipe a home directory or a source tree.
    """
    path = Path(out) if out else Path("runs") / s.name
    if path.exists() and not path.is_dir():
        raise ConfigError("--out", f"{path} exists and is not a directory")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ConfigError("--out", f"{path} exists and is not empty (choose another directory or --overwrite)")
        if not is_run_dir(path):
            raise ConfigError("--out", f"{path} is not a fedsim run directory; refusing to delete it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / MARKER, "fedsim run directory: fedsim --overwrite may delete it\n")
    atomic_write_text(path / "config.yaml", yaml.safe_dump(dump(s), sort_keys=False))
    fsync_dir(path.parent)
    return path


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """summary.json, written atomically (a crash leaves the previous one or none, never a torn file)."""
    atomic_write_text(path / "summary.json", json.dumps(summary, indent=2))
