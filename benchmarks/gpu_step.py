"""Measured ground truth on a GPU: fedsim's training step, traced on fake tensors and run for real.

For each case the step is traced (`fedsim.models.trace.trace_step`: peak live bytes, FLOPs) and then run on the
GPU with random weights: a warm-up step (it creates the optimizer state), then `--steps` timed steps. The
measured peak is `torch.cuda.max_memory_allocated` over the timed steps (the caching allocator's live bytes,
weights included); throughput is tokens per second of wall time, and MFU = tokens/s x traced FLOPs per token /
the GPU's dense 16-bit peak.

Unquantized cases build the model as the trace does (from its config, moved to the GPU); quantized ones go
through the worker's own loader (`fedsim.models.local.load_local_model`: bitsandbytes, peft's
`prepare_model_for_kbit_training`) from a randomly initialised checkpoint, so the stand-ins of the trace are held
against the real library.

    python benchmarks/gpu_step.py --out gpu_step.json [--cases NAME ...] [--steps 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import torch

from fedsim.costs.traced import TraceSetup
from fedsim.models.shapes import hf_config_dict
from fedsim.models.trace import build_model, make_step, materialize, trace_step
from fedsim.scenario.schema import PeftConfig, TrainingConfig

# dense 16-bit tensor-core peaks (NVIDIA datasheets), by the name torch reports
PEAKS = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756e12, "H200": 989.4e12, "A100-SXM4-80GB": 312e12}
COMMON = {"batch_size": 2, "seq_len": 2048, "gradient_checkpointing": True, "attention": "sdpa", "loss": "chunked"}
ALL_LINEAR = {"r": 16, "alpha": 32.0, "target_modules": ("all-linear",)}
CASES = {
    "llama-3.1-8b/common": ("llama-3.1-8b", ALL_LINEAR, "none", COMMON),
    "llama-3.1-8b/full-loss": ("llama-3.1-8b", ALL_LINEAR, "none", {**COMMON, "loss": "full"}),
    "llama-3.1-8b/no-ckpt-b1": ("llama-3.1-8b", ALL_LINEAR, "none",
                                {**COMMON, "batch_size": 1, "gradient_checkpointing": False}),
    "llama-3.1-8b/eager-b1": ("llama-3.1-8b", ALL_LINEAR, "none",
                              {**COMMON, "batch_size": 1, "gradient_checkpointing": False, "attention": "eager",
                               "loss": "full"}),
    "llama-2-7b/common": ("llama-2-7b", ALL_LINEAR, "none", COMMON),
    "mistral-7b/qv-master": ("mistral-7b", {"r": 16}, "none", {**COMMON, "master_weights": True}),
    "llama-3.2-3b/common": ("llama-3.2-3b", ALL_LINEAR, "none", COMMON),
    "qwen2.5-0.5b/no-ckpt": ("qwen2.5-0.5b", ALL_LINEAR, "none", {**COMMON, "gradient_checkpointing": False}),
    "llama-3.2-1b/nf4": ("llama-3.2-1b", ALL_LINEAR, "nf4", COMMON),
    "llama-3.2-1b/nf4-8bit-adam": ("llama-3.2-1b", ALL_LINEAR, "nf4", {**COMMON, "optimizer": "adamw8bit"}),
}


def setup_of(case: str) -> TraceSetup:
    """The trace setup of a named case (bf16 base)."""
    name, peft, quant, training = CASES[case]
    return TraceSetup(hf_config_dict(name), PeftConfig(**peft), TrainingConfig(**training), "bfloat16", quant)


def _built(setup: TraceSetup):
    """The step on a model built as the trace builds it, on the GPU with random weights."""
    model = build_model(setup, device="meta")
    materialize(model, "cuda")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
        reset_rotary(model)
    return make_step(model, setup)


def reset_rotary(model) -> None:
    """Give the rotary embeddings their frequencies again (`materialize` leaves buffers uninitialised; the
    README's runs predate this: their memory is unaffected, their arithmetic ran on arbitrary angles)."""
    for m in model.modules():
        if type(m).__name__.endswith("RotaryEmbedding"):
            fresh = type(m)(m.config)
            for name, buf in fresh.named_buffers(recurse=False):
                getattr(m, name).copy_(buf)


def _loaded(setup: TraceSetup, where: str):
    """The step on a model the worker's loader loads (bitsandbytes base) from a random checkpoint in `where`."""
    from transformers import AutoModelForCausalLM

    from fedsim.models.device import Placement
    from fedsim.models.local import TorchStep, load_local_model
    from fedsim.models.shapes import hf_config

    AutoModelForCausalLM.from_config(hf_config(setup.config), dtype=torch.bfloat16).save_pretrained(where)
    t = setup.training
    placement = Placement("cuda", "bfloat16", setup.quantization, (), t.attention, t.optimizer, t.master_weights)
    lm = load_local_model(where, setup.peft, "bfloat16", t.gradient_checkpointing, placement)
    lm.model.train()  # as train_client does: transformers checkpoints layers in training mode only
    return TorchStep(lm, t, None)


def measure(case: str, steps: int) -> dict:
    """Trace and run one case; the row the README's table is made of."""
    setup = setup_of(case)
    traced = trace_step(setup)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        step = _built(setup) if setup.quantization == "none" else _loaded(setup, tmp)
        t = setup.training
        ids = torch.randint(0, setup.config["vocab_size"], (t.batch_size, t.seq_len), device="cuda")
        step.step(step.loss(ids, ids))  # warm-up: kernels chosen, optimizer state made
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step.step(step.loss(ids, ids))
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        peak = torch.cuda.max_memory_allocated()
        del step
    torch.cuda.empty_cache()
    tokens = t.batch_size * t.seq_len
    gpu = torch.cuda.get_device_name()
    dense = next((v for k, v in PEAKS.items() if k in gpu), float("nan"))
    return {"case": case, "gpu": gpu, "traced_peak_bytes": traced.peak_bytes, "measured_peak_bytes": peak,
            "traced_over_measured": traced.peak_bytes / peak, "step_s": seconds, "tokens_per_s": tokens / seconds,
            "flops_per_token": traced.flops / tokens, "mfu": traced.flops / seconds / dense,
            "trace_s": traced.seconds, "setup": {"quantization": setup.quantization,
                                                 "peft": dataclasses.asdict(setup.peft),
                                                 "training": dataclasses.asdict(t)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for case in args.cases:
        try:
            rows.append(measure(case, args.steps))
        except Exception as exc:  # one case's failure (out of memory, a missing package) is reported, not fatal
            rows.append({"case": case, "error": f"{type(exc).__name__}: {exc}"[:500]})
            torch.cuda.empty_cache()
        r = rows[-1]
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "setup"}),
              flush=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
