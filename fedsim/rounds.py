"""The round loop, one for both modes: plan a step on the virtual clock, let the plane train it (train mode:
the Ray pool; estimate mode: nothing), let selection learn from it, book it, record it.

Everything that decides what a round costs (schedule, selection, cost profile, privacy accounting) is here or
below, so for the same seed both modes book exactly the same times, bytes, energy and epsilon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedsim.costs.profile import CostProfile
from fedsim.metrics.records import round_row
from fedsim.schedules import RoundPlan, Schedule


@dataclass(frozen=True)
class Trained:
    """What a plane did with one step's plan: the aggregator's statistics and an evaluation when one was due."""

    stats: dict[str, Any] = field(default_factory=dict)
    eval_loss: float | None = None


class Plane(Protocol):
    """Train mode's worker pool or estimate mode's bookkeeping, as the round loop sees it."""

    sizes: np.ndarray | None  # every client's number of samples (selection feedback in estimate mode)

    def before(self, rnd: int) -> None:
        """Called before step `rnd` is planned (train mode keeps what an abort must restore)."""

    def train(self, plan: RoundPlan) -> Trained:
        """Train (or not) the clients `plan` uses."""

    def record(self, plan: RoundPlan, row: dict[str, Any]) -> None:
        """Write the step's round row and client rows."""


def run_rounds(schedule: Schedule, plane: Plane, first: int, last: int, profile: CostProfile,
               accountant=None) -> None:
    """Steps first..last: plan, train, learn, book (with DP's epsilon after this many rounds), record."""
    for rnd in range(first, last + 1):
        t0 = time.perf_counter()
        plane.before(rnd)
        plan = schedule.next_round(rnd)
        out = plane.train(plan)
        schedule.feedback(plan, out.stats.get("results"), plane.sizes)
        row = round_row(plan, out.stats, out.eval_loss, time.perf_counter() - t0, profile)
        row["dp_epsilon"] = accountant.epsilon(rnd) if accountant is not None else None
        plane.record(plan, row)
