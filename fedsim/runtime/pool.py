"""The worker pool: dispatch a round's client tasks over the actors and stream results to the aggregator.

At most `max_inflight_per_worker` tasks wait on each actor and no task is dispatched more than that window
ahead of the oldest unfinished one, so the aggregator's reorder buffer stays O(workers), not O(cohort).
Finished results go to the aggregator as object references: the driver never copies an adapter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.runtime.aggregator import Aggregator
from fedsim.runtime.cluster import worker_env
from fedsim.runtime.worker import Worker
from fedsim.scenario.schema import ClusterSpec


class Pool:
    """N worker actors plus the aggregator actor of one run."""

    def __init__(self, ray, n: int, spec: ClusterSpec, scenario: dict, model_dir: str, data, run_dir: str,
                 resume: tuple[dict[int, dict], list[dict]] | None = None):
        """Start the actors; with `resume` = (global versions, kept round rows) continue from a checkpoint."""
        self.ray = ray
        env = {"env_vars": worker_env()}
        res = spec.worker
        actor = ray.remote(Worker).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, runtime_env=env)
        self.workers = [actor.remote(scenario, model_dir, data.train_path, data.eval_path) for _ in range(n)]
        self.window = n * scenario["runtime"]["max_inflight_per_worker"]
        versions = resume[0] if resume else {0: self.workers[0].initial_state.remote()}
        init = versions[max(versions)]
        here = ray.get_runtime_context().get_node_id()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # The aggregator writes the run directory, so it lives on the driver's node; it needs no CPU of its own.
        self.aggregator = (
            ray.remote(Aggregator)
            .options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False), runtime_env=env)
            .remote(run_dir, init, scenario["server"]["server_lr"], resume[1] if resume else None)
        )
        self.global_ref = self.aggregator.current.remote()
        # global versions still referenced by clients in flight
        self.versions = {v: ray.put(state) for v, state in versions.items()} if resume else {0: self.global_ref}
        self.versions[max(self.versions)] = self.global_ref
        ray.get([w.pid.remote() for w in self.workers])  # wait until every model is loaded

    def train_round(self, rnd: int, tasks: list[tuple[int, np.ndarray, float, int]],
                    keep_versions_from: int) -> dict[str, Any]:
        """Train `tasks` [(client, rows, weight, version)] in arrival order, each from the global version it was
        dispatched with; aggregate into version `rnd`; forget versions older than `keep_versions_from`."""
        ray, agg = self.ray, self.aggregator
        agg.begin.remote(rnd)
        load = [0] * len(self.workers)
        pending: dict[Any, tuple[int, int]] = {}
        unfinished: set[int] = set()
        nxt = 0
        while nxt < len(tasks) or pending:
            while nxt < len(tasks) and len(pending) < self.window and nxt < min(unfinished, default=nxt) + self.window:
                w = load.index(min(load))
                client, rows, weight, version = tasks[nxt]
                ref = self.workers[w].train.remote(rnd, client, rows, weight, self.versions[version])
                pending[ref], load[w] = (nxt, w), load[w] + 1
                unfinished.add(nxt)
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                seq, w = pending.pop(ref)
                load[w] -= 1
                unfinished.discard(seq)
                agg.put.remote(seq, ref)
        self.global_ref, stats_ref = agg.finish.options(num_returns=2).remote()
        self.versions[rnd] = self.global_ref
        self.versions = {v: ref for v, ref in self.versions.items() if v >= keep_versions_from or v == rnd}
        return ray.get(stats_ref)

    def version_states(self) -> dict[int, dict[str, np.ndarray]]:
        """The global versions still referenced, as arrays (for a checkpoint)."""
        return dict(zip(self.versions, self.ray.get(list(self.versions.values()))))

    def evaluate(self) -> float:
        """Eval loss of the current global adapter (on the first worker)."""
        return self.ray.get(self.workers[0].evaluate.remote(self.global_ref))

    def export_adapter(self) -> dict[str, bytes]:
        """peft `save_pretrained` files of the current global adapter."""
        return self.ray.get(self.workers[0].export_adapter.remote(self.global_ref))

    def record(self, round_row: dict, client_cols: dict) -> None:
        """Hand a closed round to the aggregator's ledger (asynchronous)."""
        self.aggregator.record.remote(round_row, client_cols)

    def flush(self) -> None:
        """Wait until the aggregator has written every round recorded so far (before a checkpoint)."""
        self.ray.get(self.aggregator.flush.remote())

    def close(self) -> None:
        """Close the ledger and stop the actors."""
        self.ray.get(self.aggregator.close.remote())
        for actor in [*self.workers, self.aggregator]:
            self.ray.kill(actor)
