"""`fedsim cost`: one client's cost breakdown for a scenario's model, PEFT and training config."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fedsim import catalog
from fedsim.costs import compute, energy
from fedsim.costs.memory import step_costs, weight_bytes
from fedsim.costs.profile import build_profile, phase_costs, phase_times
from fedsim.costs.zero import zero_gpu_bytes
from fedsim.errors import ConfigError
from fedsim.population import median_client
from fedsim.scenario import Scenario


def client_cost(s: Scenario, device: str, network: str | None = None, gpus: int = 0, zero_stage: int = 3,
                offload: bool = False) -> dict[str, Any]:
    """Model facts plus one median client of `device` on `network`: eligibility, phase times, bytes, energy, and
    the training throughput the device's efficiency implies (tokens/s: a number to hold against a measurement).
    Memory and FLOPs come from a cached trace of the step when there is one (`fedsim cost --trace`), the analytic
    model otherwise.

    With gpus > 0, also the per-GPU model-state memory under DeepSpeed ZeRO (server or multi-GPU silo).
    """
    from fedsim.models.shapes import model_shape

    cat = catalog.load(s.population.catalog)
    if device not in cat["devices"]:
        raise ConfigError("--device", f"{device!r} not in the catalog (known: {', '.join(cat['devices'])})")
    dev = cat["devices"][device]
    network = network or max(dev["networks"], key=dev["networks"].get)
    if network not in cat["networks"]:
        raise ConfigError("--network", f"{network!r} not in the catalog (known: {', '.join(cat['networks'])})")
    pop = median_client(cat, device, network)
    name = s.model.cost_as or s.model.name
    shape = model_shape(name, s.peft)
    profile = build_profile(s, shape, cat, pop, lambda r: model_shape(name, dataclasses.replace(s.peft, r=r)))
    ids = np.zeros(1, np.int64)
    full = phase_times(profile, pop, ids, np.ones(1))
    option = int(full[3][0])
    costs = phase_costs(profile, pop, ids, full[:3], full[:3])
    t = s.training
    step_flops = compute.zo_step_flops(shape, t.batch_size, t.seq_len) if s.server.strategy == "fedkseed" else \
        profile.flops_per_client / t.local_steps
    speed = float(pop.flops[0])  # peak x efficiency of the median device
    out = {
        "model": s.model.cost_as or s.model.name,
        **profile.facts(),
        "flops_per_step": step_flops,
        "flops_per_token": step_flops / (t.batch_size * t.seq_len),
        "memory_options": dict(zip(profile.option_names(), profile.memory_options.tolist())),
        "device": {
            "name": device, "network": network, "memory_bytes": float(pop.memory_bytes[0]),
            "eligible": option >= 0, "quantization": profile.quantizations[option] if option >= 0 else None,
            "rank": profile.ranks[option] if option >= 0 else None,
            "t_download_s": float(full[0][0]), "t_compute_s": float(full[1][0]), "t_upload_s": float(full[2][0]),
            "round_time_s": float(full[0][0] + full[1][0] + full[2][0]),
            "peak_flops": float(cat["devices"][device]["peak_flops"]),
            "efficiency": float(cat["devices"][device]["efficiency"]),
            "tokens_per_s": t.batch_size * t.seq_len * speed / step_flops,
            "energy_j": float(costs["energy_j"][0]),
            "co2_g": float(energy.carbon_g(costs["energy_j"][0], profile.grid_gco2_per_kwh)),
        },
    }
    if profile.traced:
        out["analytic_memory_breakdown"] = step_costs(shape, t, s.model.dtype, s.model.quantization,
                                                      float(cat["runtime_overhead_bytes"]))[0]
    if gpus:
        # the frozen base's bytes as the memory model counts them: only the linear layers quantized, never the
        # embeddings or the LM head
        frozen_bpp = weight_bytes(shape, s.model.dtype, s.model.quantization) / shape.n_params
        largest = max(shape.vocab_size * shape.hidden_size, 1)
        out["zero"] = {"gpus": gpus, "stage": zero_stage, "offload_optimizer": offload,
                       "model_state_bytes_per_gpu": zero_gpu_bytes(shape.n_params, shape.n_trainable, gpus, zero_stage,
                                                                   frozen_bpp, largest, offload_optimizer=offload)}
    return out

