"""One run's cost profile: the per-client work (FLOPs, bytes, memory) and how a cohort's phases cost.

Built once per run from the model shape, the scenario and the catalog; the schedule asks it for the
per-phase durations of a cohort and for the bytes and joules of whatever part of those phases was done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.costs import comm, compression, compute, energy, memory, traced
from fedsim.costs.compute import ModelShape
from fedsim.population import MBIT, Population
from fedsim.scenario.schema import Scenario


@dataclass(frozen=True)
class CostProfile:
    """Per-round work of one client and the energy coefficients of each network class.

    A client trains under one *option*: a quantization of the base and a LoRA rank (one rank unless clients
    differ: `fedsim.costs.ranks`). Options are in order of preference -- the scenario's quantization at the
    largest rank first, then smaller ranks, then each fallback quantization -- and each has its memory,
    FLOPs and bytes; a client takes the first one its device holds, at most its rank cap.
    """

    shape: ModelShape  # at the server's rank
    flops_per_client: float  # local_steps optimizer steps (first option)
    bytes_down: float  # global adapter (first option)
    bytes_up: float  # client update after compression (first option)
    memory_breakdown: dict[str, float]  # at model.quantization and the server's rank
    quantizations: tuple[str, ...]  # each option's quantization
    memory_options: np.ndarray  # peak memory need of each option
    alpha_up: np.ndarray  # mW per Mbit/s, by network code
    alpha_down: np.ndarray
    beta: np.ndarray  # mW
    grid_gco2_per_kwh: float
    server_power_w: float
    # secure aggregation (Bonawitz et al. 2017): catalog constants plus the word size; None when it is off
    secagg: dict[str, float] | None = None
    ranks: tuple[int, ...] = ()  # each option's LoRA rank (empty: one rank, the scenario's)
    option_flops: np.ndarray | None = None  # each option's local FLOPs (None: flops_per_client for all)
    option_down: np.ndarray | None = None
    option_up: np.ndarray | None = None
    rank_cap: np.ndarray | None = None  # each client's largest allowed rank (population order)
    base_ranks: tuple[int, ...] = ()  # the ranks a device may be given or fall back to (not HetLoRA's pruned ones)
    # FLoRA (Wang et al. 2024): what a client downloads is every stack merged so far -- the stacked ranks times
    # the bytes of one rank -- or the dense update of the adapted weights when that is smaller
    stack_bytes: tuple[float, float] | None = None  # (bytes per stacked rank, dense bytes)
    traced: bool = False  # memory and FLOPs from a cached trace (`fedsim cost --trace`), not the analytic model

    @property
    def memory_bytes(self) -> float:
        """Peak training memory of one client at the scenario's own quantization."""
        return float(sum(self.memory_breakdown.values()))

    def facts(self) -> dict:
        """Model and per-client work facts for summaries and `fedsim cost`."""
        return {
            "model_params": self.shape.n_params,
            "trainable_params": self.shape.n_trainable,
            "adapter_bytes": self.bytes_down,
            "upload_bytes": self.bytes_up,
            "memory_bytes": self.memory_bytes,
            "memory_breakdown": self.memory_breakdown,
            "flops_per_client_round": self.flops_per_client,
            "cost_model": "traced" if self.traced else "analytic",
        }

    @property
    def varied_ranks(self) -> bool:
        """Whether clients may train at different LoRA ranks (the options hold more than one)."""
        return len(set(self.ranks)) > 1

    def option_names(self) -> list[str]:
        """A label per option: its quantization, with "/r<rank>" when clients differ in rank."""
        if not self.varied_ranks:
            return list(self.quantizations)
        return [f"{q}/r{r}" for q, r in zip(self.quantizations, self.ranks)]


def build_profile(s: Scenario, shape: ModelShape, cat: dict[str, Any], pop: Population,
                  rank_shape: Callable[[int], ModelShape] | None = None) -> CostProfile:
    """Combine shape, training config and catalog into the run's cost profile; `rank_shape(r)` gives the shape
    at another LoRA rank when clients differ in rank (`fedsim.costs.ranks`)."""
    from fedsim.costs.ranks import lora_at_rank, rank_caps, rank_choices, stack_bytes

    t, c = s.training, s.costs
    quants = (s.model.quantization, *[q for q in s.model.fallback_quantization if q != s.model.quantization])
    choices, counted = rank_choices(s.peft), rank_choices(s.peft, pruning=False)
    if len(choices) > 1 and rank_shape is None:
        raise ValueError("clients of different ranks need rank_shape (the model's shape at each rank)")
    shapes = {r: shape if r == s.peft.r else rank_shape(r) if r in counted else lora_at_rank(shape, s.peft.r, r)
              for r in choices}
    # SCAFFOLD sends the server variate c down and the control delta up with the adapter: twice the payload both
    # ways (Karimireddy et al. 2020, §7: "twice the communication"), and the client holds c and c_i
    payloads = 2 if s.server.strategy == "scaffold" else 1

    zo = s.server.strategy == "fedkseed"  # forward-only steps; (seed, scalar) pairs up, K accumulators down

    traces = {} if zo else {q: traced.scenario_trace(s, q) for q in quants}  # cached traces, where there are
    # a trace of the scenario's own step scales the analytic numbers of the options it did not trace (other ranks,
    # fallback quantizations), so that every option's memory and FLOPs come from one model
    mem_scale, flop_scale = traced.calibration(traces.get(s.model.quantization), shape, s)

    def breakdown(sh: ModelShape, quant: str) -> dict[str, float]:
        variates = {"control_variates": 2.0 * sh.n_trainable * 4} if payloads == 2 else {}
        overhead = {"overhead": float(cat["runtime_overhead_bytes"])}
        hit = traces.get(quant) if sh is shape else None
        if hit is not None:
            return {**hit.parts, **overhead, **variates}
        parts, _ = memory.step_costs(sh, t, s.model.dtype, quant, forward_only=zo)
        return {**{k: v * mem_scale for k, v in parts.items()}, **overhead, **variates}

    def work(sh: ModelShape, quant: str) -> tuple[float, float, float]:
        if zo:
            return zeroth_work(sh, t)
        hit = traces.get(quant) if sh is shape else None
        step = hit.flops if hit is not None else memory.step_costs(sh, t, s.model.dtype, quant)[1] * flop_scale
        tensors = list(sh.sent_tensors) or [sh.n_sent]
        return (step * t.local_steps, payloads * comm.payload_bytes(sh.n_sent, c.transmit_dtype),
                payloads * compression.upload_bytes(tensors, c.transmit_dtype, c.upload_compression, c.topk_fraction))

    options = [(q, r) for q in quants for r in choices]
    by_option = {(q, r): work(shapes[r], q) for q, r in options}  # a quantized base may change the kernel
    nets = [cat["networks"][n] for n in pop.network_names]
    sa = s.privacy.secagg
    flops, down, up = by_option[(s.model.quantization, s.peft.r)]
    return CostProfile(
        shape=shape,
        flops_per_client=flops,
        bytes_down=down,
        bytes_up=up,
        memory_breakdown=breakdown(shape, s.model.quantization),
        quantizations=tuple(q for q, _ in options),
        memory_options=np.array([sum(breakdown(shapes[r], q).values()) for q, r in options]),
        alpha_up=np.array([n["alpha_up_mw_per_mbps"] for n in nets], dtype=float),
        alpha_down=np.array([n["alpha_down_mw_per_mbps"] for n in nets], dtype=float),
        beta=np.array([n["beta_mw"] for n in nets], dtype=float),
        grid_gco2_per_kwh=float(c.grid_gco2_per_kwh if c.grid_gco2_per_kwh is not None
                                else cat["energy"]["grid_gco2_per_kwh"]),
        server_power_w=float(cat["energy"]["server_power_w"]),
        secagg={**{k: float(v) for k, v in cat["secagg"].items() if k != "source"}, "bits": float(sa.bits),
                "numel": float(shape.n_sent)} if sa.enabled else None,
        ranks=tuple(r for _, r in options),
        option_flops=np.array([by_option[o][0] for o in options]),
        option_down=np.array([by_option[o][1] for o in options]),
        option_up=np.array([by_option[o][2] for o in options]),
        rank_cap=rank_caps(s.peft, pop.device, pop.device_names, pop.flops) if len(choices) > 1 else None,
        base_ranks=counted,
        stack_bytes=stack_bytes(shape, s) if s.peft.federation == "flora" else None,
        traced=traces.get(s.model.quantization) is not None,
    )


def zeroth_work(shape: ModelShape, t) -> tuple[float, float, float]:
    """FedKSeed's (FLOPs, bytes down, bytes up) per client-round (Qin et al. 2024): local_steps forward-only
    steps plus replaying the K accumulated scalars into the model (an axpy of N_p per seed: an upper bound, only
    the seeds drawn so far have a non-zero accumulator); it downloads the
    K float32 accumulators and uploads local_steps (seed, scalar) pairs -- the paper's "under 18 kB"."""
    from fedsim.models.zeroth import PAIR_DTYPE

    flops = compute.zo_step_flops(shape, t.batch_size, t.seq_len) * t.local_steps + \
        2.0 * t.zo_pool_size * shape.n_trainable
    return flops, 4.0 * t.zo_pool_size, float(t.local_steps * PAIR_DTYPE.itemsize)


def scenario_costs(s: Scenario, model: str | None = None) -> tuple[dict[str, Any], Population, CostProfile]:
    """Catalog, population and cost profile of a scenario. The shape is that of `model.cost_as`, else `model`
    (default `model.name`); it comes from the shape cache, so torch is imported only for a new config."""
    import dataclasses

    from fedsim import catalog, population
    from fedsim.models.shapes import model_shape

    cat = catalog.load(s.population.catalog)
    pop = population.sample(s.population, cat, s.seed)
    name = s.model.cost_as or model or s.model.name
    shape = model_shape(name, s.peft)
    return cat, pop, build_profile(s, shape, cat, pop,
                                   lambda r: model_shape(name, dataclasses.replace(s.peft, r=r)))


def fitting_option(p: CostProfile, pop: Population, ids: np.ndarray | None = None,
                   cap: np.ndarray | None = None) -> np.ndarray:
    """Index of the first option (quantization, rank) each client of `ids` (default: all) can hold within its
    rank cap (`cap`, one per client: its device's, or lower once HetLoRA self-pruned it), -1 if none
    (ineligible)."""
    memory_bytes = pop.memory_bytes if ids is None else pop.memory_bytes[ids]
    fits = memory_bytes[:, None] >= p.memory_options[None, :]
    if p.rank_cap is not None:
        if cap is None:
            cap = p.rank_cap if ids is None else p.rank_cap[ids]
        ranks = np.asarray(p.ranks)[None, :]
        # a rank choice up to its cap, or the very rank a client self-pruned to (HetLoRA's other ranks are no
        # fallback: a client that cannot hold its rank falls back to the next choice)
        listed = np.isin(ranks, p.base_ranks) if p.base_ranks else np.ones_like(ranks, bool)
        fits &= (ranks <= cap[:, None]) & (listed | (ranks == cap[:, None]))
    return np.where(fits.any(axis=1), fits.argmax(axis=1), -1)


def _per_option(values: np.ndarray | None, scalar: float, option: np.ndarray) -> np.ndarray | float:
    return scalar if values is None else values[np.maximum(option, 0)]


def payload(p: CostProfile, option: np.ndarray, stacked: int = 0) -> tuple[Any, Any, float, int]:
    """(bytes down, bytes up, extra client compute seconds, extra round trips) of each client of a sync cohort
    whose options are `option` (`stacked`: FLoRA's ranks merged so far). With secure aggregation the eligible
    clients form U1: each also exchanges keys and shares with the n - 1 others, uploads its masked fixed-point
    vector instead of the plain update and expands n masks (`fedsim.strategies.secagg.protocol_cost`)."""
    down = _per_option(p.option_down, p.bytes_down, option)
    up = _per_option(p.option_up, p.bytes_up, option)
    if p.stack_bytes is not None:
        down = np.full(len(option), min(stacked * p.stack_bytes[0], p.stack_bytes[1]))
    if p.secagg is None:
        return down, up, 0.0, 0
    from fedsim.strategies.secagg import protocol_cost

    a = p.secagg
    cost = protocol_cost(int((option >= 0).sum()), 0, int(a["numel"]), int(a["bits"]), a["key_bytes"],
                         a["share_bytes"])
    return (down + cost.client_down_bytes, cost.masked_input_bytes + cost.client_up_bytes,
            cost.client_prg_values / a["client_prg_values_per_s"], cost.round_trips)


def _trips_by_phase(trips: int) -> tuple[int, int]:
    """SecAgg's extra round trips by phase: its two key rounds (AdvertiseKeys, ShareKeys) come before training
    and count in the download phase, the rest (Unmasking) in the upload phase."""
    before = min(trips, 2)
    return before, trips - before


def secagg_server_s(p: CostProfile, survivors: int, dropped: int) -> float:
    """Seconds the server spends unmasking: regenerating the survivors' self masks and every dropped client's
    pairwise masks with every survivor (Bonawitz et al. 2017, §7: O(n^2 m) with dropouts); 0 without SecAgg."""
    if p.secagg is None or survivors == 0:
        return 0.0
    from fedsim.strategies.secagg import protocol_cost

    a = p.secagg
    cost = protocol_cost(survivors + dropped, dropped, int(a["numel"]), int(a["bits"]), a["key_bytes"],
                         a["share_bytes"])
    return cost.server_prg_values / a["server_prg_values_per_s"]


def phase_times(p: CostProfile, pop: Population, ids: np.ndarray, jitter: np.ndarray, stacked: int = 0,
                cap: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(t_download, t_compute, t_upload, option or -1) of clients `ids` if they ran to the end (`stacked`:
    FLoRA's ranks merged so far, which its clients download; `cap`: the clients' rank caps, `fitting_option`).

    Secure aggregation's two key rounds before training count in the download phase, its unmasking round in
    the upload phase (one latency each), its mask expansion in the compute phase."""
    option = fitting_option(p, pop, ids, cap)
    down, up, extra_s, trips = payload(p, option, stacked)
    before, after = _trips_by_phase(trips)
    lat = pop.latency_s[ids]
    flops = _per_option(p.option_flops, p.flops_per_client, option)
    t_down = comm.transfer_time_s(down, pop.down_bps[ids], lat) + before * lat
    t_comp = compute.compute_time_s(flops, pop.flops[ids]) * jitter + extra_s
    t_up = comm.transfer_time_s(up, pop.up_bps[ids], lat) + after * lat
    return t_down, t_comp, t_up, option


def _fraction_sent(done: np.ndarray, full: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Share of a transfer's bytes that went out in `done` of its `full` seconds (latency first, no bytes)."""
    span = np.maximum(full - latency, 1e-12)
    return np.clip((done - latency) / span, 0.0, 1.0)


def phase_costs(
    p: CostProfile, pop: Population, ids: np.ndarray, full: tuple[np.ndarray, ...], done: tuple[np.ndarray, ...],
    stacked: int = 0, cap: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Bytes and joules of the `done` seconds of each phase (download, compute, upload) of clients `ids`.

    Busy power while computing; idle (base) power plus the radio's power while transferring.
    """
    (f_down, _, f_up), (d_down, d_comp, d_up) = full, done
    lat, net = pop.latency_s[ids], pop.network[ids]
    down, up, _, trips = payload(p, fitting_option(p, pop, ids, cap), stacked)
    before, after = _trips_by_phase(trips)
    lat_down = lat * (1 + before)  # the key rounds' latencies carry no bytes either
    lat_up = lat * (1 + after)
    bytes_down = down * _fraction_sent(d_down, f_down, lat_down) * (f_down > 0)
    bytes_up = up * _fraction_sent(d_up, f_up, lat_up) * (f_up > 0)
    thr_down = pop.down_bps[ids] / MBIT
    thr_up = pop.up_bps[ids] / MBIT
    e_radio = energy.radio_energy_j(p.alpha_down[net], p.beta[net], thr_down, d_down) + energy.radio_energy_j(
        p.alpha_up[net], p.beta[net], thr_up, d_up
    )
    e_idle = energy.compute_energy_j(pop.power_idle_w[ids], d_down + d_up)
    e_comp = energy.compute_energy_j(pop.power_busy_w[ids], d_comp)
    return {"bytes_down": bytes_down, "bytes_up": bytes_up, "energy_j": e_comp + e_radio + e_idle}
