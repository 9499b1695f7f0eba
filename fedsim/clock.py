"""A deterministic discrete-event clock (in the spirit of SimPy's core, in a few dozen lines).

Events sit in a heap ordered by (time, priority, seq): equal times resolve by priority, then by insertion
order, so the same pushes always pop in the same order. Virtual time only moves when an event pops or the
owner closes a round; it never reads the host's clock.
"""

from __future__ import annotations

import heapq
from typing import Any


class Clock:
    """Virtual time plus a heap of pending events."""

    def __init__(self, now: float = 0.0):
        self.now = float(now)
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0

    def push(self, time: float, event: Any, priority: int = 0) -> None:
        """Schedule `event` at virtual `time` (not before now); lower priority pops first at equal times."""
        if time < self.now:
            raise ValueError(f"cannot schedule at {time} before now={self.now}")
        heapq.heappush(self._heap, (float(time), priority, self._seq, event))
        self._seq += 1

    def pop(self) -> tuple[float, Any]:
        """Remove the next event, advance `now` to its time, return (time, event)."""
        time, _, _, event = heapq.heappop(self._heap)
        self.now = time
        return time, event

    def clear(self, now: float | None = None) -> None:
        """Drop all pending events (e.g. the stragglers of a closed round) and optionally set `now`."""
        self._heap.clear()
        if now is not None:
            self.now = float(now)

    def __len__(self) -> int:
        return len(self._heap)

    def state(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {"now": self.now, "heap": list(self._heap), "seq": self._seq}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Clock:
        """Restore a clock saved with `state()`."""
        clock = cls(state["now"])
        clock._heap = [tuple(e) for e in state["heap"]]
        heapq.heapify(clock._heap)
        clock._seq = int(state["seq"])
        return clock
