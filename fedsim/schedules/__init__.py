"""Schedules: who trains when, on the virtual clock (sync rounds, async FedBuff)."""

from __future__ import annotations

from fedsim.clock import Clock
from fedsim.costs.profile import CostProfile
from fedsim.population import Population
from fedsim.scenario.schema import Scenario
from fedsim.schedules.base import PHASES, STATUSES, RoundPlan, select
from fedsim.schedules.fedbuff import FedBuffSchedule
from fedsim.schedules.sync import SyncSchedule, close_round

__all__ = ["PHASES", "STATUSES", "FedBuffSchedule", "RoundPlan", "SyncSchedule", "close_round", "make_schedule",
           "select"]


def make_schedule(s: Scenario, pop: Population, profile: CostProfile, clock: Clock | None = None):
    """The schedule the scenario names (`server.schedule`)."""
    cls = FedBuffSchedule if s.server.schedule == "async" else SyncSchedule
    return cls(s, pop, profile, clock)
