"""The simulator's own scaling: client updates per second and start-up against the number of worker actors.

Each variant is a fresh `fedsim run` process (the CLI, as a user runs it) of one scenario with N worker actors;
from its rounds.jsonl and summary.json:
  - updates/s: client updates trained per second of wall time over the steady rounds (after `--warmup`),
  - start-up: process start to the first round dispatched (summary.json's startup_s),
  - efficiency: updates/s per worker relative to the 1-worker (or smallest N) variant.
More clients per round than workers keep every worker busy (`--clients-per-round`, default 4 x the largest N).

Here (2 cores):       python benchmarks/scaling.py                       # N = 1, 2
On a Ray cluster:     python benchmarks/scaling.py --cluster clusters/ray-cluster.yaml --workers 1,4,16,64
(run on the head node after `ray up clusters/ray-up.yaml`, or inside the KubeRay head pod; the cluster spec's
`worker` resources decide how many fit on each node). Raw numbers: benchmarks/results/scaling[-NAME].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(ROOT / ".cache/hf"),
             "FEDSIM_CACHE": str(ROOT / ".cache/fedsim"), "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(k, v)


def one_run(args, workers: int, out: Path) -> dict:
    """One fresh `fedsim run` with `workers` worker actors; its throughput and start-up."""
    cmd = [sys.executable, "-m", "fedsim", "run", args.scenario, "--out", str(out), "--overwrite", "--quiet",
           "--report", "off", "--set", f"runtime.num_workers={workers}", "--set", f"server.rounds={args.rounds}",
           "--set", f"server.clients_per_round={args.clients_per_round}", "--set", "server.eval_every=0",
           "--set", "population.dropout=0", "--set", "server.deadline_s=null"]
    if args.cluster:
        cmd += ["--set", f"runtime.cluster={args.cluster}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    process_s = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()][args.warmup:]
    summary = json.loads((out / "summary.json").read_text())
    updates = sum(r["completed"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    return {"process_s": process_s, "startup_s": summary["startup_s"], "updates": updates,
            "steady_wall_s": wall, "updates_per_s": updates / wall, "num_workers": summary["num_workers"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="scenarios/quickstart.yaml")
    p.add_argument("--workers", default="1,2", help="comma-separated numbers of worker actors")
    p.add_argument("--cluster", help="a cluster spec (clusters/*.yaml); default: a local Ray on this machine")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="first rounds left out of the throughput")
    p.add_argument("--clients-per-round", type=int, default=0, help="default: 4 x the largest number of workers")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--name", default="", help="suffix of the results file (e.g. the cluster's name)")
    args = p.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    args.clients_per_round = args.clients_per_round or 4 * max(counts)
    results: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repetitions):  # interleaved: drift on a shared machine hits every N alike
            for n in counts:
                results[n].append(one_run(args, n, Path(tmp) / f"w{n}-{rep}"))
    base = counts[0]
    table = {}
    for n in counts:
        med = {k: statistics.median(r[k] for r in results[n]) for k in ("process_s", "startup_s", "updates_per_s")}
        med["efficiency"] = med["updates_per_s"] / n / (statistics.median(r["updates_per_s"] for r in results[base])
                                                         / base)
        med["per_repetition_updates_per_s"] = [r["updates_per_s"] for r in results[n]]
        table[n] = med
    print(f"{'workers':>8s} {'updates/s':>10s} {'efficiency':>11s} {'start-up s':>11s} {'process s':>10s}")
    for n, m in table.items():
        print(f"{n:8d} {m['updates_per_s']:10.2f} {m['efficiency']:11.2f} {m['startup_s']:11.2f} {m['process_s']:10.2f}")
    dest = ROOT / "benchmarks" / "results" / f"scaling{'-' + args.name if args.name else ''}.json"
    dest.write_text(json.dumps({"scenario": args.scenario, "cluster": args.cluster or "local", "rounds": args.rounds,
                                "warmup_rounds_excluded": args.warmup, "clients_per_round": args.clients_per_round,
                                "repetitions": args.repetitions, "cpus": os.cpu_count(),
                                "by_workers": table}, indent=1) + "\n")
    print(f"-> {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
