"""Measure the peak memory of one real training step on CPU (run as its own process by test_cost_trace.py).

The step is fedsim's own (`fedsim.models.trace.make_step` on `build_model(..., "cpu")`: random weights), run once
to create the optimizer state, then measured. Ground truth is the kernel's count of the process's resident
memory: /proc/self/clear_refs resets the high-water mark (VmHWM) before the step, and the step's peak is VmHWM
after it less VmRSS before it, plus the tensor bytes that lived before it (weights, adapter, optimizer state:
counted from the tensors). `MALLOC_MMAP_THRESHOLD_=65536` must be set in the environment: every allocation over
64 KiB is then its own mmap, returned to the kernel when freed, so resident memory follows live tensors instead
of malloc's reused arenas. Prints one JSON line per setup: traced and measured peaks.
"""

import json
import sys

import torch

from fedsim.costs.traced import TraceSetup
from fedsim.models.trace import build_model, make_step, trace_step
from fedsim.scenario.schema import PeftConfig, TrainingConfig


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def measure(spec: dict) -> dict:
    """Trace and measure one setup (see the module docstring)."""
    setup = TraceSetup(spec["config"], PeftConfig(**spec["peft"]), TrainingConfig(**spec["training"]), spec["dtype"],
                       device="cpu")  # the kernels this CPU runs
    traced = trace_step(setup)
    torch.manual_seed(0)
    model = build_model(setup, device="cpu")
    step = make_step(model, setup)
    t = setup.training
    ids = torch.randint(0, setup.config["vocab_size"], (t.batch_size, t.seq_len))
    step.step(step.loss(ids, ids))  # the optimizer state, as in the trace's second step
    tensors = list(model.parameters()) + list(model.buffers()) + [
        v for s in step.opt.state.values() for v in s.values() if torch.is_tensor(v)]
    before_tensors = sum(v.untyped_storage().nbytes() for v in {v.untyped_storage()._cdata: v for v in tensors}.values())
    before = _status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    step.step(step.loss(ids, ids))
    peak = _status("VmHWM:") - before
    del step, model
    return {"traced": traced.peak_bytes, "measured": before_tensors + peak,
            "traced_step": traced.peak_bytes - before_tensors, "measured_step": peak}


def main() -> None:
    for spec in json.loads(sys.argv[1]):  # one JSON line per setup
        print(json.dumps(measure(spec)), flush=True)


if __name__ == "__main__":
    main()
