"""The local step: one base model with a LoRA adapter whose weights are swapped per client.

Used by the Ray worker actor and, unchanged, by the bare-loop benchmark, so both do exactly the same work.
Adapter state travels as {parameter name: float32 numpy array}; a client returns its delta (local - global).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedsim.rng import seed_int, stream
from fedsim.scenario.schema import PeftConfig, TrainingConfig

if TYPE_CHECKING:
    from fedsim.models.device import Placement



@dataclass
class LocalModel:
    """A PEFT-wrapped model plus its trainable parameters in a fixed (name-sorted) order.

    `master`: with `training.master_weights` and a 16-bit model, an fp32 copy of each trained parameter (same
    order), the weights the optimizer updates (mixed precision, Micikevicius et al. 2018); the state read and
    written is the master's. None otherwise: the parameters are their own master.
    """

    model: object
    names: list[str]
    params: list  # torch.nn.Parameter, same order as names
    device: str = "cpu"
    master: list | None = None  # fp32 tensors, same order as params

    def get_state(self) -> dict[str, np.ndarray]:
        """Current adapter weights (the fp32 masters where there are) as float32 numpy arrays."""
        weights = self.master if self.master is not None else self.params
        return {n: p.detach().float().cpu().numpy().copy() for n, p in zip(self.names, weights)}

    def batch(self, rows: np.ndarray):
        """int32 numpy rows -> a long tensor on the model's device."""
        import torch

        return torch.from_numpy(rows).long().to(self.device)

    def batch_f32(self, values: np.ndarray):
        """A float32 numpy array -> a tensor on the model's device (a copy: object-store arrays are read-only)."""
        import torch

        return torch.from_numpy(np.array(values, dtype=np.float32)).to(self.device)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Load adapter weights (in place, no re-allocation), into the fp32 masters too where there are."""
        import torch

        with torch.no_grad():
            for i, (n, p) in enumerate(zip(self.names, self.params)):
                value = torch.from_numpy(np.array(state[n], dtype=np.float32))  # a copy: object-store arrays are
                p.copy_(value)  # read-only
                if self.master is not None:
                    self.master[i].copy_(value)

    def local_step(self, cfg: TrainingConfig, state: dict[str, np.ndarray]) -> TorchStep:
        """Start one client's local training from `state`: the plain engine, a fresh torch optimizer."""
        return TorchStep(self, cfg, state)

    def gathered(self):
        """A context in which every parameter holds its full value (ZeRO-3 partitions them; here: always)."""
        import contextlib

        return contextlib.nullcontext()


def make_optimizer(cfg: TrainingConfig, params: list, device: str):
    """A fresh optimizer of `params` for `cfg.optimizer` on `device`: torch's AdamW or SGD, or for adamw8bit
    bitsandbytes' AdamW8bit (block-wise 8-bit moments, Dettmers et al. 2022, "8-bit Optimizers via Block-wise
    Quantization"; it keeps tensors under 4096 elements in 32-bit) where `fedsim.models.device.optimizer_for` says
    it runs (a GPU with bitsandbytes), torch's AdamW otherwise."""
    import torch

    from fedsim.models.device import importable, optimizer_for

    name, _ = optimizer_for(cfg.optimizer, device, importable("bitsandbytes"))
    if name == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
    return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class TorchStep:
    """The plain engine's optimizer step: loss + extra terms, backward, gradient shift, an optimizer step.

    One per client (`LocalModel.local_step`): the optimizer of `cfg.optimizer` (`make_optimizer`), created fresh,
    so no optimizer state carries over from one client to the next; the loss of `cfg.loss`
    (`fedsim.models.loss.task_loss`). With fp32 masters (`LocalModel.master`) the 16-bit gradients are upcast into
    them, the optimizer updates the masters and they are copied back into the 16-bit parameters after every step
    (Micikevicius et al. 2018; no loss scaling: bfloat16 gradients need none, float16 ones may underflow).
    `fedsim.models.deepspeed_step.DeepSpeedModel` runs the same steps through a DeepSpeed engine.
    """

    def __init__(self, lm: LocalModel, cfg: TrainingConfig, state: dict[str, np.ndarray] | None):
        if state is not None:  # None: keep the weights the model holds
            lm.set_state(state)
        self.lm, self.cfg = lm, cfg
        self.targets = lm.master if lm.master is not None else lm.params  # what the optimizer updates
        self.opt = make_optimizer(cfg, self.targets, lm.device)

    def weights(self) -> list:
        """The trained tensors as the objective sees them (name order): the live parameters."""
        return self.lm.params

    def loss(self, input_ids, labels):
        """The task loss of one batch (`training.loss`: transformers' own, or chunked and fused with the head)."""
        from fedsim.models.loss import task_loss

        return task_loss(self.lm.model, input_ids, labels, self.cfg)

    def step(self, loss, extra=None, shift: list | None = None) -> None:
        """Backward of loss + the terms `extra(weights)` returns, add `shift` (one tensor per parameter) to the
        gradients, one optimizer step (of the fp32 masters, copied back, where there are)."""
        import torch

        objective = loss
        for term in extra(self.lm.params) if extra is not None else []:
            objective = objective + term
        objective.backward()
        if self.lm.master is not None:
            for p, m in zip(self.lm.params, self.lm.master):
                m.grad, p.grad = (None if p.grad is None else p.grad.float()), None
        for p, c in zip(self.targets, shift or []):
            p.grad.add_(c.to(p.grad.dtype))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.lm.master is not None:
            with torch.no_grad():
                for p, m in zip(self.lm.params, self.lm.master):
                    p.copy_(m)


def load_local_model(model_dir: str, peft_cfg: PeftConfig, dtype: str = "float32", checkpointing: bool = False,
                     where: Placement | None = None) -> LocalModel:
    """Load the base model ONCE and wrap it with the scenario's LoRA config (adapter initialised by peft).

    `where` (fedsim.models.device.Placement: device, dtype, quantized base, attention kernel, master weights)
    decides where and how it trains; without it, on the GPU when one is visible (Ray sets CUDA_VISIBLE_DEVICES for
    actors that reserve `num_gpus`), in `dtype` ("auto": bfloat16 on a GPU that has it, float32 otherwise), with
    sdpa attention. On a GPU, torch's deterministic algorithms are on: 1 and N workers give the same bits there too.
    peft keeps a 16-bit model's adapter in float32; with `where.master_weights` it stays in the model's dtype and
    `LocalModel.master` holds an fp32 copy (Micikevicius et al. 2018); a float32 model is unchanged by it.
    """
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from fedsim.models.device import deterministic, load_kwargs, placement_for
    from fedsim.models.shapes import freeze_for_federation, peft_config

    where = where or placement_for(dtype)
    if where.device == "cuda":
        deterministic()
    torch.manual_seed(0)  # peft's LoRA A init: the same initial global adapter in every process
    base = AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs(where))
    if where.quantization != "none":  # QLoRA: norms in float32, inputs require grad for checkpointing
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing:
        enable_checkpointing(base)
    model = get_peft_model(base, peft_config(peft_cfg), autocast_adapter_dtype=not where.master_weights)
    freeze_for_federation(model, peft_cfg)  # FFA-LoRA: A stays at its seeded initialisation, identical everywhere
    if where.quantization == "none":  # a bitsandbytes base is placed on its GPU as it loads
        model.to(where.device)
    return local_model(model, where.device, where.master_weights)


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of every decoder layer (transformers >= 5 renamed the call)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def local_model(model, device: str, master_weights: bool) -> LocalModel:
    """`model`'s trained parameters in name order, with fp32 masters when `master_weights` asks and they are not
    fp32 already (`master_copies`)."""
    named = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    params = [p for _, p in named]
    return LocalModel(model, [n for n, _ in named], params, device, master_copies(params) if master_weights else None)


def master_copies(params: list) -> list | None:
    """fp32 master copies of the trained parameters (Micikevicius et al. 2018), or None when they are fp32
    already (a float32 model, or peft's fp32 adapter on a quantized base): they are their own master."""
    import torch

    if all(p.dtype == torch.float32 for p in params):
        return None
    return [p.detach().float().clone() for p in params]


def proximal_term(params: list, anchors: list, mu: float):
    """FedProx's proximal term (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", eq. 2):
    mu/2 * sum ||w - w^t||^2 over the trainable parameters, w^t the global model the client received. Its
    gradient mu (w - w^t) pulls local training back towards the global model."""
    return 0.5 * mu * sum(((p.float() - a.float()) ** 2).sum() for p, a in zip(params, anchors))


def batch_order(n_rows: int, cfg: TrainingConfig, seed: int, dispatch: int, client: int) -> np.ndarray:
    """The rows of every local step: an int64 array (cfg.local_steps, cfg.batch_size), each row sorted.

    Seeded permutations of the client's n_rows rows from its own stream (seed, "data", dispatch, client),
    concatenated until local_steps * batch_size rows are drawn (an epoch boundary may fall inside a step). Shared
    by every local trainer (first-order `train_client`, zeroth-order `fedsim.models.zeroth.zo_train`), so the same
    dispatch of the same client sees the same batches whatever it trains with.
    """
    rng = stream(seed, "data", dispatch, client)
    rows = np.arange(n_rows)
    need = cfg.local_steps * cfg.batch_size
    order = np.concatenate([rng.permutation(rows) for _ in range(-(-need // n_rows))])[:need]
    return np.sort(order.reshape(cfg.local_steps, cfg.batch_size), axis=1)


def train_client(
    lm: LocalModel, global_state: dict[str, np.ndarray], input_ids: np.ndarray, labels: np.ndarray,
    cfg: TrainingConfig, seed: int, dispatch: int, client: int, proximal_mu: float = 0.0,
    correction: dict[str, np.ndarray] | None = None, regularizer=None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run cfg.local_steps optimizer steps from `global_state` on one client's rows; return (delta, the loss
    of every step).

    `input_ids`/`labels` are the client's own rows. Batches come from its own seeded stream (seed, "data",
    dispatch, client), torch's dropout/init randomness from (seed, "torch", dispatch, client): the same
    dispatch of the same client sees the same batches on any worker, and two dispatches of one client (async)
    do not repeat each other's draws. `proximal_mu` > 0 adds FedProx's proximal term to the objective (the
    reported loss is the task loss alone). `correction` (SCAFFOLD: c - c_i per parameter, Karimireddy et al.
    2020, Algorithm 1 line 10) is added to every gradient before the optimizer step. `regularizer(weights)` (a
    torch scalar of the trained tensors in name order, e.g. HetLoRA's penalty on the client's top ranks) is added
    to the objective. The step itself is `lm.local_step`'s: the plain torch engine, or DeepSpeed's
    (`fedsim.models.deepspeed_step`), which runs the same batches, seeds and terms.
    """
    import torch

    torch.manual_seed(seed_int(seed, "torch", dispatch, client))
    step = lm.local_step(cfg, global_state)  # the global weights loaded, a fresh optimizer
    anchors = [w.detach().clone() for w in step.weights()] if proximal_mu > 0 else []
    shift = [lm.batch_f32(correction[n]) for n in lm.names] if correction is not None else []

    def extra(weights: list) -> list:
        """The terms added to the task loss: FedProx's proximal term, HetLoRA's self-pruning term on the
        client's top ranks."""
        terms = [proximal_term(weights, anchors, proximal_mu)] if proximal_mu > 0 else []
        return terms + [regularizer(weights)] if regularizer is not None else terms

    order = batch_order(len(input_ids), cfg, seed, dispatch, client)
    lm.model.train()
    losses = []
    for idx in order:
        loss = step.loss(lm.batch(input_ids[idx]), lm.batch(labels[idx]))
        step.step(loss, extra if proximal_mu > 0 or regularizer is not None else None, shift)
        losses.append(float(loss.detach()))
    new = lm.get_state()
    delta = {k: new[k] - np.asarray(global_state[k], dtype=np.float32) for k in new}
    return delta, np.array(losses)


def evaluate(lm: LocalModel, state: dict[str, np.ndarray], input_ids: np.ndarray, labels: np.ndarray, batch: int = 64,
             exact: list | None = None) -> float:
    """Mean per-token loss on the response tokens of the eval set (token-weighted over batches).

    Sequences are right-padded and attention is causal, so padding never reaches a real token: no mask needed.
    With `exact` (a list), each row's exact match is appended to it: greedy decoding reproduces the response
    and stops (EOS) exactly when, at every response position, the most likely token given the reference prefix
    is the reference token -- by induction over the decoding steps -- so one teacher-forced forward pass
    decides it, for any PEFT method (prompt tuning's virtual positions are cut off the logits).
    """
    import torch

    lm.set_state(state)
    lm.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(input_ids), batch):
            lab = lm.batch(labels[i : i + batch])
            n = int((lab[:, 1:] != -100).sum())
            out = lm.model(input_ids=lm.batch(input_ids[i : i + batch]), labels=lab)
            total += float(out.loss) * n
            count += n
            if exact is not None:
                pred = out.logits[:, -lab.shape[1]:-1].argmax(-1)  # the prediction of each next token
                target = lab[:, 1:]
                seen = target != -100
                exact.extend((((pred == target) | ~seen).all(dim=1) & seen.any(dim=1)).tolist())
    return total / max(count, 1)
