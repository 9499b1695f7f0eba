"""Multi-GPU model-state memory per GPU under DeepSpeed ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models"), for silos and servers with several GPUs.

DeepSpeed's own estimators count, per trainable parameter, 2 B of 16-bit weights plus 18 B of 16- and 32-bit
gradients, 32-bit master weights and Adam moments; ZeRO-2 shards the 18 B over the GPUs, ZeRO-3 also the
weights (and keeps room to gather the largest layer, 4 B per parameter). With PEFT only the adapter is
trainable; the frozen base costs its dtype bytes, replicated (stage 0-2) or sharded (stage 3). For full
fine-tuning these functions reproduce `estimate_zero2/3_model_states_mem_needs` exactly (tested).
"""

from __future__ import annotations

TRAINABLE_STATE_BYTES = 18  # 2 grads16 + 4 grads32 + 4 params32 + 8 Adam moments32
WEIGHT16_BYTES = 2


def zero_gpu_bytes(
    frozen_params: int,
    trainable_params: int,
    gpus: int,
    stage: int,
    frozen_bytes_per_param: float = 2.0,
    largest_layer_params: int = 0,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> float:
    """Model-state bytes on each of `gpus` GPUs (activations and runtime overhead not included)."""
    if stage not in (0, 2, 3):
        raise ValueError("ZeRO stage must be 0, 2 or 3")
    frozen = frozen_params * frozen_bytes_per_param
    if stage == 0:
        return frozen + (WEIGHT16_BYTES + TRAINABLE_STATE_BYTES) * trainable_params
    if stage == 2:
        states = 0 if offload_optimizer else int(TRAINABLE_STATE_BYTES * trainable_params / gpus)
        return frozen + WEIGHT16_BYTES * trainable_params + states
    gather = 4 * largest_layer_params
    if offload_params:
        return gather
    if offload_optimizer:
        return gather + int(WEIGHT16_BYTES * trainable_params / gpus) + frozen / gpus
    return gather + int(TRAINABLE_STATE_BYTES * trainable_params / gpus) + frozen / gpus
