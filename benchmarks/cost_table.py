"""The catalog models at one common fine-tuning setup: analytic vs traced peak memory, FLOPs per token, and the
throughput the catalog's efficiencies imply on a 24 GB and an 80 GB GPU (README "Cost fidelity").

Setup: LoRA r=16 on every linear layer, bf16, batch 2 x 2,048 tokens, activation checkpointing, sdpa attention,
the chunked loss, AdamW. Each model's step is traced on fake tensors (`fedsim.models.trace`, cached) and
compared with the analytic model (`fedsim.costs.memory`, `fedsim.costs.compute`).

    python benchmarks/cost_table.py [--models NAME ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

from fedsim import catalog
from fedsim.costs import memory
from fedsim.costs.traced import TraceSetup
from fedsim.models.shapes import hf_config_dict, model_shape
from fedsim.models.trace import trace
from fedsim.scenario.schema import PeftConfig, TrainingConfig

PEFT = PeftConfig(r=16, alpha=32.0, target_modules=("all-linear",))
TRAINING = TrainingConfig(batch_size=2, seq_len=2048, gradient_checkpointing=True, attention="sdpa", loss="chunked")
GPUS = ("gpu-workstation", "datacenter-gpu")  # RTX 4090 24 GB, A100 80 GB


def row(name: str) -> dict:
    """One model's numbers."""
    t = TRAINING
    traced = trace(TraceSetup(hf_config_dict(name), PEFT, t, "bfloat16", "none"))
    shape = model_shape(name, PEFT)
    parts, flops = memory.step_costs(shape, t, "bfloat16", "none")
    analytic = sum(parts.values())
    tokens = t.batch_size * t.seq_len
    devices = catalog.load()["devices"]
    out = {"model": name, "params": shape.n_params, "traced_peak": traced.peak_bytes, "analytic_peak": analytic,
           "traced_flops_per_token": traced.flops / tokens, "analytic_flops_per_token": flops / tokens,
           "trace_s": traced.seconds}
    for gpu in GPUS:
        d = devices[gpu]
        fits = traced.peak_bytes + catalog.load()["runtime_overhead_bytes"] <= d["memory_gb"] * 1e9
        out[gpu] = d["peak_flops"] * d["efficiency"] / (traced.flops / tokens) if fits else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[m for m in catalog.model_configs() if m != "fedsim-tiny-llama"])
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print("| model | params | peak: traced | analytic | FLOPs/token: traced | analytic | tokens/s 24 GB (4090) "
          "| tokens/s 80 GB (A100) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = row(name)
        rows.append(r)
        tps = [f"{r[g]:,.0f}" if r[g] else "does not fit" for g in GPUS]
        print(f"| {name} | {r['params'] / 1e9:.2f} B | {r['traced_peak'] / 1e9:.1f} GB | "
              f"{r['analytic_peak'] / 1e9:.1f} GB ({r['analytic_peak'] / r['traced_peak'] - 1:+.1%}) | "
              f"{r['traced_flops_per_token'] / 1e9:.2f} G | {r['analytic_flops_per_token'] / 1e9:.2f} G "
              f"({r['analytic_flops_per_token'] / r['traced_flops_per_token'] - 1:+.1%}) | {tps[0]} | {tps[1]} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
