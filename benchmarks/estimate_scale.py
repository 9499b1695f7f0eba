"""Estimate-mode scale: the whole `fedsim estimate` command for 1,000,000 clients, 1,000 rounds, 1,000 selected
per round (Llama-2-7B LoRA budget scenario), in a fresh process each time: wall time and peak RSS.

The model-shape count (torch + transformers + peft on the meta device) is cached by config on first use; the
first call below starts from an empty cache (cold) and is reported separately from the warm repetitions.

    python benchmarks/estimate_scale.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCALE = ["--set", "population.num_clients=1000000", "--set", "server.rounds=1000",
         "--set", "server.clients_per_round=1000", "--set", "server.over_selection=1.0"]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of cmd run in a fresh child process (measured by a wrapper process)."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True, cwd=ROOT)
    wall, rss_kb = out.stdout.split()
    return float(wall), float(rss_kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="scenarios/llama2-7b-budget.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fedsim-est-"))
    os.environ["FEDSIM_CACHE"] = str(out / "cache")  # empty: the first call counts the model shape cold
    fedsim = [sys.executable, "-m", "fedsim", "estimate", args.scenario, "--quiet", "--overwrite", *SCALE]
    warm = timed([*fedsim, "--out", str(out / "warm")])
    runs = [timed([*fedsim, "--out", str(out / f"r{i}")]) for i in range(args.repeat)]
    summary = json.loads((out / "r0" / "summary.json").read_text())
    report = {
        "scenario": args.scenario, "clients": 1_000_000, "rounds": 1000, "selected_per_round": 1000,
        "first_call_s": warm[0], "first_call_rss_mib": warm[1],
        "wall_s": [r[0] for r in runs], "peak_rss_mib": [r[1] for r in runs],
        "median_wall_s": statistics.median(r[0] for r in runs), "max_rss_mib": max(r[1] for r in runs),
        "client_rounds": summary["selected_total"], "sim_time_days": summary["sim_time_days"],
    }
    print(json.dumps(report, indent=1))
    (ROOT / "benchmarks/results/estimate_scale.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
