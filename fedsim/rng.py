"""Named, seeded random streams: every draw in fedsim comes from one of these, never from a global RNG.

A stream is identified by the scenario seed, a name ("population", "select", "dropout", ...) and integer keys
(round, client id), so results never depend on the order in which things are computed or on which worker runs
them.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str, *keys: int) -> np.random.Generator:
    """Return an independent generator for (seed, name, *keys); same arguments -> same sequence."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(zlib.crc32(name.encode()), *map(int, keys)))
    return np.random.Generator(np.random.PCG64(ss))


def seed_int(seed: int, name: str, *keys: int) -> int:
    """A 63-bit integer seed for libraries with their own RNG (torch), derived like `stream`."""
    return int(stream(seed, name, *keys).integers(0, 2**63 - 1))
