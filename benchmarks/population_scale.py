"""Train mode at population scale: the same small workload with 1k, 10k, 100k and 1M virtual clients.

The workload a new user tried (issue: "train mode at population scale"): fedsim's tiny Llama, LoRA r=8 on
q/v, 10 clients a round, 5 local steps of 4 x 128 tokens, 2 worker actors, 20 rounds; only
`population.num_clients` changes. Each variant runs `fedsim run` as a fresh process, twice:

* cold: an empty FEDSIM_CACHE (the tiny base model is built, model shapes are counted, nothing is cached);
* warm: the same cache again.

Measured from outside the process: wall time (launch -> exit) and the peak, over the run, of the memory summed
over every process of the run (the driver and all its descendants: Ray's GCS, raylet, dashboard, workers and
actors), sampled every 50 ms. Two sums are reported: RSS (shared pages counted once per process, as the issue
measured) and PSS (shared pages split between the processes that map them: what the run really occupies).
From inside (summary.json timeline): process start -> first round dispatched, and last round -> exit.

    python benchmarks/population_scale.py [--sizes 1000 10000 100000 1000000] [--rounds 20]

Run it alone (nothing else heavy on the machine). Results: benchmarks/results/population_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ["--set", "server.rounds={rounds}", "--set", "server.clients_per_round=10", "--set", "server.over_selection=1.3",
            "--set", "training.local_steps=5", "--set", "training.batch_size=4", "--set", "training.seq_len=128",
            "--set", "runtime.num_workers=2", "--set", "peft.r=8", "--set", "peft.target_modules=[q_proj, v_proj]"]


def _tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(RSS sum, PSS sum) over `root` and all of its descendants, in bytes."""
    rss = pss = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return rss, pss


def measure(num_clients: int, rounds: int, cache: str, out: Path) -> dict:
    """One `fedsim run` in a fresh process with FEDSIM_CACHE=cache; wall time, peak memory, timeline."""
    env = {**os.environ, "FEDSIM_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled", "HF_HOME": str(ROOT / ".cache" / "hf")}
    args = [sys.executable, "-m", "fedsim", "run", str(ROOT / "scenarios" / "quickstart.yaml"), "--out", str(out),
            "--overwrite", "--quiet", "--set", f"population.num_clients={num_clients}",
            *[a.format(rounds=rounds) for a in WORKLOAD]]
    t0 = time.time()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak = {"rss": 0, "pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _tree_memory(root)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0].decode(errors="replace")
    end = time.time()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"fedsim run failed ({num_clients} clients):\n{output[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    tl = summary["timeline"]
    for _ in range(600):  # the report is drawn by a detached process: let it finish before the next run
        if (out / "report.html").is_file():
            break
        time.sleep(0.1)
    return {"num_clients": num_clients, "wall_s": end - t0, "peak_rss_gib": peak["rss"] / 2**30,
            "peak_pss_gib": peak["pss"] / 2**30, "first_dispatch_s": tl["first_dispatch"] - tl["process_start"],
            "first_round_s": tl["first_round"] - tl["process_start"], "finish_s": end - tl["last_round"],
            "final_eval_loss": summary["final_eval_loss"], "clients_trained": summary["clients_trained"]}


def main() -> None:
    """Cold then warm run per population size; write the JSON and print a Markdown table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedsim-popscale-") as tmp:
        for n in args.sizes:
            cache = Path(tmp) / f"cache-{n}"
            for kind in ("cold", "warm"):
                r = {"cache": kind, **measure(n, args.rounds, str(cache), Path(tmp) / f"run-{n}-{kind}")}
                results.append(r)
                print(json.dumps(r), flush=True)
    base = {r["cache"]: r for r in results if r["num_clients"] == args.sizes[0]}
    for r in results:
        r["wall_vs_smallest"] = r["wall_s"] / base[r["cache"]]["wall_s"]
        r["rss_vs_smallest"] = r["peak_rss_gib"] / base[r["cache"]]["peak_rss_gib"]
        r["pss_vs_smallest"] = r["peak_pss_gib"] / base[r["cache"]]["peak_pss_gib"]
    dest = ROOT / "benchmarks" / "results" / "population_scale.json"
    dest.write_text(json.dumps({"rounds": args.rounds, "workload": WORKLOAD, "results": results}, indent=2))
    print("| clients | cache | wall s | x smallest | peak RSS sum GiB | x | peak PSS sum GiB | x | first dispatch s "
          "| last round -> exit s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['num_clients']:,} | {r['cache']} | {r['wall_s']:.1f} | {r['wall_vs_smallest']:.2f} | "
              f"{r['peak_rss_gib']:.2f} | {r['rss_vs_smallest']:.2f} | {r['peak_pss_gib']:.2f} | "
              f"{r['pss_vs_smallest']:.2f} | {r['first_dispatch_s']:.2f} | {r['finish_s']:.2f} |")


if __name__ == "__main__":
    main()
