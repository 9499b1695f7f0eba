"""The worker pool: dispatch a round's client tasks over the actors and stream results to the aggregator.

At most `max_inflight_per_worker` tasks wait on each actor and no task is dispatched more than that window
ahead of the oldest unfinished one, so the aggregator's reorder buffer stays O(workers), not O(cohort).
A task returns two object references: its small statistics (read by the driver, which is how a lost task is
noticed at once) and its update, handed to the aggregator as a reference: the driver never copies an adapter.
Nothing here waits for the actors to finish loading: tasks queue on them while they import and load. A worker
actor whose process dies is restarted by Ray and the tasks it held are rerun (`runtime.worker_restarts`,
`runtime.task_retries`); only a task lost beyond that raises WorkerLost.
"""

from __future__ import annotations

import math
from typing import Any

from fedsim.client_round import ClientResult, ClientTask, SecAggTask
from fedsim.errors import ConfigError, one_line
from fedsim.runtime.aggregator import Aggregator
from fedsim.runtime.cluster import worker_env
from fedsim.runtime.shipping import Shipped, should_ship
from fedsim.runtime.worker import Worker, WorkerUnusable
from fedsim.scenario.schema import ClusterSpec


class WorkerLost(RuntimeError):
    """A worker actor died (or its task failed) while training a client: that update is lost."""

    def __init__(self, task: ClientTask, reason: str):
        self.task = task
        super().__init__(f"a worker actor was lost while training client {task.client} of round {task.round} "
                         f"({reason})")


def _previous_same_client(tasks: list[ClientTask]) -> list[int]:
    """For each task, the index of the same client's previous task in the list (-1 if none)."""
    last: dict[int, int] = {}
    out = []
    for i, t in enumerate(tasks):
        out.append(last.get(t.client, -1))
        last[t.client] = i
    return out


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


def _home(ray):
    """Where the aggregator goes: this process's node. Inside a placement group whose first bundle is on this
    node (a sweep's trial: its own bundle, pinned to the sweep driver's node) that bundle, so the trial's
    aggregator is one of the trial's resources; otherwise pinned to the node by affinity."""
    from ray.util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )

    here = ray.get_runtime_context().get_node_id()
    group = ray.util.get_current_placement_group()
    if group is not None and ray.util.placement_group_table(group)["bundles_to_node_id"].get(0) == here:
        return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
    return NodeAffinitySchedulingStrategy(here, soft=False)


class Pool:
    """N worker actors plus the aggregator actor of one run."""

    def __init__(self, ray, n: int, spec: ClusterSpec, scenario: dict, model_dir: str, data_spec, run_dir: str,
                 resume: tuple[dict[int, dict], list[dict], dict | None] | None = None):
        """Start the actors (without waiting for them); with `resume` = (global versions, kept round rows,
        server-optimizer state) continue from a checkpoint."""
        self.ray = ray
        # A local Ray started by this process gives its workers our environment; a remote cluster needs it sent.
        env = {"runtime_env": {"env_vars": worker_env()}} if spec.address else {}
        res = spec.worker
        rt = scenario["runtime"]  # a lost worker is restarted and its tasks rerun (identical: they are deterministic)
        actor = ray.remote(Worker).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                                           max_restarts=rt["worker_restarts"],
                                           max_task_retries=rt["task_retries"] if rt["worker_restarts"] else 0, **env)
        # nodes that share no filesystem with the driver get the model and data through the object store
        alive = sum(1 for node in ray.nodes() if node.get("Alive"))
        self.shipped = Shipped.of(ray, model_dir, data_spec) if should_ship(
            rt["ship_files"], alive, bool(spec.address)) else None
        self.workers = [actor.remote(scenario, model_dir, data_spec, self.shipped) for _ in range(n)]
        self.ready_refs = [w.ready.remote() for w in self.workers]  # asked now, read after round 1
        self.recorded: list = []  # the ledger writes not yet confirmed
        self.window = n * rt["max_inflight_per_worker"]
        self.processes: list[str] = [""] * n  # each actor's process as last seen: a new one: Ray restarted it
        self.task_retries = rt["task_retries"]  # also for a task that raises (booked failed after)
        peft = scenario["peft"]
        # clients with state in the store: SCAFFOLD's c_i, FedSA-LoRA's personal B
        self.stateful = scenario["server"]["strategy"] == "scaffold" or \
            (peft["method"] == "lora" and peft["federation"] == "fedsa")
        versions = resume[0] if resume else {0: self.workers[0].initial_state.remote()}
        # The aggregator writes the run directory, so it lives on the driver's node; it needs no CPU of its own.
        self.aggregator = (
            ray.remote(Aggregator)
            .options(num_cpus=0, scheduling_strategy=_home(ray), **env)
            .remote(run_dir, versions[max(versions)], scenario, resume[1] if resume else None,
                    resume[2] if resume else None, max(versions))
        )
        self.global_ref = self.aggregator.current.remote()
        # global versions still referenced by clients in flight
        self.versions = {v: ray.put(state) for v, state in versions.items()} if resume else {0: self.global_ref}
        self.versions[max(self.versions)] = self.global_ref

    def get(self, ref) -> Any:
        """ray.get, with a worker's one-line load error raised as the ConfigError it is."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = _cause(exc)
            if isinstance(cause, ConfigError):
                raise ConfigError(cause.path, cause.message) from None
            raise

    def load_error(self, timeout: float = 5.0) -> tuple[str, str] | None:
        """(key path, message) of the first worker that answered that it could not load (a path missing on its
        node, out of memory, a bad model directory), or None: what a failed round reports instead of the
        aggregator or task failure it caused."""
        done, _ = self.ray.wait(self.ready_refs, num_returns=len(self.ready_refs), timeout=timeout)
        for ref in done:
            try:
                err = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                continue  # that process is gone: nothing to say about its loading
            if err:
                return err
        return None

    def check_ready(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """Raise the first worker's load error (bad model directory, unknown target module) as a ConfigError;
        then (what the first worker trains with, what it could not honour): `Worker.placement`."""
        for err in self.ray.get(self.ready_refs):
            if err and err[0]:
                raise ConfigError(*err)
            if err:
                raise RuntimeError(err[1])
        return self.ray.get(self.workers[0].placement.remote())

    def train_round(self, rnd: int, tasks: list[ClientTask], weights: list[float], keep_versions_from: int,
                    secagg: SecAggTask | None = None) -> dict[str, Any]:
        """Train `tasks` in arrival order, each from the global version it was dispatched with (and, SCAFFOLD,
        with its client's stored state), fold them with `weights` (staleness discounts); aggregate into version
        `rnd`; forget versions older than `keep_versions_from`. Raises WorkerLost if any task's result is lost.

        A client's state is asked of the aggregator after every earlier update has been handed to it, so a
        client trained twice in one FedBuff step reads what its first update wrote (actor calls run in order).
        """
        ray, agg = self.ray, self.aggregator
        self.get(agg.begin.remote(rnd, secagg))  # a failure to set the round up surfaces here, not in finish
        stateful = self.stateful
        previous = _previous_same_client(tasks) if stateful else [-1] * len(tasks)
        load = [0] * len(self.workers)
        tries: dict[int, int] = {}  # reruns of tasks that raised
        restarts = 0  # worker processes Ray restarted, seen by a result from a new process
        pending: dict[Any, tuple[int, int, Any]] = {}
        unfinished: set[int] = set()
        put = 0  # every task before this one has been handed to the aggregator
        handed: set[int] = set()
        nxt = 0
        while nxt < len(tasks) or pending:
            while (nxt < len(tasks) and len(pending) < self.window and previous[nxt] < put
                   and nxt < min(unfinished, default=nxt) + self.window):
                self._submit(nxt, tasks[nxt], pending, load)
                unfinished.add(nxt)
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                seq, w, update = pending.pop(ref)
                load[w] -= 1
                try:
                    result = self.get(ref)
                except ConfigError:
                    raise
                except ray.exceptions.RayTaskError as exc:  # the task raised, its process lives: rerun, then book
                    if isinstance(_cause(exc), WorkerUnusable):
                        raise WorkerLost(tasks[seq], one_line(_cause(exc))) from None
                    tries[seq] = tries.get(seq, 0) + 1
                    if tries[seq] <= self.task_retries:
                        self._submit(seq, tasks[seq], pending, load, avoid=w)  # on another worker if there is one
                        continue
                    task = tasks[seq]
                    result, update = ClientResult(task.client, task.dispatch, 0, math.nan, "", False,
                                                  error=one_line(_cause(exc))[:500]), {}
                except Exception as exc:  # noqa: BLE001 - actor died beyond its restarts, object lost
                    raise WorkerLost(tasks[seq], one_line(exc)) from None
                if (result.client, result.dispatch) != (tasks[seq].client, tasks[seq].dispatch):
                    raise WorkerLost(tasks[seq], f"got the result of client {result.client} instead")
                if result.worker_id:
                    restarts += bool(self.processes[w]) and self.processes[w] != result.worker_id
                    self.processes[w] = result.worker_id
                unfinished.discard(seq)
                agg.put.remote(seq, weights[seq], result, update)
                handed.add(seq)
                while put in handed:
                    put += 1
        failed = sum(tries.get(n, 0) > self.task_retries for n in range(len(tasks)))
        if len(tasks) >= 2 and failed == len(tasks):  # nothing trainable at all: a broken run, not unlucky clients
            raise WorkerLost(tasks[0], f"every client task of round {rnd} kept failing")
        self.global_ref, stats_ref = agg.finish.options(num_returns=2).remote()
        self.versions[rnd] = self.global_ref
        self.versions = {v: ref for v, ref in self.versions.items() if v >= keep_versions_from or v == rnd}
        stats = {**self.ray.get(stats_ref), "task_reruns": sum(min(t, self.task_retries) for t in tries.values()),
                 "worker_restarts": restarts}
        if stats["received"] != len(tasks) and tasks:  # defensive: every dispatched update must be accounted for
            raise WorkerLost(tasks[-1], f"{len(tasks) - stats['received']} update(s) never reached the aggregator")
        return stats

    def _submit(self, seq: int, task: ClientTask, pending: dict, load: list[int], avoid: int | None = None) -> None:
        """Send task `seq` to the least loaded worker, other than `avoid` when there is another (with its stored
        client state when the strategy keeps some): its statistics reference keys `pending`, its update
        reference rides along."""
        choices = [i for i in range(len(load)) if i != avoid] or list(range(len(load)))
        w = min(choices, key=lambda i: (load[i], i))
        state = self.aggregator.client_state.remote(task.client) if self.stateful else None
        stats, update = self.workers[w].train.options(num_returns=2).remote(task, self.versions[task.version], state)
        pending[stats], load[w] = (seq, w, update), load[w] + 1

    def checkpointed(self, rnd: int) -> None:
        """Tell the aggregator a checkpoint of round `rnd` is on disk (its client-state store may forget)."""
        self.aggregator.checkpointed.remote(rnd)

    def server_state(self, rnd: int) -> dict:
        """The server optimizer's state that goes with global version `rnd` (for a checkpoint)."""
        return self.get(self.aggregator.server_state.remote(rnd))

    def version_states(self, versions: dict[int, Any] | None = None) -> dict[int, dict]:
        """The global versions still referenced (or those of `versions`), as arrays (for a checkpoint)."""
        refs = self.versions if versions is None else versions
        return dict(zip(refs, self.ray.get(list(refs.values()))))

    def evaluate_async(self):
        """Reference to the eval loss of the current global adapter (computed on the first worker)."""
        return self.workers[0].evaluate.remote(self.global_ref)

    def evaluate(self) -> dict:
        """Eval loss and exact-match accuracy (overall, per task) of the current global adapter."""
        return self.get(self.workers[0].evaluate_full.remote(self.global_ref))

    def evaluate_clients(self, clients: list[tuple[int, Any, int | None]], personal: bool) -> list[float]:
        """Eval loss of the model each (client, rows, LoRA rank) uses -- the global one (at its rank when clients
        differ), with its stored personal part when `personal` (FedSA-LoRA's B) -- on its own held-out rows,
        spread over the workers."""
        refs = [self.workers[i % len(self.workers)].evaluate_personal.remote(
                    self.global_ref, self.aggregator.client_state.remote(c) if personal else None, c, rows, rank)
                for i, (c, rows, rank) in enumerate(clients)]
        return [float(x) for x in self.ray.get(refs)]

    def digest_async(self):
        """Reference to the digest of the global adapter now (asked before round 1: the initial version)."""
        return self.aggregator.digest.remote()

    def export_adapter(self) -> dict[str, bytes]:
        """peft `save_pretrained` files of the current global adapter."""
        return self.get(self.workers[0].export_adapter.remote(self.global_ref))

    def record(self, round_row: dict, client_cols: dict) -> None:
        """Hand a closed round to the aggregator's ledger (asynchronous; `flush` confirms it was written)."""
        self.recorded.append(self.aggregator.record.remote(round_row, client_cols))

    def flush(self) -> None:
        """Wait until the aggregator has written every round recorded so far (before a checkpoint); a failed
        write raises here instead of passing unseen."""
        self.ray.get([*self.recorded, self.aggregator.flush.remote()])
        self.recorded = []

    def close(self, quiet: bool = False) -> None:
        """Confirm the ledger writes, close the ledger and stop the actors (`quiet`: on an error path, where a
        second failure must not hide the first)."""
        try:
            self.ray.get([*self.recorded, self.aggregator.close.remote()])
        except Exception:
            if not quiet:
                raise
        finally:
            for actor in [*self.workers, self.aggregator]:
                self.ray.kill(actor)
