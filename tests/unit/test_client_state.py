"""The client-state store: newest write wins, cut back on resume, old writes dropped once no checkpoint needs them."""

import numpy as np

from fedsim.client_state import ClientStore


def _w(x):
    return {"w": np.array([x], np.float32)}


def test_read_returns_the_newest_write_and_truncate_cuts_back(tmp_path):
    store = ClientStore(tmp_path)
    assert store.read(5) is None
    store.write(5, 1, _w(1.0))
    store.write(5, 4, _w(4.0))
    store.write(1234567, 2, _w(2.0))  # another shard
    assert store.read(5)["w"][0] == 4.0 and store.read(1234567)["w"][0] == 2.0
    store.truncate(3)  # resume from the checkpoint of step 3: what step 3 saw
    assert store.read(5)["w"][0] == 1.0 and store.read(1234567)["w"][0] == 2.0
    store.truncate(1)
    assert store.read(1234567) is None


def test_writes_no_checkpoint_can_need_are_dropped(tmp_path):
    store = ClientStore(tmp_path)
    for step in (1, 2, 3):
        store.write(9, step, _w(step))
    assert len(list(tmp_path.glob("*/9.r*.npz"))) == 3  # no checkpoint yet: a resume from scratch needs none,
    store.checkpointed(2)  # but a checkpoint of step 2 needs the write of step 2, and step 3's follows it
    store.write(9, 5, _w(5.0))
    assert sorted(p.name for p in tmp_path.glob("*/9.r*.npz")) == ["9.r000002.npz", "9.r000003.npz", "9.r000005.npz"]
    store.checkpointed(5)
    store.write(9, 6, _w(6.0))
    assert sorted(p.name for p in tmp_path.glob("*/9.r*.npz")) == ["9.r000005.npz", "9.r000006.npz"]
    store.truncate(5)
    assert store.read(9)["w"][0] == 5.0
