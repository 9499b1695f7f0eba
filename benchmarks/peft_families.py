"""One table for the PEFT families of scenarios/peft/: same seed, population and schedule as
scenarios/strategies/, only the `peft` section differs (costs booked as TinyLlama-1.1B, the tiny proxy trains).

Each scenario runs as `fedsim run` in a fresh process (2 worker actors, report off): bytes per round, one
client's upload, FLOPs and peak memory per round, final eval loss, energy, and which device classes can take
part (the share of each class whose memory holds the training step).

    python benchmarks/peft_families.py [--rounds 20]

Run it alone. Results: benchmarks/results/peft.json and a Markdown table on stdout (pasted into README).
"""

from __future__ import annotations

import argparse
import json

from strategies import ROOT, markdown, run_all

ORDER = ("lora", "ffa-lora", "fedsa-lora", "prompt-tuning", "prefix-tuning", "p-tuning", "ia3")


def table(results: dict) -> str:
    """The README's Markdown table."""
    devices = list(next(iter(results.values()))["eligible"])
    rows = []
    for name, r in results.items():
        part = ", ".join(f"{d} {r['eligible'][d]:.0%}" for d in devices if r["eligible"][d] > 0)
        loss = f"{r['final_eval_loss']:.3f}"
        clients = f"{r['client_eval_mean']:.3f} ± {r['client_eval_std']:.3f}" if r.get("client_eval_mean") else ""
        if name == "fedsa-lora":  # the personal models are what it trains; its global model is the base
            loss = f"{loss} (global A, B = 0)"
        rows.append([name, f"{r['upload_bytes'] / 1e3:,.0f} kB", f"{r['bytes'] / r['rounds'] / 1e6:.1f}",
                     f"{r['flops_per_client_round'] / 1e9:,.0f}", f"{r['memory_bytes'] / 1e9:.2f}", loss,
                     f"{r['exact_match']:.1%}", clients, f"{r['energy_kwh']:.3f}", part])
    return markdown(["method", "upload / client", "bytes / round (MB)", "GFLOP / client-round", "memory (GB)",
                     "final eval loss", "exact match", "clients' own rows (mean ± sd)", "energy (kWh)",
                     "can take part (share eligible)"], rows)


def main() -> None:
    """Run every method once, write the JSON, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    results = run_all(ORDER, args.rounds, folder="peft")
    (ROOT / "benchmarks" / "results" / "peft.json").write_text(json.dumps({"rounds": args.rounds,
                                                                           "results": results}, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
