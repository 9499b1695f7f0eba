"""Which LoRA rank each client trains at, when clients differ (HetLoRA, FlexLoRA, FLoRA).

A client's rank is capped by its device -- a table {device class: rank} in the scenario, or a rule: "memory"
(every rank choice is allowed; the largest one the device can hold is taken) or "compute" (rank tiers by the
device's effective FLOP/s, as Cho et al. 2024 assign ranks by device capability) -- and the memory model then
picks, per client, the first (quantization, rank) option it can hold: the scenario's quantization at its cap,
then smaller ranks, then the fallback quantizations (`fedsim.costs.profile.fitting_option`). Pure numpy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fedsim.costs import comm
from fedsim.errors import ConfigError
from fedsim.scenario.schema import PeftConfig, Scenario

HETERO = ("hetlora", "flexlora", "flora")  # federations that accept clients of different ranks


def pruned_rank(rank: int, gamma: float, floor: int) -> int:
    """HetLoRA's self-pruned rank (Cho et al. 2024): floor((1 - gamma) r), at least one rank less and never
    below `floor` (1: a client may prune down to rank 1)."""
    return max(floor, min(rank - 1, rank - math.ceil(round(gamma * rank, 9))))  # exact: no 0.2 x 10 = 1.999...


def tail(rank: int, gamma: float, floor: int) -> int:
    """First rank component of the tail a rank-`rank` client regularises and would prune."""
    return pruned_rank(rank, gamma, floor) if rank > floor else rank


def rank_choices(peft: PeftConfig, pruning: bool = True) -> tuple[int, ...]:
    """The ranks clients may train at, largest first (the server's rank r is always one of them); with HetLoRA's
    self-pruning, every rank a choice can be pruned to as well."""
    base = _base_choices(peft)
    if not pruning or peft.federation != "hetlora" or peft.rank_pruning <= 0:
        return base
    out, floor = set(base), 1
    for r in base:
        while r > floor:
            r = pruned_rank(r, peft.rank_pruning, floor)
            out.add(r)
    return tuple(sorted(out, reverse=True))


def _base_choices(peft: PeftConfig) -> tuple[int, ...]:
    """The ranks a device can be given (r, the table's or rank_choices), largest first."""
    if peft.method != "lora" or peft.federation not in HETERO:
        return (peft.r,)
    if peft.rank_choices is not None:
        chosen = set(peft.rank_choices)
    elif isinstance(peft.ranks, dict):
        chosen = set(peft.ranks.values())
    elif peft.ranks is not None:
        chosen = {max(peft.r // d, 1) for d in (1, 2, 4)}
    else:
        chosen = set()
    return tuple(sorted(chosen | {peft.r}, reverse=True))


def rank_caps(peft: PeftConfig, device: np.ndarray, device_names: tuple[str, ...], flops: np.ndarray) -> np.ndarray:
    """Each client's largest allowed rank: from the table by device class (r for a class it does not name),
    r under the memory rule, and under the compute rule the choice of its tier -- the population's clients
    sorted by effective FLOP/s and cut into as many equal tiers as there are choices (fastest: r)."""
    choices = rank_choices(peft, pruning=False)
    n = len(device)
    if isinstance(peft.ranks, dict):
        by_class = np.array([peft.ranks.get(name, peft.r) for name in device_names], dtype=np.int64)
        return by_class[device]
    if peft.ranks == "compute" and n:
        order = np.argsort(-np.asarray(flops), kind="stable")
        tier = np.empty(n, np.int64)
        tier[order] = np.arange(n) * len(choices) // n
        return np.asarray(choices, np.int64)[tier]
    return np.full(n, peft.r, np.int64)


def lora_at_rank(shape, rank: int, r: int):
    """The ModelShape of the same LoRA adapter at rank `r` from its shape at rank `rank`: every A (rank x in) and
    B (out x rank) scales by r / rank exactly (used for self-pruned ranks; the rank choices are counted by peft)."""
    tensors = tuple(n // rank * r for n in shape.trainable_tensors)
    return dataclasses.replace(shape, trainable_tensors=tensors, n_trainable=sum(tensors), shared_tensors=None,
                               rank=r)


def check(s: Scenario) -> None:
    """Rank settings that cannot mean anything are refused with the reason (at load time)."""
    p, sv = s.peft, s.server
    if p.rank_pruning > 0 and p.federation != "hetlora":
        raise ConfigError("peft.rank_pruning", f"is HetLoRA's rank self-pruning (peft.federation is {p.federation})")
    if p.pruning_lambda != PeftConfig().pruning_lambda and p.rank_pruning == 0:
        raise ConfigError("peft.pruning_lambda", "is read by HetLoRA's rank self-pruning only (peft.rank_pruning is 0)")
    if p.federation not in HETERO:
        for key in ("ranks", "rank_choices"):
            if getattr(p, key) is not None:
                raise ConfigError(f"peft.{key}", f"clients of different ranks need peft.federation hetlora, flexlora "
                                                 f"or flora (it is {p.federation}): plain FedAvg of A and B "
                                                 "separately does not average B A")
        return
    if isinstance(p.ranks, dict):
        from fedsim import catalog

        known = catalog.load(s.population.catalog)["devices"]
        unknown = sorted(set(p.ranks) - set(known))
        if unknown:
            raise ConfigError(f"peft.ranks.{unknown[0]}", f"is not a device class of the catalog "
                                                          f"({', '.join(sorted(known))})")
    too_big = [r for r in (*(p.ranks.values() if isinstance(p.ranks, dict) else ()), *(p.rank_choices or ()))
               if r > p.r]
    if too_big:
        raise ConfigError("peft.ranks" if isinstance(p.ranks, dict) else "peft.rank_choices",
                          f"rank {too_big[0]} is above peft.r {p.r}, the server's (largest) rank")
    if p.rank_choices is not None and p.ranks is None:
        raise ConfigError("peft.rank_choices", "needs peft.ranks (a table by device class, memory or compute)")
    if isinstance(p.ranks, dict) and p.rank_choices is not None:
        missing = sorted(set(p.ranks.values()) - set(p.rank_choices))
        if missing:
            raise ConfigError("peft.rank_choices", f"does not hold rank {missing[0]} of the peft.ranks table")
    refused = ((sv.strategy == "scaffold", "server.strategy", "SCAFFOLD's control variates"),
               (sv.optimizer != "sgd", "server.optimizer", f"the server optimizer {sv.optimizer}"),
               ((sv.server_lr or 1.0) != 1.0, "server.server_lr", "a server rate other than 1"),
               (sv.clip_norm is not None, "server.clip_norm", "server-side clipping"),
               (p.federation == "hetlora" and sv.weighting != "samples", "server.weighting",
                "a weighting other than its own (HetLoRA weights by ||B A||)"),
               (sv.aggregation != "mean", "server.aggregation", f"the robust rule {sv.aggregation}"),
               (s.privacy.dp.enabled, "privacy.dp.enabled", "DP's clipping and noise"),
               (s.privacy.secagg.enabled, "privacy.secagg.enabled", "secure aggregation"))
    for bad, key, what in refused:
        if bad:
            raise ConfigError(key, f"{what} with {p.federation}'s rank-heterogeneous aggregation is in neither "
                                   "paper: not simulated")
    if p.federation in ("flexlora", "flora") and s.costs.upload_compression != "none":
        raise ConfigError("costs.upload_compression", f"{p.federation}'s server multiplies each client's B A: "
                                                      "compressed factors are not simulated")
    if p.federation == "flora" and sv.schedule == "async":
        raise ConfigError("server.schedule", "FLoRA merges each round's stack into every client's base model: sync "
                                             "rounds only (Wang et al. 2024)")
    if p.federation == "hetlora" and sv.schedule == "async":
        raise ConfigError("server.schedule", "HetLoRA's zero padding shrinks the global's higher components by a "
                                             "client's weight; from a stale version that is not defined (Cho et al. "
                                             "2024 run sync rounds)")


def stack_bytes(shape, s: Scenario) -> tuple[float, float]:
    """FLoRA's download units: bytes of one stacked rank (A row + B column of every adapted module) and of the
    dense update (out x in per module). LoRA's tensors come in (A, B) pairs in name order, A of r x in, B of
    out x r."""
    sizes, r = shape.trainable_tensors, s.peft.r
    pairs = list(zip(sizes[0::2], sizes[1::2]))
    per_rank = sum(a + b for a, b in pairs) / r
    dense = sum((a / r) * (b / r) for a, b in pairs)
    return (comm.payload_bytes(per_rank, s.costs.transmit_dtype), comm.payload_bytes(dense, s.costs.transmit_dtype))
