"""The DeepSpeed local step's costs vs the plain torch engine, on one worker's work (tiny model, quickstart's
training: 5 steps of batch 8, one thread).

Each variant runs in a fresh process, as a worker would: load the model, build the engine once (timed:
`deepspeed.initialize`, the one-off cost of a worker), then train the same clients from the same global adapter
(mean seconds per client after two warm-up clients) and check the updates against the plain engine's.

    python benchmarks/deepspeed_engine.py [--clients 12]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(ROOT / ".cache/hf"),
             "FEDSIM_CACHE": str(ROOT / ".cache/fedsim"), "RAY_AUTH_MODE": "disabled",
             "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache/torch_extensions")}.items():
    os.environ.setdefault(k, v)
sys.path.insert(0, str(ROOT))

DS = {"runtime.engine": "deepspeed"}
VARIANTS = {
    "torch": {},
    "zero0": {**DS, "runtime.deepspeed.zero_stage": 0},
    "zero1": {**DS, "runtime.deepspeed.zero_stage": 1},
    "zero2": {**DS, "runtime.deepspeed.zero_stage": 2},
    "zero2+offload_optimizer": {**DS, "runtime.deepspeed.offload_optimizer": "cpu"},
    "zero3": {**DS, "runtime.deepspeed.zero_stage": 3},
    "zero3 (every tensor partitioned)": {**DS, "runtime.deepspeed.zero_stage": 3,
                                         "runtime.deepspeed.persistence_threshold": 0},
    "zero3+offload both": {**DS, "runtime.deepspeed.zero_stage": 3, "runtime.deepspeed.offload_optimizer": "cpu",
                           "runtime.deepspeed.offload_param": "cpu"},
}


def one(name: str, clients: int) -> dict:
    """In this process: build the model (and engine) of one variant, train `clients` clients; timings, updates."""
    import time

    import numpy as np
    import torch

    from fedsim.data.prepare import prepare_data
    from fedsim.data.reader import DataReader
    from fedsim.logs import quiet_libraries
    from fedsim.models.base import ensure_base_model
    from fedsim.models.local import load_local_model, train_client
    from fedsim.scenario import load

    quiet_libraries()
    torch.set_num_threads(1)
    s = load(ROOT / "scenarios" / "quickstart.yaml", VARIANTS[name])
    model_dir = str(ensure_base_model(s.model))
    data = prepare_data(s, model_dir, log=lambda _: None)
    reader = DataReader(data.spec)
    lm, init_s = load_local_model(model_dir, s.peft, s.runtime.train_dtype), 0.0
    start = lm.get_state()
    if s.runtime.engine == "deepspeed":
        from fedsim.models.deepspeed_step import deepspeed_model

        lm = deepspeed_model(lm, s)
        init_s = lm.init_s
    seconds, deltas = [], {}
    for c in range(clients):
        ids, labels, _ = reader.client(c, data.client_rows(c))
        t = time.perf_counter()
        delta, _ = train_client(lm, start, ids, labels, s.training, s.seed, 1, c)
        seconds.append(time.perf_counter() - t)
        deltas[c] = {k: v.tolist() for k, v in delta.items()}
    return {"init_s": init_s, "client_s": float(np.mean(seconds[2:])), "deltas": deltas}


def main() -> None:
    """Every variant in a fresh process; print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.clients)))
        return
    import numpy as np

    out = {}
    for name in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--clients", str(args.clients)],
                              capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain = out["torch"]
    rows = {}
    for name, r in out.items():
        diff = max(float(np.abs(np.array(r["deltas"][c][k]) - np.array(plain["deltas"][c][k])).max())
                   for c in plain["deltas"] for k in plain["deltas"][c])
        rows[name] = {"init_s": round(r["init_s"], 3), "client_s": round(r["client_s"], 4),
                      "vs_plain": round(r["client_s"] / plain["client_s"], 2), "max_update_diff": diff}
        print(f"{name:34s} init {r['init_s']:6.2f} s  client {r['client_s'] * 1e3:6.1f} ms "
              f"({rows[name]['vs_plain']:.2f}x)  max |update - plain| {diff:.1e}")
    (ROOT / "benchmarks" / "results" / "deepspeed_engine.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
