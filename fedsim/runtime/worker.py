"""The worker actor: one base model per process, one LoRA adapter swapped in per client task.

Holds caches only (model, tokenizer, the memory-mapped data); a task carries its client's row ids and the
global version to train from, so any worker can train any client and a restarted worker loses nothing. Only
the rows of the client being trained exist in memory.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from fedsim.client_round import ClientResult, ClientTask, state_digest
from fedsim.errors import ConfigError, one_line
from fedsim.scenario.schema import Scenario


class Worker:
    """Trains virtual clients one after another on a shared base model (wrapped by `ray.remote`).

    A failure while loading (a bad model directory, a target module the model does not have) is kept and
    reported by `ready()` as one line, instead of killing the actor with a traceback.
    """

    def __init__(self, scenario: dict, model_dir: str, data_spec):
        self.error: tuple[str, str] | None = None  # (key path, message); key "" for a runtime failure
        try:
            self._load(scenario, model_dir, data_spec)
        except ConfigError as exc:
            self.error = (exc.path, exc.message)
        except Exception as exc:  # noqa: BLE001 - out of memory, CUDA, a path missing on this node: not bad input
            self.error = ("", f"worker could not load {model_dir}: {one_line(exc)}")

    def _load(self, scenario: dict, model_dir: str, data_spec) -> None:
        from fedsim.logs import quiet_libraries

        quiet_libraries()
        import torch

        from fedsim.data.reader import DataReader
        from fedsim.models.local import load_local_model
        from fedsim.scenario.load import resolved

        self.s: Scenario = resolved(scenario)
        torch.set_num_threads(self.s.runtime.threads_per_worker)
        # (the target modules were checked on the meta-device model before Ray started: fedsim.models.shapes)
        self.lm = load_local_model(
            model_dir, self.s.peft, self.s.runtime.train_dtype, self.s.training.gradient_checkpointing
        )
        self.data = DataReader(data_spec)
        self._eval: tuple[np.ndarray, np.ndarray] | None = None

    def ready(self) -> tuple[str, str] | None:
        """None once the model and data are loaded; else (key path, message) of the error that stopped it (key
        path "" for a failure that is not the scenario's fault)."""
        return self.error

    def _check(self) -> None:
        if self.error and self.error[0]:
            raise ConfigError(*self.error)
        if self.error:
            raise RuntimeError(self.error[1])

    def initial_state(self) -> dict[str, np.ndarray]:
        """The adapter as peft initialised it (identical on every worker: seeded)."""
        self._check()
        return self.lm.get_state()

    def train(self, task: ClientTask, global_state: dict) -> tuple[ClientResult, dict[str, np.ndarray]]:
        """Train one client from `global_state` (the version it was dispatched with); returns its statistics
        and its update as the server decodes it (called with num_returns=2: two object references)."""
        from fedsim.costs.compression import cast, compress
        from fedsim.models.local import train_client

        self._check()
        c = self.s.costs  # the client trains from the global as received and the server decodes what it sent
        ids, labels, dropped = self.data.client(task.client, task.rows)
        trained_from = state_digest(global_state)
        if len(ids) == 0:
            return ClientResult(task.client, task.dispatch, 0, math.nan, trained_from, False, dropped), {}
        received = {k: cast(v, c.transmit_dtype) for k, v in global_state.items()}
        delta, loss = train_client(self.lm, received, ids, labels, self.s.training, self.s.seed, task.dispatch,
                                   task.client, task.proximal_mu)
        if task.adversarial:
            from fedsim.adversary import attack

            adv = self.s.population.adversaries
            delta = attack(adv.attack, adv.scale, delta, self.s.seed, task.dispatch, task.client)
        sent = {k: compress(v, c.transmit_dtype, c.upload_compression, c.topk_fraction) for k, v in delta.items()}
        # what the server would fold: a float16 wire format overflows to inf above 65504
        finite = math.isfinite(loss) and all(np.isfinite(v).all() for v in sent.values())
        return ClientResult(task.client, task.dispatch, len(ids), loss, trained_from, finite, dropped), sent

    def evaluate(self, global_state: dict) -> float:
        """Eval loss of the global adapter on the held-out set."""
        from fedsim.models.local import evaluate

        self._check()
        if self._eval is None:
            self._eval = self.data.eval_set()
        return evaluate(self.lm, global_state, *self._eval)

    def export_adapter(self, global_state: dict) -> dict[str, bytes]:
        """The global adapter as files written by peft's `save_pretrained` (returned as bytes: works across nodes)."""
        self._check()
        self.lm.set_state(global_state)
        with tempfile.TemporaryDirectory() as tmp:
            self.lm.model.save_pretrained(tmp)
            return {str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}

    def pid(self) -> int:
        """Process id (tests use it to check that clients are multiplexed on few processes, or to kill one)."""
        return os.getpid()
