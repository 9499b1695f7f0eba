"""Aggregator memory against the cohort: K = 10 vs 1,000 client updates folded into one server step.

The aggregator's own code (`fedsim.runtime.aggregator.Aggregator`, the class the Ray actor wraps) in a fresh
process per variant, with an adapter of 1,048,576 float32 parameters (4 MiB; 16 tensors of 65,536, about a
LoRA r=8 on q/v of a 1B model). Each update is generated, put (the payload dict the worker returns), and
dropped by the caller, as a Ray object would be once the aggregator has folded it; the step is then finished.
Reported: the process's peak RSS (ru_maxrss) before the step (imports, ledger, global state) and after it, and
the ratio K = 1,000 / K = 10 of the peak.

* FedAdam (`server.optimizer: adam`, the streaming mean): O(adapter) whatever K -- target <= 1.2x.
* FedAdam + SCAFFOLD: the control deltas stream into a second running sum -- O(adapter) too.
* coordinate-wise median (`server.aggregation: median`): holds the cohort, O(K x adapter) -- reported.

    python benchmarks/aggregation_memory.py [--clients 10 1000]

Run it alone. Results: benchmarks/results/aggregation_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TENSORS, SIZE = 16, 65_536
VARIANTS = {"fedadam": {"server.optimizer": "adam"},
            "scaffold": {"server.optimizer": "adam", "server.strategy": "scaffold"},
            "median": {"server.aggregation": "median"}}

CHILD = """
import json, resource, sys, time
import numpy as np
from fedsim.client_round import ClientResult
from fedsim.runtime.aggregator import Aggregator
from fedsim.scenario import dump, load
over, k, tensors, size, run_dir = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
scenario = dump(load({}, {**over, "server.clients_per_round": max(k, 1), "server.over_selection": 1.0,
                          "population.num_clients": max(2 * k, 1000)}))
names = [f"layer{i:02d}.lora" for i in range(tensors)]
agg = Aggregator(run_dir, {n: np.zeros(size, np.float32) for n in names}, scenario)
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = rss()
t0 = time.perf_counter()
agg.begin(1)
rng = np.random.default_rng(0)
for seq in range(k):
    delta = {n: rng.standard_normal(size, dtype=np.float32) * 1e-3 for n in names}
    payload = {"delta": delta}
    if over.get("server.strategy") == "scaffold":  # its control delta streams too (client variates go to disk)
        payload["control"] = {n: rng.standard_normal(size, dtype=np.float32) * 1e-3 for n in names}
    agg.put(seq, 1.0, ClientResult(seq, 1, 10, 1.0, "-", True), payload)
    del delta, payload
agg.finish()
print(json.dumps({"rss_before": before, "rss_peak": rss(), "step_s": time.perf_counter() - t0}))
"""


def measure(over: dict, k: int) -> dict:
    """One fresh process: peak RSS before and after folding k updates."""
    with tempfile.TemporaryDirectory() as run_dir:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(over), str(k), str(TENSORS), str(SIZE), run_dir],
                             capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure every variant at every K, print a table, write benchmarks/results/aggregation_memory.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 1000])
    args = ap.parse_args()
    results = {"adapter_params": TENSORS * SIZE, "adapter_bytes": TENSORS * SIZE * 4, "variants": {}}
    for name, over in VARIANTS.items():
        rows = {k: measure(over, k) for k in args.clients}
        lo, hi = rows[min(rows)], rows[max(rows)]
        results["variants"][name] = {"by_clients": rows, "peak_ratio": hi["rss_peak"] / lo["rss_peak"]}
        for k, r in rows.items():
            print(f"{name:8s} K={k:5d}  RSS before {r['rss_before'] / 2**20:7.1f} MiB  peak {r['rss_peak'] / 2**20:7.1f} "
                  f"MiB  step {r['step_s']:6.2f} s")
        print(f"{name:8s} peak ratio K={max(rows)} / K={min(rows)}: {results['variants'][name]['peak_ratio']:.2f}x")
    out = ROOT / "benchmarks" / "results" / "aggregation_memory.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
