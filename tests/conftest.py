"""Test environment: offline hubs, caches inside the repo's ignored .cache/, one Ray instance per session."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": str(ROOT / ".cache" / "hf"),
    "FEDSIM_CACHE": str(ROOT / ".cache" / "fedsim"),
    "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"),
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)
