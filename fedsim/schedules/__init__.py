"""Schedules: who trains when, on the virtual clock (sync rounds, async FedBuff)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedsim.clock import Clock
from fedsim.costs.profile import CostProfile
from fedsim.population import Population
from fedsim.scenario.schema import Scenario
from fedsim.schedules.base import PHASES, STATUSES, RoundPlan, select
from fedsim.schedules.fedbuff import FedBuffSchedule
from fedsim.schedules.sync import SyncSchedule, close_round

__all__ = ["PHASES", "STATUSES", "FedBuffSchedule", "RoundPlan", "Schedule", "SyncSchedule", "close_round",
           "make_schedule", "select"]


class Schedule(Protocol):
    """Decides, on the virtual clock, who trains in each server step and what everyone's work cost."""

    clock: Clock

    def next_round(self, rnd: int) -> RoundPlan:
        """Run the virtual clock through server step `rnd` (which ends in global version `rnd`)."""

    def min_live_version(self) -> int:
        """Oldest global version a future step may still train from; older ones can be forgotten."""

    def state(self) -> dict:
        """Checkpointable state (plain data)."""

    def restore(self, state: dict) -> None:
        """Continue from a `state()`."""

    def feedback(self, plan: RoundPlan, results: list | None, sizes: np.ndarray | None) -> None:
        """What a finished step taught its client selection (train mode: the used clients' results)."""


def make_schedule(s: Scenario, pop: Population, profile: CostProfile, clock: Clock | None = None) -> Schedule:
    """The schedule the scenario names (`server.schedule`)."""
    cls = FedBuffSchedule if s.server.schedule == "async" else SyncSchedule
    return cls(s, pop, profile, clock)
