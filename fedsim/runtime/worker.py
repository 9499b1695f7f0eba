"""The worker actor: one base model per process, one LoRA adapter swapped in per client task.

Holds caches only (model, memory-mapped data); all client state comes in with the task and leaves with the
result, so any worker can train any client and a restarted worker loses nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from fedsim.scenario.schema import Scenario


class Worker:
    """Trains virtual clients one after another on a shared base model (wrapped by `ray.remote`)."""

    def __init__(self, scenario: dict, model_dir: str, train_path: str, eval_path: str):
        from fedsim.logs import quiet_libraries

        quiet_libraries()
        import datasets
        import torch

        from fedsim.models.local import load_local_model
        from fedsim.scenario.load import load

        self.s: Scenario = load(scenario)
        torch.set_num_threads(self.s.runtime.threads_per_worker)
        self.lm = load_local_model(
            model_dir, self.s.peft, self.s.runtime.train_dtype, self.s.training.gradient_checkpointing
        )
        train = datasets.load_from_disk(train_path).with_format("numpy")[:]
        evals = datasets.load_from_disk(eval_path).with_format("numpy")[:]
        self.train_ids, self.train_labels = train["input_ids"].astype(np.int32), train["labels"].astype(np.int32)
        self.eval_ids, self.eval_labels = evals["input_ids"].astype(np.int32), evals["labels"].astype(np.int32)

    def initial_state(self) -> dict[str, np.ndarray]:
        """The adapter as peft initialised it (identical on every worker: seeded)."""
        return self.lm.get_state()

    def train(self, rnd: int, client: int, rows: np.ndarray, weight: float, global_state: dict) -> tuple:
        """Train one client from `global_state`; returns (aggregation weight, mean loss, delta as the server
        decodes it). The weight is its number of samples times any staleness discount."""
        from fedsim.costs.compression import cast, compress
        from fedsim.models.local import train_client

        c = self.s.costs  # the client trains from the global as received and the server decodes what it sent
        received = {k: cast(v, c.transmit_dtype) for k, v in global_state.items()}
        delta, loss = train_client(
            self.lm, received, self.train_ids, self.train_labels, rows, self.s.training, self.s.seed, rnd, client
        )
        sent = {k: compress(v, c.transmit_dtype, c.upload_compression, c.topk_fraction) for k, v in delta.items()}
        return float(weight), loss, sent

    def evaluate(self, global_state: dict) -> float:
        """Eval loss of the global adapter on the held-out set."""
        from fedsim.models.local import evaluate

        return evaluate(self.lm, global_state, self.eval_ids, self.eval_labels)

    def export_adapter(self, global_state: dict) -> dict[str, bytes]:
        """The global adapter as files written by peft's `save_pretrained` (returned as bytes: works across nodes)."""
        self.lm.set_state(global_state)
        with tempfile.TemporaryDirectory() as tmp:
            self.lm.model.save_pretrained(tmp)
            return {str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}

    def pid(self) -> int:
        """Process id (tests use it to check that clients are multiplexed on few processes)."""
        return os.getpid()
