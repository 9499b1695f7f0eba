"""Read a user's YAML file that must hold a mapping, with errors that name the key it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedsim.errors import ConfigError


def read_mapping(path: str | Path, key: str, expected: str) -> dict[str, Any]:
    """Parsed mapping of `path`; a ConfigError naming `key` if it is missing, not YAML, or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(key, f"file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(key, f"{path}: expected a mapping of {expected}")
    return data
