"""The ledger survives a crash: client rows are complete part files; resuming cuts everything back."""

import json

import numpy as np
import pandas as pd

from fedsim.metrics.ledger import CLIENT_SCHEMA, PARTS, Ledger
from fedsim.runtime.checkpoint import truncate_ledger


def _cols(rnd, n=3):
    cols = {f.name: np.zeros(n) for f in CLIENT_SCHEMA}
    cols.update(round=np.full(n, rnd), client_id=np.arange(n) + 10 * rnd, device=np.array(["laptop"] * n, object),
                network=np.array(["wifi"] * n, object), status=np.array(["completed"] * n, object),
                failed_phase=np.array([""] * n, object), quantization=np.array(["none"] * n, object),
                trained=np.ones(n, bool), finish_s=np.array([1.0, np.nan, 2.0]))
    return cols


def _row(rnd):
    return {"round": rnd, "bytes_up": 1.0 * rnd, "eval_loss": None, "failed": False}


def test_crash_then_resume_keeps_exactly_the_checkpointed_rounds(tmp_path):
    ledger = Ledger(str(tmp_path), flush_rows=1)  # a part file per round, as train mode writes them
    for rnd in range(1, 6):
        ledger.record(_row(rnd), _cols(rnd))
    ledger.flush()
    del ledger  # crash: never closed, so no merged clients.parquet
    assert not (tmp_path / "clients.parquet").exists() and len(list((tmp_path / PARTS).iterdir())) == 5

    kept = truncate_ledger(tmp_path, 3)
    assert [r["round"] for r in kept] == [1, 2, 3]
    resumed = Ledger(str(tmp_path), flush_rows=1, resume_rows=kept)
    for rnd in (4, 5, 6):
        resumed.record(_row(rnd), _cols(rnd))
    resumed.close()
    rounds = [json.loads(x)["round"] for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4, 5, 6]
    clients = pd.read_parquet(tmp_path / "clients.parquet")
    assert list(clients.groupby("round").size()) == [3] * 6
    assert clients.finish_s.isna().sum() == 6  # NaN -> null survives the round trip
    assert not (tmp_path / PARTS).exists()
