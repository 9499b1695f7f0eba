"""A multi-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster): workers on two nodes that share
no paths with the driver get the model and the tokenized data through the object store, and the run equals the
one-node run."""

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

import fedsim
from fedsim.errors import RunAborted
from fedsim.models.base import ensure_base_model
from fedsim.scenario import load

sys.path.insert(0, str(Path(__file__).parent))
from test_run import TINY, _assert_same_run  # noqa: E402

# Python's audit hook in every worker process of the two worker nodes: opening any file under the driver's own
# folder (its fedsim cache with the model and the tokenized table, and the source data) raises, and every open
# under the node's own cache is logged (proof that the hook runs and that the worker loaded the shipped copy).
SITECUSTOMIZE = textwrap.dedent("""
    import os, sys
    _forbid, _own, _log = (os.environ.get(k) for k in ("AUDIT_FORBID", "AUDIT_OWN", "AUDIT_LOG"))
    if _forbid:
        def _hook(event, args):
            if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
                return
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(_forbid):
                raise PermissionError(f"a worker opened a path only the driver's node has: {path}")
            if path.startswith(_own) and not path.startswith(_log):
                with open(_log, "a") as f:
                    f.write(path + "\\n")
        sys.addaudithook(_hook)
""")


def _table_data(folder: Path) -> dict:
    from fedsim.data.synthetic import FAMILIES, generate

    data = generate({f: 60 for f in FAMILIES[:4]}, seed=4, name="cluster")
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r, "task": t}) + "\n"
                            for p, r, t in zip(data["prompt"], data["response"], data["task"])))
    return {"data.source": str(path), "data.eval_samples": 32}


def test_workers_on_other_nodes_read_no_driver_path_and_match_one_node(tmp_path, monkeypatch):
    driver = tmp_path / "driver"  # the driver's node only: its cache and its data file
    model = ensure_base_model(load(TINY).model)  # built once in the suite's cache; copied into the driver's
    shutil.copytree(model, driver / "cache" / "models" / model.name)
    monkeypatch.setenv("FEDSIM_CACHE", str(driver / "cache"))
    (driver / "data").mkdir()
    overrides = {**_table_data(driver / "data"), "runtime.num_workers": 2, "server.rounds": 3}
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node: no worker fits
    nodes = []
    for i in range(2):
        own = tmp_path / f"node{i}"
        own.mkdir()
        env = {"FEDSIM_CACHE": str(own / "cache"), "PYTHONPATH": str(hook), "AUDIT_FORBID": str(driver),
               "AUDIT_OWN": str(own), "AUDIT_LOG": str(own / "opened.log")}
        cluster.add_node(num_cpus=1, env_vars=env)
        nodes.append(own)
    try:
        ray.init(address=cluster.address)
        spread = fedsim.run(TINY, overrides, out=tmp_path / "spread", quiet=True)
        # the hook bites: workers told to open the driver's paths cannot load there
        with pytest.raises(RunAborted, match=r"round 1: worker could not load .*PermissionError: a worker opened a "
                                             r"path only the driver's node has"):
            fedsim.run(TINY, {**overrides, "runtime.ship_files": "never"}, out=tmp_path / "unshipped", quiet=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    for own in nodes:  # a worker on each node loaded the model and the table from the node's own copy
        opened = (own / "opened.log").read_text()
        shipped = own / "cache" / "shipped"
        assert str(shipped) in opened and "config.json" in opened and ".arrow" in opened
        copies = sorted(p.name for p in shipped.iterdir() if p.is_dir())
        assert len(copies) == 2 and any(c.startswith(model.name + "-") for c in copies)  # the model, the table
    assert not list((driver / "cache").glob("shipped"))  # the driver's node never needed a copy
    assert spread.summary["num_workers"] == 2 and spread.summary["complete"]

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        alone = fedsim.run(TINY, overrides, out=tmp_path / "alone", quiet=True)
    finally:
        ray.shutdown()
    _assert_same_run(spread, alone)


@pytest.mark.parametrize("mode, nodes, joined, expected", [
    ("auto", 1, False, False), ("auto", 2, False, True), ("auto", 1, True, True),
    ("always", 1, False, True), ("never", 3, True, False),
])
def test_when_files_are_shipped(mode, nodes, joined, expected):
    from fedsim.runtime.shipping import should_ship

    assert should_ship(mode, nodes, joined) is expected


def test_a_shipped_directory_arrives_whole_across_chunk_boundaries(tmp_path, monkeypatch):
    """Files split over 7-byte chunks (a file spanning several, several in one, an empty one, a subfolder) come
    back byte for byte on the node; a copy a crashed worker left half-written is replaced."""
    from fedsim.runtime import shipping

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    blobs = {"a.bin": bytes(range(23)), "b.txt": b"xyz", "empty": b"", "sub/c.json": b'{"k": 1}' * 3}
    for name, blob in blobs.items():
        (src / name).write_bytes(blob)
    monkeypatch.setattr(shipping, "CHUNK", 7)
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "node"))
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        shipment = shipping.pack(ray, src)
        assert len(shipment.chunks) == -(-sum(map(len, blobs.values())) // 7) and shipment.size == 23 + 3 + 24
        stale = tmp_path / "node" / "shipped" / f"model-{shipment.key}.tmp999"
        stale.mkdir(parents=True)
        (stale / "a.bin").write_bytes(b"torn")
        copy = Path(shipping.unpack(ray, shipment))
    finally:
        ray.shutdown()
    assert {str(p.relative_to(copy)): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == blobs
    assert not stale.exists() and copy.name == f"model-{shipment.key}"

