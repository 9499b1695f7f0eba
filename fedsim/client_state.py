"""Per-client state outside the actors (SCAFFOLD's control variates, personal adapters): one npz file per client
and write, on disk, in the run directory.

A million-client federation keeps state only for clients that trained, and no process holds it in memory. A
write at server step r goes to `client_state/<shard>/<client>.r<r>.npz` (atomically); a read returns the newest.
Like the ledger, the store is cut back on resume: `truncate(r)` deletes every write after the checkpoint's step
r, so a resumed run reads exactly what the uninterrupted run read. Old writes are dropped as soon as no
checkpoint can need them: a client keeps its writes after the newest checkpoint plus the newest one before it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fedsim.atomic import atomic_write_bytes

Tensors = dict[str, np.ndarray]
SHARD = 1000  # clients per directory


class ClientStore:
    """Versioned per-client tensors under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoint = 0  # newest checkpointed step: writes up to it that a newer one supersedes can go

    def _dir(self, client: int) -> Path:
        return self.root / f"{client // SHARD:06d}"

    def _writes(self, client: int) -> list[tuple[int, Path]]:
        d = self._dir(client)
        if not d.is_dir():
            return []
        return sorted((int(p.name.split(".r", 1)[1].removesuffix(".npz")), p) for p in d.glob(f"{client}.r*.npz"))

    def read(self, client: int) -> Tensors | None:
        """The client's newest state, or None if it never wrote one."""
        writes = self._writes(client)
        if not writes:
            return None
        with np.load(writes[-1][1]) as data:
            return {k: data[k] for k in data.files}

    def write(self, client: int, step: int, tensors: Tensors) -> None:
        """Store the client's state as of server step `step`; forget writes no checkpoint can need."""
        self._dir(client).mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **{k: tensors[k] for k in sorted(tensors)})
        atomic_write_bytes(self._dir(client) / f"{client}.r{step:06d}.npz", buf.getvalue())
        writes = self._writes(client)
        kept = [w for w in writes if w[0] <= self.checkpoint][-1:] + [w for w in writes if w[0] > self.checkpoint]
        for w in writes:
            if w not in kept:
                w[1].unlink()

    def checkpointed(self, step: int) -> None:
        """A checkpoint of step `step` exists: writes it supersedes may be dropped from now on."""
        self.checkpoint = max(self.checkpoint, step)

    def truncate(self, step: int) -> None:
        """Delete every write after step `step` (resume from its checkpoint)."""
        self.checkpoint = step
        if not self.root.is_dir():
            return
        for path in self.root.glob("*/*.npz"):
            if int(path.name.split(".r", 1)[1].removesuffix(".npz")) > step:
                path.unlink()
        for path in self.root.glob("*/.*.tmp*"):  # a write torn by a crash
            path.unlink()
