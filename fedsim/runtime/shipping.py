"""Ship the base model and the tokenized data to worker actors on nodes that share no filesystem with the driver.

On a cluster (KubeRay pods, `ray up` nodes) a path that exists on the driver's node does not exist on the
others. The driver packs each directory a worker reads (the model directory with its tokenizer; a table
dataset's Arrow files) into ONE object in Ray's object store; each node unpacks it once into its own cache
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


@dataclass(frozen=True)
class Shipment:
    """A directory's files in Ray's object store: `ref` holds {relative path: bytes}; `key` digests them."""

    name: str
    key: str
    ref: Any  # ray.ObjectRef (resolved by the worker, so the constructor call stays small)
    size: int


def should_ship(mode: str, alive_nodes: int, joined: bool) -> bool:
    """Whether workers must get the files through the object store (`runtime.ship_files`; see the module
    docstring): Ray has `alive_nodes` nodes; `joined`: fedsim joined a running cluster by address."""
    if mode != "auto":
        return mode == "always"
    return joined or alive_nodes > 1


def pack(ray, path: str | Path) -> Shipment:
    """Put every file under `path` (sorted by relative path) into the object store as one object."""
    root = Path(path)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    h = hashlib.sha256()
    for name, blob in files.items():
        h.update(name.encode() + b"\0" + hashlib.sha256(blob).digest())
    return Shipment(root.name, h.hexdigest()[:16], ray.put(files), sum(map(len, files.values())))


def unpack(ray, shipment: Shipment) -> str:
    """This node's copy of a shipped directory, written once per node (the first worker to get the lock writes
    it to a temporary name and renames it; the others find it complete)."""
    from filelock import FileLock

    from fedsim.paths import cache_dir

    target = cache_dir("shipped") / f"{shipment.name}-{shipment.key}"
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, blob in ray.get(shipment.ref).items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(blob)
            tmp.rename(target)
    return str(target)


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
