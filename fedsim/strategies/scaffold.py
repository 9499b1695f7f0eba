"""SCAFFOLD's control variates (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", Algorithm 1, option II), as pure numpy.

Client i holds a control variate c_i (kept in the client-state store, `fedsim.client_state`), the server one c
(part of every global version, so a client dispatched with version v uses the c of version v, sync or async).
Locally the client corrects every gradient, y <- y - eta_l (g_i(y) - c_i + c) (`fedsim.models.local`), then,
after K local steps from the global x,

    c_i+ = c_i - c + (x - y) / (K eta_l)          (option II)

and sends Delta y_i = y - x and Delta c_i = c_i+ - c_i. The server applies the mean Delta y through its optimizer
and moves its variate by the sum over the N clients of the federation:

    c <- c + (1 / N) sum_{i in S} Delta c_i

With an adaptive local optimizer (AdamW) the correction still enters the gradient, and option II's step size is
the optimizer's learning rate: an approximation the paper does not cover; use `training.optimizer: sgd` for the
algorithm exactly as published.
"""

from __future__ import annotations

import numpy as np

Tensors = dict[str, np.ndarray]
PREFIX = "scaffold.c."  # the server variate's tensors inside a global version: PREFIX + parameter name


def server_variate(state: Tensors) -> Tensors:
    """The server control variate c held in a global version (empty when the strategy is not SCAFFOLD)."""
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}


def adapter_part(state: Tensors) -> Tensors:
    """A global version without the server variate: the adapter the server optimizer steps."""
    return {k: v for k, v in state.items() if not k.startswith(PREFIX)}


def with_variate(adapter: Tensors, c: Tensors) -> Tensors:
    """A global version: the adapter plus the server variate under PREFIX."""
    return {**adapter, **{PREFIX + k: v for k, v in c.items()}}


def zeros_like(adapter: Tensors) -> Tensors:
    """c = 0 and c_i = 0 at the start, as in Algorithm 1."""
    return {k: np.zeros(v.shape, np.float32) for k, v in adapter.items()}


def client_variate_update(c_i: Tensors, c: Tensors, delta: Tensors, steps: int, lr: float) -> tuple[Tensors, Tensors]:
    """Option II: (c_i+, Delta c_i) from the client's old variate, the server's, its update Delta y = y - x, the
    number of local steps K and the local learning rate eta_l; c_i+ = c_i - c - Delta y / (K eta_l)."""
    plus = {k: (c_i[k].astype(np.float64) - c[k] - delta[k].astype(np.float64) / (steps * lr)).astype(np.float32)
            for k in delta}
    return plus, {k: plus[k] - c_i[k] for k in delta}


def server_variate_update(c: Tensors, control_sum: Tensors | None, num_clients: int) -> Tensors:
    """c + (1/N) sum_i Delta c_i over the round's clients (N: the whole federation, Algorithm 1 line 17)."""
    if control_sum is None:
        return c
    return {k: (v + control_sum[k] / num_clients).astype(np.float32) for k, v in c.items()}
