"""Train mode's plane of the round loop (`fedsim.rounds`): the strategy configures each client the plan uses,
the pool trains and folds them, the global adapter is evaluated when due, the round is recorded and
checkpointed; what an abort needs (the state before the round) is kept here.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from fedsim.rounds import Trained
from fedsim.scenario import Scenario


class TrainPlane:
    """The round loop's plane in train mode: configure and train the plan's clients on the pool, evaluate when
    due, record the round, checkpoint when due; keeps what an abort needs (the state before the round)."""

    def __init__(self, s: Scenario, run_dir: Path, pool, schedule, data, pop, profile, adversaries, con,
                 rows: list, totals, timing: dict, initial: dict, last: int, on_round=None):
        from fedsim.strategies.base import Strategy

        self.s, self.run_dir, self.pool, self.schedule, self.data = s, run_dir, pool, schedule, data
        self.pop, self.profile, self.adversaries, self.con = pop, profile, adversaries, con
        self.rows, self.totals, self.timing, self.initial, self.last = rows, totals, timing, initial, last
        self.strategy = Strategy(s)
        self.sizes = data.sizes
        self.rnd, self.snapshot, self._results = 0, None, []
        self._ranks: dict[int, int | None] = {}  # the LoRA rank of each client trained this round
        self.placement: dict[str, str] = {}  # what the workers train with (summary.json), known after round 1
        self.on_round = on_round  # called with each round's row once it is recorded (e.g. a sweep's Tune report)

    def before(self, rnd: int) -> None:
        """Keep the state before step `rnd`: what an abort checkpoints."""
        self.rnd = rnd
        self.snapshot = (copy.deepcopy(self.schedule.state()), dict(self.pool.versions), copy.deepcopy(self.totals))

    def train(self, plan):
        """Configure the clients the plan uses (strategy), train and fold them on the pool, evaluate if due."""
        from fedsim.client_round import ClientTask
        from fedsim.schedules.base import INELIGIBLE

        s, rnd, data = self.s, plan.round, self.data
        cohort = plan.columns["client_id"][plan.columns["status"] != INELIGIBLE]  # U1 of secure aggregation
        secagg = self.strategy.secagg_task(cohort)
        if s.privacy.secagg.enabled and secagg is None and len(plan.to_train):
            raise RuntimeError(f"round {rnd}: secure aggregation has no cohort for the clients it trains")
        options = plan.columns["quantization"][plan.train_index]
        rank = [self.profile.ranks[o] for o in options] if self.profile.varied_ranks else [None] * len(options)
        tasks = [ClientTask(int(c), rnd, int(d), int(v), data.client_rows(int(c)),
                            self.strategy.client_config(bool(self.adversaries[c]), secagg, r))
                 for c, d, v, r in zip(plan.to_train, plan.train_dispatch, plan.train_versions, rank)]
        self._ranks = {t.client: t.config.rank for t in tasks}
        self.timing.setdefault("first_dispatch", time.time())
        stats = self.pool.train_round(rnd, tasks, [float(w) for w in plan.train_weights],
                                      self.schedule.min_live_version(), secagg)
        if "first_round" not in self.timing:
            self.timing["first_round"] = time.time()
            self.placement, notes = self.pool.check_ready()  # every worker loaded (one may have had no task yet)
            for note in notes:  # e.g. a quantized base asked for on CPU workers
                self.con.log(f"workers: {note}")
            self.timing["workers_ready"] = time.time()
        self.initial = resolved(self.pool, self.initial)
        self._results = stats["results"]
        failed = plan.train_index[[i for i, r in enumerate(self._results) if r.error is not None]]
        if len(failed):  # its task kept raising on the workers: no update (the schedule had it complete)
            from fedsim.schedules.base import FAILED

            plan.columns["status"][failed], plan.columns["used"][failed] = FAILED, False
        due = rnd == s.server.rounds or (s.server.eval_every and rnd % s.server.eval_every == 0)
        fedsa = s.peft.method == "lora" and s.peft.federation == "fedsa"
        if due and s.server.client_eval_clients and (fedsa or self.data.spec.kind == "synthetic"):
            stats = {**stats, **self._per_client(stats["results"], fedsa)}
        if not due:
            return Trained(stats, None)
        evaluated = self.pool.evaluate()
        return Trained({**stats, **evaluated}, evaluated["eval_loss"])

    def _per_client(self, results: list, personal: bool) -> dict:
        """Per-client evaluation: the round's first trained clients (arrival order), each with the model it uses
        (the global one, at its rank when clients differ; FedSA-LoRA: with its own B) on its own held-out rows;
        their mean and spread."""
        import numpy as np

        picked = [r.client for r in results if r.finite][: self.s.server.client_eval_clients]
        losses = [x for x in self.pool.evaluate_clients([(c, self.data.client_rows(c), self._ranks.get(c))
                                                         for c in picked], personal) if np.isfinite(x)]
        if not losses:
            return {}
        return {"client_eval_mean": float(np.mean(losses)), "client_eval_std": float(np.std(losses))}

    def record(self, plan, row: dict) -> None:
        """Ledger rows (by the aggregator), totals, console; a checkpoint when one is due."""
        from fedsim.metrics.records import client_columns, device_columns
        from fedsim.runtime import checkpoint

        rnd, s = plan.round, self.s
        self.pool.record(row, client_columns(plan, self.pop, self.data.sizes, self._results,
                                             self.profile, self.adversaries))
        self.rows.append(row)
        self.totals.add(device_columns(plan, self.pop))
        self.con.update(row)
        if rnd == self.last or (s.runtime.checkpoint_every and rnd % s.runtime.checkpoint_every == 0):
            self.pool.flush()
            checkpoint.save(self.run_dir, rnd, {"schedule": self.schedule.state(), "totals": self.totals,
                                                "initial": self.initial, "server_opt": self.pool.server_state(rnd)},
                            self.pool.version_states())
            self.pool.checkpointed(rnd)
        if self.on_round is not None:
            self.on_round(row)


def resolved(pool, initial: dict) -> dict:
    """The initial evaluation and global digest as values (they are object references until round 1 ends)."""
    if not initial.get("pending"):
        return initial
    return {"eval": pool.get(initial["eval"]), "sha": pool.get(initial["sha"])}
