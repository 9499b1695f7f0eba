"""Traced cost profiles on disk: what a trace depends on (`TraceSetup`), what it found (`TraceResult`), and the
cache estimate mode reads (`cached_trace`) without importing torch. The tracing itself is
`fedsim.models.trace`."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from fedsim.paths import cache_dir, digest
from fedsim.scenario.schema import PeftConfig, TrainingConfig

TRACE_VERSION = 2


@dataclass(frozen=True)
class TraceSetup:
    """What a trace depends on: the model config, the PEFT method, the local step and the base's precision."""

    config: dict
    peft: PeftConfig
    training: TrainingConfig
    dtype: str = "bfloat16"
    quantization: str = "none"  # none, int8, nf4
    # the device whose kernel choices the trace makes: cuda (what fedsim's budgets stand for) or cpu (to hold the
    # trace against a real CPU step: sdpa's fused CPU kernel takes fp32 grouped-query attention, CUDA's does not)
    device: str = "cuda"

    def key(self) -> str:
        """Cache key: everything that changes the step (not lr, local_steps, seeds...)."""
        t = self.training
        step = {k: getattr(t, k) for k in ("batch_size", "seq_len", "optimizer", "gradient_checkpointing",
                                           "attention", "loss", "loss_chunks", "master_weights")}
        return digest({"config": self.config, "peft": dataclasses.asdict(self.peft), "step": step,
                       "dtype": self.dtype, "quantization": self.quantization, "device": self.device,
                       "v": TRACE_VERSION, "code": code_digest(),
                       "libraries": library_versions()})


@dataclass(frozen=True)
class TraceResult:
    """One traced step: the peak of live bytes with its parts, and the step's FLOPs."""

    peak_bytes: int
    parts: dict  # weights, trainable, gradients, optimizer, activations, logits/loss, temporaries
    layers: dict  # "layer i" / "other" -> activation bytes held at the peak
    peak_phase: str  # forward, backward or optimizer
    flops: float  # forward + backward (+ recompute) of one optimizer step
    forward_flops: float
    seconds: float  # wall time of the trace

    def as_dict(self) -> dict:
        """Plain data (JSON)."""
        return dataclasses.asdict(self)


def calibration(hit: TraceResult | None, shape, s) -> tuple[float, float]:
    """(memory, FLOPs) ratios of a scenario's traced step to the analytic model's (1, 1 without a trace)."""
    if hit is None:
        return 1.0, 1.0
    from fedsim.costs.memory import step_costs

    parts, flops = step_costs(shape, s.training, s.model.dtype, s.model.quantization)
    return hit.peak_bytes / sum(parts.values()), hit.flops / flops


_TRACE_CODE = ("models/trace.py", "models/standins.py", "models/memtrack.py", "models/loss.py", "models/local.py")


@functools.cache
def code_digest() -> str:
    """A digest of fedsim's own tracing code (in the cache key: a trace made by older code is not reused)."""
    root = Path(__file__).resolve().parent.parent
    return digest([(root / name).read_bytes().hex() for name in _TRACE_CODE])


@functools.cache
def library_versions() -> dict:
    """The versions of the libraries a trace ran (part of its cache key; read without importing them)."""
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def trace_path(setup: TraceSetup):
    """Where the trace of `setup` is cached."""
    return cache_dir("traces") / f"{setup.key()}.json"


def cached_trace(setup: TraceSetup) -> TraceResult | None:
    """The cached trace of `setup`, or None (estimate mode never traces by itself)."""
    try:
        return TraceResult(**json.loads(trace_path(setup).read_text()))
    except (OSError, ValueError, TypeError):  # none yet, or unreadable: traced again by `fedsim cost --trace`
        return None




def scenario_setup(s, quantization: str | None = None) -> TraceSetup:
    """The trace a scenario's clients run: its cost model (`model.cost_as`, else `model.name`), PEFT method, local
    step and base precision (`quantization`: another of its fallbacks)."""
    from fedsim.errors import ConfigError
    from fedsim.models.shapes import hf_config_dict

    if s.server.strategy == "fedkseed":
        raise ConfigError("server.strategy", "fedkseed's clients take forward-only (zeroth-order) steps; a trace is "
                                             "of a backpropagation step")
    name = s.model.cost_as or s.model.name
    return TraceSetup(hf_config_dict(name), s.peft, s.training, s.model.dtype,
                      s.model.quantization if quantization is None else quantization)


def scenario_trace(s, quantization: str | None = None) -> TraceResult | None:
    """The cached trace of a scenario's step (`scenario_setup`), or None (FedKSeed's steps are never traced)."""
    if s.server.strategy == "fedkseed":
        return None
    return cached_trace(scenario_setup(s, quantization))
