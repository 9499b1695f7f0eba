"""Ship the base model and the tokenized data to worker actors on nodes that share no filesystem with the driver.

On a cluster (KubeRay pods, `ray up` nodes) a path that exists on the driver's node does not exist on the
others. The driver puts each directory a worker reads (the model directory with its tokenizer; a table
dataset's Arrow files) into Ray's object store, in CHUNK-sized objects (no process ever holds a whole large
model in its heap; Ray spills to disk what its store cannot hold); each node unpacks it once into its own cache
($FEDSIM_CACHE/shipped/<name>-<content digest>, under a file lock shared by that node's workers) and the
workers open that copy. Synthetic data needs nothing shipped: each worker generates a client's rows from the
scenario's seeded streams. Nothing is written back: the run directory lives on the driver's node, written by
the aggregator that runs there.

`runtime.ship_files`: "auto" ships when Ray has more than one node or fedsim joined a cluster by address;
"always" / "never" force it (never: every node has the same paths, e.g. baked into the image or on NFS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 64 << 20  # bytes per object: neither the driver nor a worker ever holds more than one in its heap


@dataclass(frozen=True)
class Shipment:
    """A directory's files in Ray's object store: `files` lists (relative path, size), `chunks` the object
    references of their concatenated bytes in CHUNK-sized uint8 arrays; `key` digests names and contents."""

    name: str
    key: str
    files: tuple[tuple[str, int], ...]
    chunks: tuple[Any, ...]  # ray.ObjectRef each (resolved by the worker, so the constructor call stays small)

    @property
    def size(self) -> int:
        """Bytes shipped."""
        return sum(n for _, n in self.files)


def should_ship(mode: str, alive_nodes: int, joined: bool) -> bool:
    """Whether workers must get the files through the object store (`runtime.ship_files`; see the module
    docstring): Ray has `alive_nodes` nodes; `joined`: fedsim joined a running cluster by address."""
    if mode != "auto":
        return mode == "always"
    return joined or alive_nodes > 1


def _stream(root: Path, files: list[tuple[str, int]]):
    """The files' bytes, concatenated, in pieces of at most CHUNK bytes."""
    buf = bytearray()
    for name, _ in files:
        with open(root / name, "rb") as f:
            while piece := f.read(CHUNK - len(buf)):
                buf += piece
                if len(buf) == CHUNK:
                    yield bytes(buf)
                    buf.clear()
    if buf:
        yield bytes(buf)


def pack(ray, path: str | Path) -> Shipment:
    """Put every file under `path` (sorted by relative path) into the object store, CHUNK bytes per object."""
    import numpy as np

    root = Path(path)
    files = [(str(p.relative_to(root)), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()]
    h = hashlib.sha256()
    chunks = []
    for name, size in files:
        h.update(f"{name}\0{size}\0".encode())
    for piece in _stream(root, files):
        h.update(piece)
        chunks.append(ray.put(np.frombuffer(piece, dtype=np.uint8)))  # numpy: read back zero-copy on each node
    return Shipment(root.name, h.hexdigest()[:16], tuple(files), tuple(chunks))


def unpack(ray, shipment: Shipment) -> str:
    """This node's copy of a shipped directory, written once per node: the first worker to get the lock writes it
    chunk by chunk under a temporary name (removing what a worker that died mid-copy left) and renames it; the
    others find it complete."""
    from filelock import FileLock

    from fedsim.paths import cache_dir

    target = cache_dir("shipped") / f"{shipment.name}-{shipment.key}"
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            for stale in target.parent.glob(target.name + ".tmp*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            _write(ray, shipment, tmp)
            tmp.rename(target)
    return str(target)


def _write(ray, shipment: Shipment, where: Path) -> None:
    """The shipped files under `where`, fetching one chunk at a time."""
    chunks = iter(shipment.chunks)
    data, at = memoryview(b""), 0
    for name, size in shipment.files:
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        with open(where / name, "wb") as f:
            left = size
            while left:
                if at == len(data):
                    data, at = memoryview(ray.get(next(chunks))), 0
                n = min(left, len(data) - at)
                f.write(data[at:at + n])
                at, left = at + n, left - n
    where.mkdir(parents=True, exist_ok=True)  # an empty directory ships too


@dataclass(frozen=True)
class Shipped:
    """What a worker is given instead of driver paths: the model directory and, for table data, its Arrow files."""

    model: Shipment
    train: Shipment | None = None

    @classmethod
    def of(cls, ray, model_dir: str, data_spec) -> Shipped:
        """Pack the model directory and, when the data is a table, its tokenized rows."""
        return cls(pack(ray, model_dir), pack(ray, data_spec.train_path) if data_spec.train_path else None)

    def local(self, ray, data_spec) -> tuple[str, Any]:
        """(model directory, data spec) on this node: the shipped copies in place of the driver's paths."""
        model_dir = unpack(ray, self.model)
        train = unpack(ray, self.train) if self.train else data_spec.train_path
        return model_dir, dataclasses.replace(data_spec, model_dir=model_dir, train_path=train)
