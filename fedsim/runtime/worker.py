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
from fedsim.costs.compression import cast, compress
from fedsim.errors import ConfigError, one_line
from fedsim.scenario.schema import Scenario


class WorkerUnusable(RuntimeError):
    """The worker could not load (e.g. after a restart): a fault of the worker, never of the client it was given."""


class Worker:
    """Trains virtual clients one after another on a shared base model (wrapped by `ray.remote`).

    A failure while loading (a bad model directory, a target module the model does not have) is kept and
    reported by `ready()` as one line, instead of killing the actor with a traceback.
    """

    def __init__(self, scenario: dict, model_dir: str, data_spec, shipped=None):
        self.error: tuple[str, str] | None = None  # (key path, message); key "" for a runtime failure
        try:
            if shipped is not None:  # another node's paths: this node's copies (fedsim.runtime.shipping)
                import ray

                model_dir, data_spec = shipped.local(ray, data_spec)
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
        from fedsim.models.device import local_placement

        # device, dtype, quantized base, attention kernel, optimizer and master weights for the hardware this worker
        # sees (fedsim.models.device)
        self.where = local_placement(self.s.runtime, self.s.model, self.s.training)
        self.lm = load_local_model(model_dir, self.s.peft, checkpointing=self.s.training.gradient_checkpointing,
                                   where=self.where)
        if self.s.runtime.engine == "deepspeed":  # one engine per worker, reused by every client it trains
            from fedsim.models.deepspeed_step import deepspeed_model

            self.lm = deepspeed_model(self.lm, self.s)
        self.data = DataReader(data_spec)
        from fedsim.models.shapes import is_shared

        self.adapter0 = self.lm.get_state()  # as peft initialised it (seeded: the same on every worker)
        # what a client starts its personal part from (FedSA-LoRA: B as peft initialised it, zeros)
        self.personal0 = {k: v for k, v in self.adapter0.items() if not is_shared(k, self.s.peft)}
        from fedsim.runtime.ranked import RankedLoRA

        self.ranked = RankedLoRA(self.lm, self.s, self.adapter0)  # clients of different ranks (HetLoRA, ...)
        # personalised evaluation needs each client's own held-out rows (a seeded 20% of a table client's)
        self.holdout = 0.2 if self.personal0 and self.s.server.client_eval_clients else 0.0
        self._eval: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None  # ids, labels, task families
        self._secagg = None  # (round key, SecAggRound): the cohort's key material, built once per round
        self._replay: tuple[str | None, dict] = (None, {})  # FedKSeed: (version digest, its replayed adapter)

    def ready(self) -> tuple[str, str] | None:
        """None once the model and data are loaded; else (key path, message) of the error that stopped it (key
        path "" for a failure that is not the scenario's fault)."""
        return self.error

    def _check(self) -> None:
        if self.error and self.error[0]:
            raise ConfigError(*self.error)
        if self.error:
            raise WorkerUnusable(self.error[1])

    def placement(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """What this worker trains with (summary.json's train_device, train_dtype, base_quantization,
        train_attention, train_optimizer) and what of the scenario it could not honour, one line each (said once
        by the driver)."""
        self._check()
        return self.where.facts(), self.where.notes

    def initial_state(self) -> dict[str, np.ndarray]:
        """The adapter as peft initialised it (identical on every worker: seeded)."""
        self._check()
        return self.lm.get_state()

    def train(self, task: ClientTask, global_state: dict, client_state: dict | None = None
              ) -> tuple[ClientResult, dict[str, dict[str, np.ndarray]]]:
        """`_train`, its result stamped with this worker process's Ray id (the pool counts restarts from it)."""
        import dataclasses

        import ray

        result, payload = self._train(task, global_state, client_state)
        if not ray.is_initialized():  # used in-process (tests, benchmarks): asking Ray would start it
            return result, payload
        return dataclasses.replace(result, worker_id=ray.get_runtime_context().get_worker_id()), payload

    def _train(self, task: ClientTask, global_state: dict, client_state: dict | None = None
               ) -> tuple[ClientResult, dict[str, dict[str, np.ndarray]]]:
        """Train one client from `global_state` (the version it was dispatched with; SCAFFOLD: with the server
        variate c in it, and the client's own c_i in `client_state`) under its task's `ClientConfig`; returns its
        statistics and its payload as the server decodes it: "delta" (or, under secure aggregation, "masked"),
        SCAFFOLD's "control" and the "client_state" it keeps (called with num_returns=2: two references)."""
        from fedsim.models.local import train_client
        from fedsim.strategies import scaffold
        from fedsim.strategies.base import release

        self._check()
        if task.client in self.s.runtime.fail_clients:
            raise RuntimeError(f"injected failure of client {task.client} (runtime.fail_clients)")
        c, cfg = self.s.costs, task.config  # the client trains from the global as received; the server decodes it
        ids, labels, dropped = self.data.client(task.client, task.rows, self.holdout)
        trained_from = state_digest(global_state)
        if len(ids) == 0:
            return ClientResult(task.client, task.dispatch, 0, math.nan, trained_from, False, dropped), {}
        if cfg.objective == "fedkseed":
            return self._train_zeroth(task, global_state, ids, labels, dropped, trained_from)
        received = {k: v if self.ranked.dense else cast(v, c.transmit_dtype)  # dense: the factors travel
                    for k, v in scaffold.adapter_part(global_state).items()}
        payload: dict[str, dict[str, np.ndarray]] = {}
        correction = None
        if cfg.objective == "scaffold":
            server_c = {k: cast(v, c.transmit_dtype) for k, v in scaffold.server_variate(global_state).items()}
            client_state = client_state or scaffold.zeros_like(server_c)  # c_i = 0 before its first round
            correction = {k: server_c[k] - client_state[k] for k in server_c}
        personal = (client_state or self.personal0) if self.personal0 else {}  # FedSA-LoRA: its own B
        mu = cfg.proximal_mu if cfg.objective == "fedprox" else 0.0
        start = self.ranked.start(received, cfg.rank, task.dispatch, task.client)
        delta, losses = train_client(self.lm, {**start, **personal}, ids, labels, self.s.training, self.s.seed,
                                     task.dispatch, task.client, mu, correction, self.ranked.regularizer(cfg.rank))
        rank = self.ranked.pruned(start, delta, cfg.rank)
        delta, wired = self.ranked.update(received, start, delta)
        if personal:  # B never leaves the client: the store stands in for its disk
            trained = self.lm.get_state()
            payload["client_state"] = {k: trained[k] for k in personal}
            delta = {k: v for k, v in delta.items() if k not in personal}
        if cfg.objective == "scaffold":
            t = self.s.training
            _, control = scaffold.client_variate_update(client_state, server_c, delta, t.local_steps, t.lr)
            payload["control"] = self._wire(control)  # c_i + what the server decodes: c stays their mean
            payload["client_state"] = {k: client_state[k] + payload["control"][k] for k in control}
        delta, clipped = release(delta, cfg, self.s, task.dispatch, task.client)
        clamped = 0
        if cfg.secagg is not None:
            payload["masked"], clamped = self._mask(task, delta, len(ids))
        else:
            payload["delta"] = delta if wired else self.ranked.sent(delta, cfg.rank, self._wire)
        norm = math.nan
        if self.ranked.fed == "hetlora":  # the server pads what it received: beyond the client's rank, -G
            payload["delta"], norm = self.ranked.padded(received, start, payload["delta"])
        loss = float(np.mean(losses))
        # what the server would fold: a float16 wire format overflows to inf above 65504
        finite = math.isfinite(loss) and all(np.isfinite(v).all() for v in [*delta.values(),
                                                                            *payload.get("delta", {}).values()])
        return ClientResult(task.client, task.dispatch, len(ids), loss, trained_from, finite, dropped,
                            float(np.mean(np.square(losses))), clipped, clamped, norm, rank), payload

    def _train_zeroth(self, task: ClientTask, global_state: dict, ids, labels, dropped: int, trained_from: str
                      ) -> tuple[ClientResult, dict[str, dict[str, np.ndarray]]]:
        """FedKSeed's client (Qin et al. 2024): replay the K accumulators into the model, run forward-only steps
        from the shared seed pool, send (seed, scalar) pairs; the payload is what the server decodes from them,
        their per-seed sums."""
        from fedsim.models.zeroth import accumulate, zo_train
        from fedsim.strategies.fedkseed import ACCUM

        t = self.s.training
        pairs, losses = zo_train(self.lm, self._full(global_state), ids, labels, t, seed=self.s.seed,
                                 dispatch=task.dispatch, client=task.client, pool_size=t.zo_pool_size, eps=t.zo_eps)
        update = {ACCUM: accumulate(pairs, t.zo_pool_size).astype(np.float32)}
        loss = float(np.mean(losses))
        finite = math.isfinite(loss) and bool(np.isfinite(pairs["grad"]).all())
        return ClientResult(task.client, task.dispatch, len(ids), loss, trained_from, finite, dropped,
                            float(np.mean(np.square(losses)))), {"delta": update}

    def _replayed(self, global_state: dict) -> dict:
        """FedKSeed's model from its accumulators (`fedsim.models.zeroth.replay`), cached for the last version: a
        replay from scratch, so every worker gets the same bits whatever it replayed before."""
        from fedsim.models.zeroth import replay
        from fedsim.strategies.fedkseed import ACCUM

        key = state_digest(global_state)
        if self._replay[0] != key:
            self._replay = (key, replay(self.adapter0, global_state[ACCUM], self.lm.names, self.s.seed,
                                        self.s.training.lr))
        return self._replay[1]

    def _wire(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Tensors as the server decodes them after the wire format and upload compression."""
        c = self.s.costs
        return {k: compress(v, c.transmit_dtype, c.upload_compression, c.topk_fraction) for k, v in tensors.items()}

    def _mask(self, task: ClientTask, delta: dict[str, np.ndarray], samples: int) -> tuple[dict[str, np.ndarray], int]:
        """Secure aggregation's client side: encode (w_i Delta_i, w_i) in fixed point, add the pairwise and self
        masks of its cohort (Bonawitz et al. 2017); returns the masked input and how many values were clamped.
        The round's key material is built once per worker and round."""
        from fedsim.strategies.combine import WEIGHT_KEY
        from fedsim.strategies.secagg import FixedPoint, SecAggRound

        sa = task.config.secagg
        codec = FixedPoint(sa.bits, sa.frac_bits)
        w = samples / sa.weight_scale if sa.weight_scale > 0 else 1.0
        n = len(sa.cohort)
        coded = {k: codec.encode(np.asarray(v, np.float64) * w, n) for k, v in delta.items()}
        coded[WEIGHT_KEY] = codec.encode(np.array([w]), n)
        key = (task.round, sa.cohort.tobytes(), sa.threshold, sa.bits, sa.frac_bits)
        if self._secagg is None or self._secagg[0] != key:
            self._secagg = (key, SecAggRound(self.s.seed, task.round, [int(x) for x in sa.cohort], sa.threshold, codec))
        masked = self._secagg[1].mask(task.client, {k: v[0] for k, v in coded.items()})
        return masked, sum(v[1] for v in coded.values())

    def _full(self, global_state: dict, personal: dict | None = None) -> dict:
        """Every trained tensor the model needs: the global's, plus a personal part (FedSA-LoRA: this client's B,
        or B as initialised for the global model); FlexLoRA's and FLoRA's dense global is merged into the base
        (`fedsim.runtime.ranked`); FedKSeed's accumulators are replayed."""
        from fedsim.strategies import scaffold

        merged = self.ranked.model(global_state)
        if merged is not None:
            return merged
        if self.s.server.strategy == "fedkseed":  # w0 - lr sum_k A_k z_k, replayed once per global version
            return self._replayed(global_state)
        return {**scaffold.adapter_part(global_state), **self.personal0, **(personal or {})}

    def evaluate(self, global_state: dict) -> float:
        """Eval loss of the global adapter on the held-out set."""
        return self.evaluate_full(global_state)["eval_loss"]

    def evaluate_full(self, global_state: dict) -> dict:
        """Eval loss of the global adapter and the exact-match accuracy of its greedy answers, overall and per
        task family (synthetic data)."""
        from fedsim.models.local import evaluate

        self._check()
        if self._eval is None:  # read (and for synthetic data generated) once per worker
            self._eval = (*self.data.eval_set(), self.data.eval_tasks())
        ids, labels, tasks = self._eval
        correct: list = []
        loss = evaluate(self.lm, self._full(global_state), ids, labels, exact=correct)
        hits = np.asarray(correct, dtype=float)
        out = {"eval_loss": loss, "exact_match": float(hits.mean()) if len(hits) else None}
        if tasks is not None and len(tasks) == len(hits):
            out["exact_match_by_task"] = {t: float(hits[tasks == t].mean()) for t in sorted(set(tasks.tolist()))}
        return out

    def evaluate_personal(self, global_state: dict, personal: dict | None, client: int, rows: np.ndarray,
                          rank: int | None = None) -> float:
        """Eval loss of the model one client uses -- the global one (clients of different ranks: what a client of
        its `rank` starts from), or with `personal` its own part too (FedSA-LoRA's B, Guo et al. 2025) -- on its
        own held-out rows (synthetic: fresh draws of its task mix, a
        fifth of its size; a table client: the share held out of its training)."""
        from fedsim.models.local import evaluate

        self._check()
        ids, labels = self.data.heldout(client, rows, self.holdout or 0.2)
        if len(ids) == 0:
            return math.nan  # nothing held out (a one-row client): not a loss of 0
        if self.ranked.fed is not None:  # the model a client of its rank starts from (HetLoRA, FlexLoRA: rank r)
            from fedsim.strategies import scaffold

            state = self.ranked.start(scaffold.adapter_part(global_state), rank, 0, client)
        else:
            state = self._full(global_state, personal)
        return evaluate(self.lm, state, ids, labels)

    def export_adapter(self, global_state: dict) -> dict[str, bytes]:
        """The global adapter as files written by peft's `save_pretrained` (returned as bytes: works across nodes),
        byte-identical for identical runs (adapter_config.json's lists sorted)."""
        self._check()
        # a dense global (FlexLoRA, FLoRA) is saved as its best rank-r approximation
        self.lm.set_state(self.ranked.export(global_state) if self.ranked.dense else self._full(global_state))
        with tempfile.TemporaryDirectory() as tmp, self.lm.gathered():  # ZeRO-3: the whole tensors
            self.lm.model.save_pretrained(tmp)
            files = {str(p.relative_to(tmp)): p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
        if "adapter_config.json" in files:  # peft writes target_modules from a set: its order follows the hash seed
            import json

            config = json.loads(files["adapter_config.json"])
            if isinstance(config.get("target_modules"), list):
                config["target_modules"] = sorted(config["target_modules"])
            files["adapter_config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        return files

    def pid(self) -> int:
        """Process id (tests use it to check that clients are multiplexed on few processes, or to kill one)."""
        return os.getpid()
