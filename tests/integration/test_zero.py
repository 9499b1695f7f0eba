"""fedsim's ZeRO sizing equals DeepSpeed's own estimators for full fine-tuning."""

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from fedsim.costs.zero import zero_gpu_bytes

P, LARGEST = 6_738_415_616, 131_072_000  # Llama-2-7B; its LM head is the largest layer


@pytest.mark.parametrize("gpus", [1, 4, 8, 64])
@pytest.mark.parametrize("offload", [False, True])
def test_matches_deepspeed_for_full_fine_tuning(gpus, offload):
    _, ds2 = estimate_zero2_model_states_mem_needs(P, num_gpus_per_node=gpus, cpu_offload=offload)
    assert zero_gpu_bytes(0, P, gpus, 2, offload_optimizer=offload) == ds2
    _, ds3, _ = estimate_zero3_model_states_mem_needs(P, LARGEST, num_gpus_per_node=gpus, cpu_offload=offload,
                                                   cpu_offload_params=False)
    assert zero_gpu_bytes(0, P, gpus, 3, largest_layer_params=LARGEST, offload_optimizer=offload) == ds3
    _, ds3p, _ = estimate_zero3_model_states_mem_needs(P, LARGEST, num_gpus_per_node=gpus, cpu_offload=True,
                                                    cpu_offload_params=True)
    assert zero_gpu_bytes(0, P, gpus, 3, largest_layer_params=LARGEST, offload_params=True) == ds3p


def test_peft_shards_the_frozen_base_only_in_stage_3():
    frozen, lora = 68_976_648_192, 207_093_760  # Llama-2-70B + LoRA r=16 all-linear
    s2 = zero_gpu_bytes(frozen, lora, 8, 2)
    s3 = zero_gpu_bytes(frozen, lora, 8, 3)
    assert s2 == frozen * 2 + 2 * lora + int(18 * lora / 8)
    assert s3 == int(18 * lora / 8) + frozen * 2 / 8
    assert s3 < 80e9 < s2  # 70B LoRA fits 8 x A100-80GB only when ZeRO-3 shards the base
