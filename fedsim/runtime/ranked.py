"""The worker's side of clients of different LoRA ranks: HetLoRA, FlexLoRA and FLoRA on ONE peft model.

The worker holds one peft model at the server's rank R (`peft.r`). A client of rank r trains its first r
components; the others are zero and get zero gradients (a zero A row and B column take no part in B A), so they
stay zero: no per-rank model copies. Every client uses the model's one LoRA scaling alpha / R, so the ranks
nest (a rank-r client's B A is the first r components of a rank-R adapter) -- a real rank-r LoRA would scale by
alpha / r, i.e. a low-rank client here takes proportionally smaller steps.

* HetLoRA (Cho et al. 2024): the client gets the global's first r components (truncation) and the server
  aggregates the zero-padded client adapters, sum_k p_k pad(theta_k) with p_k proportional to ||B_k A_k||_F:
  the client sends its rank-r part (theta_k - G on its first r components, through the wire format and any
  attack like every update) and the server folds pad(theta_k) - G, so components a low-rank client does not
  train shrink by its weight (`padded`). With rank self-pruning (`peft.rank_pruning` gamma), a rank-r client
  adds lambda x ||B_tail A_tail||_F over its top components [t, r), t = floor((1 - gamma) r), to its objective
  and, if that norm fell during its local training, holds rank t from its next round (`regularizer`,
  `pruned`): the schedule books every round at the rank the client holds when dispatched, so a client that
  prunes sends this round's rank-r adapter (the paper prunes before sending).
* FlexLoRA (Bai et al. 2024): the global is each module's dense update G = sum_k p_k B_k A_k; a client gets its
  rank-r truncated SVD and its update is B_k A_k - G.
* FLoRA (Wang et al. 2024): the global G is every stack merged so far (stacking is exactly sum_k p_k B_k A_k),
  merged into the client's base (forward hooks add alpha / R x G x to each adapted base layer's output: W0 + G
  without touching W0); the client trains a fresh LoRA (A drawn like peft's init from its own stream, B = 0)
  and its update is B_k A_k.

The dense products stand for what the server computes from the rank-r factors a client sends, at the wire
dtype (the bytes booked are those factors).
"""

from __future__ import annotations

import numpy as np

from fedsim.client_round import state_digest
from fedsim.costs.compression import cast
from fedsim.costs.ranks import HETERO, tail
from fedsim.rng import stream
from fedsim.scenario.schema import Scenario
from fedsim.strategies.lora_ranks import (
    DENSE,
    from_dense,
    modules,
    tail_norm,
    to_dense,
    truncate_state,
    update_norm,
)


class RankedLoRA:
    """Start states, updates and the merged dense global of rank-heterogeneous LoRA for one worker's model."""

    def __init__(self, lm, s: Scenario, adapter0: dict[str, np.ndarray]):
        self.lm, self.s, self.adapter0 = lm, s, adapter0
        self.fed = s.peft.federation if s.peft.federation in HETERO else None
        self.dense = self.fed in ("flexlora", "flora")
        self.hooks: list = []
        self._svd: tuple[str | None, dict[int, dict[str, np.ndarray]]] = (None, {})

    def start(self, received: dict[str, np.ndarray], rank: int | None, dispatch: int, client: int
              ) -> dict[str, np.ndarray]:
        """The adapter a client of LoRA rank `rank` starts from (the model's shapes, components from `rank` on
        zero); FLoRA: with the dense global merged into the base."""
        rank = rank or self.s.peft.r
        self.merge(received if self.fed == "flora" else None)
        if self.fed == "flexlora":
            return self._factors(received, rank)
        if self.fed == "flora":
            return self._fresh(rank, dispatch, client)
        return truncate_state(received, rank) if self.fed == "hetlora" else received

    def update(self, received: dict[str, np.ndarray], start: dict[str, np.ndarray], delta: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], float, bool]:
        """(the update the client sends, whether it is already at the wire dtype). HetLoRA: theta_k - G on its
        first r components (`padded` completes it on the server's side); FlexLoRA: B_k A_k - G; FLoRA: B_k A_k
        (from factors at the wire dtype); otherwise the delta itself."""
        if self.fed is None:
            return delta, False
        self.merge(None)
        if self.fed == "hetlora":
            return delta, False  # zero beyond the client's rank: it trained its first r components only
        trained = {k: start[k] + delta[k] for k in delta}
        dtype = self.s.costs.transmit_dtype
        after = to_dense({k: cast(v, dtype) for k, v in trained.items()})
        before = received if self.fed == "flexlora" else to_dense(start)
        return {k: after[k] - np.asarray(before[k], np.float32) for k in after}, True

    def sent(self, delta: dict[str, np.ndarray], rank: int | None, wire) -> dict[str, np.ndarray]:
        """`wire` (the wire format and upload compression) applied to what the client sends: under HetLoRA the
        rank-r slices of each A and B (top-k keeps a share of those, int8 scales by their largest value), put
        back at the model's shapes; otherwise to the whole update."""
        if self.fed != "hetlora" or rank is None:
            return wire(delta)
        pieces = {}
        for _, a, b in modules(delta):
            pieces[a], pieces[b] = delta[a][:rank], delta[b][:, :rank]
        wired = wire(pieces)
        out = {k: np.zeros_like(v, dtype=np.float32) for k, v in delta.items()}
        for _, a, b in modules(delta):
            out[a][:rank], out[b][:, :rank] = wired[a], wired[b]
        return out

    def regularizer(self, rank: int | None):
        """HetLoRA's self-pruning penalty lambda x sum_modules ||B_tail A_tail||_F, a function of the trained
        tensors in name order (None when pruning is off or the client is at the smallest rank)."""
        p = self.s.peft
        rank = rank or p.r
        lo = self._tail(rank)
        if self.fed != "hetlora" or p.rank_pruning <= 0 or lo >= rank:
            return None
        import torch

        position = {n: i for i, n in enumerate(self.lm.names)}
        pairs = [(position[a], position[b]) for _, a, b in modules(self.adapter0)]

        def penalty(weights: list):  # the trained tensors in name order (the live parameters, or their copies)
            return p.pruning_lambda * sum(torch.linalg.matrix_norm(weights[b][:, lo:rank] @ weights[a][lo:rank])
                                          for a, b in pairs)

        return penalty

    def pruned(self, start: dict[str, np.ndarray], delta: dict[str, np.ndarray], rank: int | None) -> int | None:
        """The rank the client holds from its next round: t if the norm of its top components [t, r) fell during
        local training (start -> start + delta), else r (None when pruning is off)."""
        p = self.s.peft
        if self.fed != "hetlora" or p.rank_pruning <= 0:
            return None
        rank, trained = rank or p.r, {k: start[k] + delta[k] for k in delta}
        lo = self._tail(rank)
        fell = lo < rank and tail_norm(trained, lo, rank) < tail_norm(start, lo, rank)
        return lo if fell else rank

    def _tail(self, rank: int) -> int:
        """First component of a rank-`rank` client's prunable top (rank itself at the smallest choice)."""
        return tail(rank, self.s.peft.rank_pruning, 1)

    def padded(self, received: dict[str, np.ndarray], start: dict[str, np.ndarray], sent: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], float]:
        """HetLoRA's server side of one client: from the rank-r update it received, the client's adapter
        theta_k = its start + the update, the update folded pad(theta_k) - G (beyond its rank: -G) and its
        weight ||B_k A_k||_F (Cho et al. 2024)."""
        theta = {k: start[k] + sent[k] for k in sent}
        return {k: theta[k] - np.asarray(received[k], np.float32) for k in theta}, update_norm(theta)

    def model(self, global_state: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The adapter state of the global model, None when the global is an ordinary adapter: the dense global
        is merged into the base and the adapter's B A is zero (its B as peft initialised it)."""
        if not any(k.endswith(DENSE) for k in global_state):
            self.merge(None)
            return None
        self.merge(global_state)
        return self.adapter0

    def export(self, global_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What `adapter/` holds for a dense global: its best rank-R approximation (truncated SVD)."""
        self.merge(None)
        return from_dense(global_state, self.adapter0, self.s.peft.r)

    def merge(self, dense: dict[str, np.ndarray] | None) -> None:
        """Add scaling x G x to the output of each adapted module's base layer -- the base weight W0 + scaling G
        without touching W0 (None removes it, as every start, update and evaluation sets it afresh)."""
        import torch

        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        for key, g in sorted((dense or {}).items()):
            module = self.lm.model.get_submodule(key[: -len(DENSE)])
            w = torch.from_numpy(np.array(g, np.float32)).to(self.lm.device) * float(module.scaling["default"])

            def add(mod, inputs, out, w=w):
                return out + torch.nn.functional.linear(inputs[0].to(w.dtype), w).to(out.dtype)

            self.hooks.append(module.base_layer.register_forward_hook(add))

    def _factors(self, received: dict[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
        """FlexLoRA's rank-r SVD factors of the dense global as the client receives them (wire dtype), cached for
        the last global version (a pure function of it: the same bits on every worker)."""
        key = state_digest(received)
        if self._svd[0] != key:
            self._svd = (key, {})
        if rank not in self._svd[1]:
            dtype = self.s.costs.transmit_dtype
            self._svd[1][rank] = {k: cast(v, dtype) for k, v in from_dense(received, self.adapter0, rank).items()}
        return self._svd[1][rank]

    def _fresh(self, rank: int, dispatch: int, client: int) -> dict[str, np.ndarray]:
        """FLoRA's fresh rank-r LoRA: A ~ U(-1/sqrt(in), 1/sqrt(in)) as peft's Kaiming-uniform init draws it, from
        the client's own stream (each round's stack gets new directions), B = 0."""
        rng = stream(self.s.seed, "flora-init", dispatch, client)
        out = dict(self.adapter0)
        for _, a, b in modules(self.adapter0):
            fan_in = self.adapter0[a].shape[1]
            out[a] = np.zeros_like(self.adapter0[a], dtype=np.float32)
            out[a][:rank] = rng.uniform(-1.0, 1.0, (rank, fan_in)) / np.sqrt(fan_in)
            out[b] = np.zeros_like(self.adapter0[b], dtype=np.float32)
        return out
