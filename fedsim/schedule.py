"""The sync schedule (Bonawitz et al. 2019, "Towards Federated Learning at Scale"): over-select, then close
the round at the K-th arrival or the deadline, whichever comes first.

Pure virtual plane: from the population, the cost profile and named random streams it decides who is
selected, when each client's download, compute and upload would end, who fails and when, who is cut off as a
straggler, and what every client's partial work cost. Only `completed` clients are handed to the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsim.clock import Clock
from fedsim.costs.profile import CostProfile, phase_costs, phase_times
from fedsim.population import Population
from fedsim.rng import stream
from fedsim.scenario.schema import Scenario

STATUSES = ("completed", "dropped", "late", "ineligible")
PHASES = ("", "download", "compute", "upload")


@dataclass(frozen=True)
class RoundPlan:
    """What the clock decided for one round: timing, per-client columns (selection order), who to train."""

    round: int
    start_s: float
    duration_s: float
    columns: dict[str, np.ndarray]  # client_id, status (code), t_*_s, bytes_*, energy_j, failed_phase, finish_s

    @property
    def to_train(self) -> np.ndarray:
        """Client ids whose update the server will use, in arrival order."""
        done = self.columns["status"] == 0
        order = np.argsort(self.columns["finish_s"][done], kind="stable")
        return self.columns["client_id"][done][order]


def select(s: Scenario, pop: Population, rnd: int, now: float = 0.0) -> np.ndarray:
    """ceil(K x over_selection) distinct clients that are online now (uniform among the online ones).

    Online means: inside one of its behaviour-trace windows at virtual time `now` when the population has
    traces, else a Bernoulli draw with the client's availability.
    """
    want = math.ceil(s.server.clients_per_round * s.server.over_selection)
    rng = stream(s.seed, "select", rnd)
    n_cand = min(pop.size, math.ceil(want / max(pop.mean_availability, 1e-3) * 1.5) + 16)
    cand = rng.choice(pop.size, size=n_cand, replace=False)
    is_online = pop.windows.online(cand, now) if pop.windows else rng.random(n_cand) < pop.availability[cand]
    return cand[is_online][:want]


def close_round(arrive: np.ndarray, fail: np.ndarray, k: int, deadline: float | None) -> tuple[float, np.ndarray]:
    """When a sync round closes and who made it, from each client's arrival and failure offsets (inf = never).

    Equivalent to popping the round's events in (time, priority, seq) order -- arrivals before failures before
    the deadline at equal times, ties in selection order -- and stopping at the K-th arrival, at the deadline,
    or once every client has arrived or failed; vectorized (order statistics) so a round of thousands of
    clients costs microseconds. Returns (duration, completed mask).
    """
    finite_arrive = np.isfinite(arrive)
    events = np.concatenate([arrive[finite_arrive], fail[np.isfinite(fail)]])
    if events.size == 0:
        return 0.0, np.zeros(arrive.shape, bool)
    t_all = float(events.max())
    t_k = float(np.partition(arrive[finite_arrive], k - 1)[k - 1]) if finite_arrive.sum() >= k else np.inf
    duration = min(t_all, t_k, np.inf if deadline is None else float(deadline))
    completed = arrive < duration
    ties = np.flatnonzero(arrive == duration)
    completed[ties[: max(k - int(completed.sum()), 0)]] = True
    return duration, completed


def plan_round(s: Scenario, pop: Population, profile: CostProfile, clock: Clock, rnd: int) -> RoundPlan:
    """Select, time, fail and close one sync round; book every selected client's (partial) costs."""
    start = clock.now
    ids = select(s, pop, rnd, start)
    n = len(ids)
    jitter = stream(s.seed, "jitter", rnd).lognormal(0.0, s.population.round_jitter_sigma, n)
    t_down, t_comp, t_up, option = phase_times(profile, pop, ids, jitter)
    eligible = option >= 0
    total = t_down + t_comp + t_up
    r = stream(s.seed, "dropout", rnd)
    drops = (r.random(n) < s.population.dropout) & eligible
    fail_at = r.random(n) * total  # a failing client stops at a uniform instant of its timeline
    arrive = np.where(eligible & ~drops, total, np.inf)
    fail = np.where(drops, fail_at, np.inf)
    duration, completed = close_round(arrive, fail, s.server.clients_per_round, s.server.deadline_s)
    if n == 0:  # nobody online: the server waits before it tries again
        duration = s.server.retry_after_s
    clock.clear(start + duration)
    dropped = drops & (fail <= duration)
    status = np.where(completed, 0, np.where(dropped, 1, np.where(eligible, 2, 3))).astype(np.int8)
    cut = np.where(completed, total, np.where(dropped, fail, np.where(eligible, duration, 0.0)))
    done = (
        np.clip(cut, 0.0, t_down),
        np.clip(cut - t_down, 0.0, t_comp),
        np.clip(cut - t_down - t_comp, 0.0, t_up),
    )
    phase = np.where(cut <= t_down, 1, np.where(cut <= t_down + t_comp, 2, 3))
    costs = phase_costs(profile, pop, ids, (t_down, t_comp, t_up), done)
    columns = {
        "client_id": ids.astype(np.int64),
        "status": status,
        "t_download_s": done[0],
        "t_compute_s": done[1],
        "t_upload_s": done[2],
        "finish_s": np.where(completed, total, np.nan),
        "failed_phase": np.where((status == 1) | (status == 2), phase, 0).astype(np.int8),
        "quantization": option.astype(np.int8),  # index into profile.quantizations, -1 when ineligible
        **costs,
    }
    return RoundPlan(round=rnd, start_s=start, duration_s=duration, columns=columns)
