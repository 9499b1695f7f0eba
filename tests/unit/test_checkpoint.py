"""Checkpoints and the ledger stay consistent whatever step a crash hits; --overwrite deletes only run dirs."""

import json
import os
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest

from fedsim import atomic
from fedsim.errors import ConfigError
from fedsim.metrics.ledger import PARTS, Ledger
from fedsim.rundir import MARKER, is_run_dir, open_run_dir, write_summary
from fedsim.runtime import checkpoint
from fedsim.runtime.checkpoint import truncate_ledger
from fedsim.scenario import load
from tests.unit.test_ledger import _cols, _row

ROUNDS, STOP, EVERY = 7, 4, 2  # the first invocation stops after round STOP (--stop-after), the second resumes


class Crash(BaseException):
    """The process dies: not an OSError, so no `ignore_errors` or cleanup handler can swallow it."""


class Faults:
    """Counts the filesystem steps that commit or delete (os.replace, os.unlink, os.rmdir); the `crash_at`-th and
    every later one raises Crash, as if the process had died there."""

    REAL = {op: getattr(os, op) for op in ("replace", "unlink", "rmdir")}

    def __init__(self, monkeypatch, crash_at=None):
        self.calls, self.crash_at = 0, crash_at
        for op, real in self.REAL.items():
            monkeypatch.setattr(os, op, self._wrap(real))

    def _wrap(self, real):
        def step(*args, **kwargs):
            self.calls += 1
            if self.crash_at is not None and self.calls >= self.crash_at:
                raise Crash(self.calls)
            return real(*args, **kwargs)
        return step

    def heal(self):
        """The process restarts: filesystem calls work again."""
        self.crash_at = None


def _invocation(run_dir, first, last, resume_rows):
    """What train mode does to the ledger: a flush per round, a checkpoint every EVERY rounds and at the end."""
    ledger = Ledger(run_dir, resume_rows=resume_rows)
    for rnd in range(first, last + 1):
        ledger.record(_row(rnd), _cols(rnd, n=rnd % 4))  # round 4 has no client rows
        ledger.flush(parquet=True)
        if rnd % EVERY == 0 or rnd == last:
            checkpoint.save(run_dir, rnd, {"schedule": {"clock": float(rnd)}}, {rnd: {"a": np.full(3, rnd)}})
    ledger.close()


def _resume(run_dir):
    """--resume: cut the ledger back to the newest checkpoint (none: to round 0) and run to the end."""
    try:
        rnd = checkpoint.latest(run_dir)[0]["round"]
    except ConfigError:
        rnd = 0
    kept = truncate_ledger(run_dir, rnd)
    assert [r["round"] for r in kept] == list(range(1, rnd + 1))
    _invocation(run_dir, rnd + 1, ROUNDS, kept)


def _run(run_dir):
    run_dir.mkdir()
    _invocation(run_dir, 1, STOP, None)
    _resume(run_dir)


def _listing(run_dir):
    """Every path of the run dir but TensorBoard's event files and the checkpoints (a crash while pruning one
    can leave an extra, complete one when no later checkpoint is written to prune it)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.parent.name != "tb" and "checkpoints" not in p.parts)


def test_a_crash_at_any_commit_or_delete_step_then_resume_gives_the_uninterrupted_ledger(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    straight.mkdir()
    _invocation(straight, 1, ROUNDS, None)
    counter = Faults(monkeypatch)
    _run(tmp_path / "count")
    steps = counter.calls
    assert steps > 4 * ROUNDS

    for k in range(1, steps + 1):
        run_dir = tmp_path / f"crash{k}"
        faults = Faults(monkeypatch, crash_at=k)
        with pytest.raises(Crash):
            _run(run_dir)
        faults.heal()
        _resume(run_dir)
        assert (run_dir / "rounds.jsonl").read_bytes() == (straight / "rounds.jsonl").read_bytes(), k
        assert pq.read_table(run_dir / "clients.parquet").equals(pq.read_table(straight / "clients.parquet")), k
        assert _listing(run_dir) == _listing(straight), k  # no leftover part or temp file
        assert checkpoint.latest(run_dir)[0]["round"] == ROUNDS, k
        for done in (run_dir / "checkpoints").glob("round_*"):  # never a partial one
            assert sorted(p.name for p in done.iterdir()) == [f"global_v{done.name[6:]}.npz", "state.pkl"], k


def test_checkpoint_size_does_not_grow_with_rounds_and_rows_come_from_the_ledger(tmp_path):
    ledger = Ledger(tmp_path)
    sizes = []
    for rnd in range(1, 41):
        ledger.record(_row(rnd), _cols(rnd))
        ledger.flush(parquet=True)
        path = checkpoint.save(tmp_path, rnd, {"schedule": {"clock": 1.5 * rnd}, "initial_eval": 2.0},
                               {rnd: {"a": np.zeros(4)}})
        sizes.append((path / "state.pkl").stat().st_size)
    assert len(set(sizes)) == 1
    assert "rows" not in pickle.loads((path / "state.pkl").read_bytes())
    with pytest.raises(ValueError, match="no round rows"):
        checkpoint.save(tmp_path, 41, {"rows": []}, {})
    state, versions = checkpoint.latest(tmp_path)
    assert state["round"] == 40 and list(versions) == [40]
    assert truncate_ledger(tmp_path, state["round"]) == [json.loads(json.dumps(_row(r))) for r in range(1, 41)]


def test_latest_skips_leftovers_and_keeps_the_newest_two(tmp_path):
    for rnd in (8, 9, 10, 10):  # round 10 saved twice (resumed, then stopped at the same round)
        checkpoint.save(tmp_path, rnd, {"v": rnd}, {})
    root = tmp_path / "checkpoints"
    (root / ".tmp_round_00011").mkdir()  # a crash while writing round 11
    assert sorted(p.name for p in root.iterdir()) == [".tmp_round_00011", "round_00009", "round_00010"]
    assert checkpoint.latest(tmp_path)[0] == {"v": 10, "round": 10}
    checkpoint.save(tmp_path, 100000, {"v": 0}, {})  # sorted by number, not by name
    assert sorted(p.name for p in root.iterdir()) == ["round_00010", "round_100000"]
    assert checkpoint.latest(tmp_path)[0]["round"] == 100000


def test_atomic_write_keeps_the_old_content_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    atomic.atomic_write_text(target, "old")
    Faults(monkeypatch, crash_at=1)
    with pytest.raises(Crash):
        atomic.atomic_write_text(target, "new")
    assert target.read_text() == "old"


def test_overwrite_refuses_a_directory_that_is_not_a_run_dir(tmp_path):
    s = load({})
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a fedsim run directory; refusing to delete it"):
        open_run_dir(home, s, overwrite=True)
    assert (home / "thesis.tex").read_text() == "years of work" and not is_run_dir(home)
    with pytest.raises(ConfigError, match="is not a directory"):
        open_run_dir(home / "thesis.tex", s, overwrite=True)


def test_overwrite_replaces_a_run_dir_new_or_old(tmp_path):
    s = load({})
    run = open_run_dir(tmp_path / "run", s, overwrite=False)
    assert (run / MARKER).is_file() and is_run_dir(run)
    write_summary(run, {"rounds": 3})
    assert json.loads((run / "summary.json").read_text()) == {"rounds": 3}
    with pytest.raises(ConfigError, match="--overwrite"):
        open_run_dir(run, s, overwrite=False)
    open_run_dir(run, s, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "config.yaml"]

    old = tmp_path / "old"  # written before the marker existed
    old.mkdir()
    (old / "config.yaml").write_text("seed: 1\n")
    (old / "rounds.jsonl").write_text("")
    assert is_run_dir(old)
    open_run_dir(old, s, overwrite=True)
    assert (old / MARKER).is_file() and not (old / "rounds.jsonl").exists()
    assert not any(p.name.endswith(".tmp") for p in [*run.iterdir(), *old.iterdir()])
    assert not (run / PARTS).exists()
