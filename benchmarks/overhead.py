"""fedsim's overhead vs a bare single-process peft loop doing the same client work.

1. `fedsim run` the quickstart scenario with 1 and with 2 worker actors (wall time per round from rounds.jsonl).
2. Replay exactly the clients fedsim trained (from clients.parquet, same round, same arrival order, same rows,
   same seeded batches, same local steps) in one process with the same `train_client` function, the same
   FedAvg maths and the same evaluations, and time each round.
3. Report the steady-state per-round ratio (mean wall time per round over the rounds after warm-up, the same
   rounds and clients for every variant) and start-up times separately.

    python benchmarks/overhead.py [--rounds 12] [--threads 1]
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
sys.path.insert(0, str(ROOT))


def bare_loop(scenario, plan_rows, threads: int) -> tuple[float, list[float]]:
    """Single process, no Ray: same model load, data, clients, training, FedAvg and evals as fedsim."""
    t0 = time.perf_counter()
    import torch

    from fedsim.data.prepare import prepare_data
    from fedsim.data.reader import DataReader
    from fedsim.models.base import ensure_base_model
    from fedsim.models.local import evaluate, load_local_model, train_client
    from fedsim.strategies.fedavg import WeightedMean, apply_update

    s = scenario
    torch.set_num_threads(threads)
    model_dir = str(ensure_base_model(s.model))
    data = prepare_data(s, model_dir, log=lambda _: None)
    reader = DataReader(data.spec)  # the same per-client generation/tokenization (or mmap reads) as a worker
    eids, elabels = reader.eval_set()
    lm = load_local_model(model_dir, s.peft, s.runtime.train_dtype)
    state = lm.get_state()
    evaluate(lm, state, eids, elabels)
    startup = time.perf_counter() - t0
    per_round = []
    for rnd, clients in plan_rows:
        t = time.perf_counter()
        mean = WeightedMean()
        for c in clients:
            ids, labels, _ = reader.client(c, data.client_rows(c))
            delta, _ = train_client(lm, state, ids, labels, s.training, s.seed, rnd, c)  # sync: dispatch = round
            mean.add(float(len(ids)), delta)
        state = apply_update(state, mean.mean(), 1.0)  # the quickstart's server: FedAvg
        if rnd == s.server.rounds or (s.server.eval_every and rnd % s.server.eval_every == 0):
            evaluate(lm, state, eids, elabels)
        per_round.append(time.perf_counter() - t)
    return startup, per_round


def _fresh(cmd: list[str]) -> float:
    """Run cmd in a new process; return its total wall time (cold start included)."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t


VARIANTS = ("fedsim_1w", "fedsim_2w", "bare_1thread", "bare_2thread")


def _one_repetition(args, tmp: Path) -> dict:
    """Every variant once, each in a fresh process; per-variant startup and steady-state s/round."""
    import pandas as pd

    out = {}
    for workers in (1, 2):
        run_dir = tmp / f"w{workers}"
        total = _fresh([sys.executable, "-m", "fedsim", "run", args.scenario, "--out", str(run_dir), "--quiet", "--report", "off",
                        "--set", f"server.rounds={args.rounds}", "--set", f"runtime.num_workers={workers}"])
        summary = json.loads((run_dir / "summary.json").read_text())
        rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
        out[f"fedsim_{workers}w"] = {"process_s": total, "startup_s": summary["startup_s"],
                                     "per_round": [r["wall_s"] for r in rounds]}
    clients = pd.read_parquet(tmp / "w1" / "clients.parquet")
    clients["arrival"] = clients.start_s + clients.finish_s
    done = clients[clients.trained].sort_values(["round", "arrival"], kind="stable")
    plan_rows = [(r, [int(c) for c in done[done["round"] == r].client_id]) for r in range(1, args.rounds + 1)]
    (tmp / "plan.json").write_text(json.dumps(plan_rows))
    for threads in (1, 2):
        res = tmp / f"bare{threads}.json"
        total = _fresh([sys.executable, __file__, "--scenario", args.scenario, "--rounds", str(args.rounds),
                        "--bare", str(tmp / "plan.json"), str(threads), str(res)])
        out[f"bare_{threads}thread"] = {"process_s": total, **json.loads(res.read_text())}
    for val in out.values():  # mean wall time over the same steady-state rounds (same clients in every variant)
        val["steady_s_per_round"] = statistics.fmean(val["per_round"][args.warmup:])
    out["client_updates_per_round"] = round(len(done) / args.rounds, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default=str(ROOT / "scenarios/quickstart.yaml"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bare", nargs=3, metavar=("PLAN_JSON", "THREADS", "OUT_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    from fedsim.scenario import load

    s = load(args.scenario, {"server.rounds": args.rounds})
    if args.bare:  # child process: the bare loop, timed from a cold start
        plan_rows = json.loads(Path(args.bare[0]).read_text())
        startup, per_round = bare_loop(s, plan_rows, int(args.bare[1]))
        Path(args.bare[2]).write_text(json.dumps({"startup_s": startup, "per_round": per_round}))
        return


    reps = [_one_repetition(args, Path(tempfile.mkdtemp(prefix="fedsim-bench-"))) for _ in range(args.repeat)]
    report = {"rounds": args.rounds, "warmup_rounds_excluded": args.warmup, "repetitions": args.repeat,
              "client_updates_per_round": reps[0]["client_updates_per_round"], "variants": {}}
    base = statistics.median(r["bare_1thread"]["steady_s_per_round"] for r in reps)
    print(f"{'':14s} {'process s':>10s} {'startup s':>10s} {'steady s/round':>15s} {'ratio vs bare 1 thread':>23s}"
          f"   (medians of {args.repeat} repetitions; per-repetition ratios in brackets)")
    for key in VARIANTS:
        med = {f: statistics.median(r[key][f] for r in reps) for f in ("process_s", "startup_s", "steady_s_per_round")}
        ratios = [r[key]["steady_s_per_round"] / r["bare_1thread"]["steady_s_per_round"] for r in reps]
        med["ratio_vs_bare_1thread"] = med["steady_s_per_round"] / base
        med["ratio_per_repetition"] = ratios
        report["variants"][key] = med
        print(f"{key:14s} {med['process_s']:10.2f} {med['startup_s']:10.2f} {med['steady_s_per_round']:15.3f} "
              f"{med['ratio_vs_bare_1thread']:23.3f}   [{', '.join(f'{x:.3f}' for x in ratios)}]")
    dest = ROOT / "benchmarks/results/overhead.json"
    dest.write_text(json.dumps(report, indent=1))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
