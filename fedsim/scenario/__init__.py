"""Scenario: YAML -> typed frozen config (`load`), dotted overrides, checks against the catalog."""

from fedsim.scenario.load import dump, load, parse_overrides
from fedsim.scenario.schema import Scenario

__all__ = ["Scenario", "dump", "load", "parse_overrides"]
