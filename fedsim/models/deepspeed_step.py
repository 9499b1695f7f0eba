"""The DeepSpeed local step (`runtime.engine: deepspeed`): each worker wraps its one peft model in a DeepSpeed
engine once, and every client it trains runs through that engine.

Each Ray worker is a DeepSpeed world of its own: one rank whose process group sits on an in-process store (no
TCP port, so any number of workers share a machine without colliding), gloo on CPU, nccl on CUDA.
`deepspeed.initialize` gets the trainable parameters only, a torch optimizer matching `training.optimizer` and
the ZeRO stage and offloads of `runtime.deepspeed`; under ZeRO-3 it partitions the frozen base with the adapter,
once per worker. Per client (`DeepSpeedModel.local_step`) the global adapter is written into the live parameters
and into DeepSpeed's fp32 master copies, the optimizer's moments and step count are zeroed in place (a fresh
optimizer, as the plain engine creates one per client, without rebuilding the engine), and
`fedsim.models.local.train_client` runs the same batches, seeds and objective terms as the plain engine.

Results: float32 on CPU reproduces the plain engine's bits at ZeRO 0-2; ZeRO-3 sums some gradient contributions
in another order (1-ulp differences, ~1e-7 on the adapter after a run). With a bfloat16 base peft keeps the adapter
in float32, so DeepSpeed trains float32 parameters as the plain engine does (its bf16 mode, with its own fp32
masters, would need a 16-bit adapter: `training.master_weights`, the plain engine's, is refused here).
`training.loss` chunked runs as under the plain engine (`fedsim.models.loss`: under ZeRO-3 it reads the LM head's
weight while the head has it gathered).

Cost (`benchmarks/deepspeed_engine.py`, tiny model, quickstart's 5 steps of batch 8, one thread on a shared 2-core
CPU, three runs): building the engine, once per worker, ~0.2 s at ZeRO-0 and 1.2-2.2 s at ZeRO 1-3, no JIT-built
op (the one DeepSpeed would build, its shared-memory all-reduce, ~50 s, is skipped: see `deepspeed_model`); a
client then costs 0.9-1.4x the plain engine at ZeRO 0-2 and 1.8-3.4x at ZeRO-3 (its hooks gather and release
each layer's parameters in the forward and again in the backward), with or without offload. Rebuilding the
engine per client would add the whole build cost to every client, hence one engine per worker.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from fedsim.errors import ConfigError
from fedsim.models.local import LocalModel
from fedsim.scenario.schema import Scenario, TrainingConfig


def check(s: Scenario) -> None:
    """Refuse, at load time, runtime.deepspeed settings that cannot run or would be ignored (one-line ConfigError
    naming the key)."""
    from fedsim.scenario.schema import DeepSpeedConfig

    ds, default = s.runtime.deepspeed, DeepSpeedConfig()
    if s.runtime.engine != "deepspeed":
        for key in ("zero_stage", "offload_optimizer", "offload_param", "persistence_threshold"):
            if getattr(ds, key) != getattr(default, key):
                raise ConfigError(f"runtime.deepspeed.{key}", f"is read with runtime.engine deepspeed only (it is "
                                                              f"{s.runtime.engine})")
        return
    if ds.offload_param != "none" and ds.zero_stage != 3:
        raise ConfigError("runtime.deepspeed.offload_param", f"parameter offload needs ZeRO stage 3 (zero_stage is "
                                                             f"{ds.zero_stage})")
    if ds.persistence_threshold != default.persistence_threshold and ds.zero_stage != 3:
        raise ConfigError("runtime.deepspeed.persistence_threshold", f"is read by ZeRO stage 3 only (zero_stage is "
                                                                     f"{ds.zero_stage})")
    if ds.offload_optimizer != "none" and ds.zero_stage == 0:
        raise ConfigError("runtime.deepspeed.offload_optimizer", "optimizer offload (ZeRO-Offload) needs ZeRO stage "
                                                                 "1, 2 or 3 (zero_stage is 0)")
    check_dtype(s.runtime.train_dtype, ds.zero_stage)
    base_q = s.model.quantization if s.runtime.base_quantization == "model" else s.runtime.base_quantization
    if base_q != "none":
        raise ConfigError("runtime.base_quantization", f"a {base_q} bitsandbytes base is not trained through "
                                                       "DeepSpeed here (ZeRO partitions float tensors); use "
                                                       "runtime.engine torch for QLoRA")
    if s.server.strategy == "fedkseed":
        raise ConfigError("runtime.engine", "FedKSeed's clients take forward-only zeroth-order steps without an "
                                            "optimizer: DeepSpeed has no step to run (use runtime.engine torch)")
    if s.training.optimizer == "adamw8bit":
        raise ConfigError("training.optimizer", "adamw8bit is not run through DeepSpeed here (its quantized state "
                                                "cannot be reset per client in place): use adamw, or runtime.engine "
                                                "torch")
    if s.training.master_weights:
        raise ConfigError("training.master_weights", "is the plain engine's fp32 master copy; DeepSpeed keeps its "
                                                     "own for a bfloat16 model: use runtime.engine torch")


def check_dtype(dtype: str, stage: int) -> None:
    """Precisions the DeepSpeed step does not run (at load time for the scenario's train_dtype, and on the worker
    for the dtype its model was actually loaded in)."""
    if dtype == "float16":
        raise ConfigError("runtime.train_dtype", "DeepSpeed's float16 training skips the steps its dynamic loss "
                                                 "scaler overflows: not simulated (use bfloat16 or float32)")
    if dtype == "bfloat16" and stage == 0:
        raise ConfigError("runtime.deepspeed.zero_stage", "bfloat16 at stage 0 runs DeepSpeed's BF16 optimizer, whose "
                                                          "gradients do not take FedProx's, SCAFFOLD's or HetLoRA's "
                                                          "terms: use ZeRO stage 1, 2 or 3")


def ds_config(s: Scenario, dtype: str = "float32") -> dict:
    """The DeepSpeed config of a worker's engine: one micro-batch per step, no gradient clipping (DeepSpeed's
    default clips at 1.0; the plain engine does not), torch's own linear layer (ZeRO-3's memory-efficient
    replacement is patched into torch.nn.functional for the whole process), the scenario's ZeRO stage and
    offloads, and bf16 mixed precision when the model's `dtype` is bfloat16."""
    ds = s.runtime.deepspeed
    zero: dict = {"stage": ds.zero_stage, "memory_efficient_linear": False}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer}
    if ds.offload_param != "none":
        zero["offload_param"] = {"device": ds.offload_param}
    if ds.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": s.training.batch_size, "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0, "zero_optimization": zero, "bf16": {"enabled": dtype == "bfloat16"},
        "zero_force_ds_cpu_optimizer": False,  # the torch optimizer, also under offload: the plain engine's math
        "zero_allow_untested_optimizer": True,  # torch's SGD (ZeRO "tests" Adam-type optimizers only)
        "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False,
    }


def init_process_group(device: str) -> None:
    """Make this process a one-rank torch.distributed world (once): an in-process HashStore needs no port, so
    workers sharing a machine cannot collide; DeepSpeed then reuses the group. Also points DeepSpeed at the
    worker's accelerator and its JIT-built ops at fedsim's cache, unless the environment says otherwise."""
    import torch.distributed as dist

    from fedsim.paths import cache_dir

    os.environ["DS_ACCELERATOR"] = "cuda" if device == "cuda" else "cpu"
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir("torch_extensions")))
    if dist.is_initialized():
        return
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)  # DeepSpeed's engine asserts LOCAL_RANK
    dist.init_process_group("nccl" if device == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)


@dataclass
class DeepSpeedModel(LocalModel):
    """A `LocalModel` whose parameters belong to a DeepSpeed engine (built once by `deepspeed_model`): its state
    is read from and written to DeepSpeed's fp32 masters too, and ZeRO-3's partitioned parameters are gathered
    where the whole tensor is needed."""

    engine: object = None
    stage: int = 0
    init_s: float = 0.0  # seconds the engine took to build (process group, DeepSpeed's import, initialize)

    def _master(self, p):
        """The full fp32 value of parameter p: DeepSpeed's master copy, or the parameter when it has none."""
        from deepspeed.utils import safe_get_full_fp32_param

        w = safe_get_full_fp32_param(p)
        return (w if w is not None else p.detach()).float().clone()

    def get_state(self) -> dict[str, np.ndarray]:
        """Current adapter weights (the fp32 masters) as float32 numpy arrays."""
        return {n: self._master(p).cpu().numpy() for n, p in zip(self.names, self.params)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Write adapter weights into the live (possibly partitioned) parameters and the fp32 masters."""
        import torch
        from deepspeed.utils import safe_set_full_fp32_param

        values = [torch.from_numpy(np.array(state[n], dtype=np.float32)).to(self.device) for n in self.names]
        with self.gathered(modifier=True), torch.no_grad():
            for p, v in zip(self.params, values):
                p.data.copy_(v.view_as(p.data).to(p.dtype))
        for p, v in zip(self.params, values):
            safe_set_full_fp32_param(p, v)  # no-op where the parameter is its own master (ZeRO-0, float32)

    def gathered(self, modifier: bool = False):
        """A context in which every trained parameter holds its full value (ZeRO-3; else nothing to do); with
        `modifier`, what is written to them inside is partitioned back on exit."""
        import contextlib

        import deepspeed

        if self.stage != 3:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(self.params, modifier_rank=0 if modifier else None)

    def local_step(self, cfg: TrainingConfig, state: dict[str, np.ndarray]) -> DeepSpeedStep:
        """Start one client: load `state`, zero the optimizer's state (moments and step count: a fresh optimizer
        without rebuilding the engine) and set its rate and weight decay from `cfg`."""
        import torch

        self.set_state(state)
        opt = self.engine.optimizer
        inner = getattr(opt, "optimizer", opt)  # ZeRO and bf16 wrap the torch optimizer
        for slots in inner.state.values():
            for key, value in slots.items():
                if torch.is_tensor(value):
                    value.zero_()  # in place: DeepSpeed keeps views of these buffers
                else:
                    slots[key] = 0
        for group in inner.param_groups:
            group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
        return DeepSpeedStep(self, cfg)


class DeepSpeedStep:
    """`fedsim.models.local.TorchStep`'s interface over the engine: engine forward, `engine.backward`, the extra
    terms' gradients and the gradient shift added to DeepSpeed's (possibly partitioned) gradients, `engine.step`."""

    def __init__(self, lm: DeepSpeedModel, cfg: TrainingConfig):
        self.lm, self.cfg = lm, cfg

    def weights(self) -> list:
        """The trained tensors at full size (fp32 master copies, detached): what FedProx anchors to."""
        return [self.lm._master(p) for p in self.lm.params]

    def loss(self, input_ids, labels):
        """The task loss of one batch (`training.loss`), through the engine (ZeRO-3 gathers each layer's
        parameters as it runs, the LM head's too while the chunked loss reads it)."""
        from fedsim.models.loss import task_loss

        return task_loss(self.lm.engine, input_ids, labels, self.cfg)

    def step(self, loss, extra=None, shift: list | None = None) -> None:
        """engine.backward(loss); add the gradients of `extra(weights)`'s terms (computed on full fp32 copies:
        under ZeRO-3 the parameters are empty between layers) and `shift`; engine.step()."""
        import torch
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        self.lm.engine.backward(loss)
        if extra is not None or shift:
            n = len(self.lm.params)
            weights = [w.requires_grad_() for w in self.weights()]
            terms = extra(weights) if extra is not None else []
            added = torch.autograd.grad(sum(terms), weights, allow_unused=True) if terms else [None] * n
            for p, g, c in zip(self.lm.params, added, shift or [None] * n):
                grad = safe_get_full_grad(p).float()
                grad = grad + g.view_as(grad) if g is not None else grad
                safe_set_full_grad(p, grad + c.view_as(grad) if c is not None else grad)
        self.lm.engine.step()


def deepspeed_model(lm: LocalModel, s: Scenario) -> DeepSpeedModel:
    """Wrap a worker's loaded model in a DeepSpeed engine, once per worker process: every client reuses it (ZeRO-3
    partitions the base model here, never per client)."""
    import contextlib
    import io
    import logging

    import torch

    start = time.perf_counter()
    init_process_group(lm.device)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    shm = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if shm is not None:  # its shared-memory all-reduce serves several local ranks, never a world of one: skip its
        deepspeed.ops.__compatible_ops__[shm.NAME] = False  # JIT build (~50 s on first use; DeepSpeed allows this)
    t, dtype = s.training, str(lm.params[0].dtype).removeprefix("torch.")
    check_dtype(dtype, s.runtime.deepspeed.zero_stage)
    opt_cls = torch.optim.SGD if t.optimizer == "sgd" else torch.optim.AdamW  # adamw8bit: refused by `check`
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # DeepSpeed prints its op builds
        engine, _, _, _ = deepspeed.initialize(
            model=lm.model, model_parameters=lm.params, config=ds_config(s, dtype),
            optimizer=opt_cls(lm.params, lr=t.lr, weight_decay=t.weight_decay))
    logging.getLogger(__name__).debug("deepspeed.initialize: %s", printed.getvalue().strip())
    return DeepSpeedModel(lm.model, lm.names, lm.params, lm.device, engine=engine,
                          stage=s.runtime.deepspeed.zero_stage, init_s=time.perf_counter() - start)
