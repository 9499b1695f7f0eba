"""Where fedsim caches things it builds once (base model, tokenized data, model-shape counts)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """$FEDSIM_CACHE (default ~/.cache/fedsim) / parts, created."""
    root = Path(os.environ.get("FEDSIM_CACHE", Path.home() / ".cache" / "fedsim"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(obj: Any, n: int = 16) -> str:
    """Stable short hash of JSON-able data (cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]
