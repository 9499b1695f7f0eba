"""runtime.engine deepspeed at load time: the DeepSpeed config a worker gets, and the combinations refused with a
one-line ConfigError naming the key (nothing here imports DeepSpeed)."""

from pathlib import Path

import pytest

from fedsim.errors import ConfigError
from fedsim.models.deepspeed_step import ds_config
from fedsim.scenario import load

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
DS = {"runtime.engine": "deepspeed"}


def test_the_engine_defaults_to_torch_and_the_deepspeed_config_follows_the_scenario():
    assert load(QUICKSTART).runtime.engine == "torch"
    s = load(QUICKSTART, {**DS, "runtime.deepspeed.zero_stage": 3, "runtime.deepspeed.offload_param": "cpu",
                          "runtime.deepspeed.persistence_threshold": 0, "training.batch_size": 6})
    config = ds_config(s)
    assert config["zero_optimization"] == {"stage": 3, "memory_efficient_linear": False,
                                           "offload_param": {"device": "cpu"},
                                           "stage3_param_persistence_threshold": 0}
    assert config["train_micro_batch_size_per_gpu"] == 6 and config["gradient_accumulation_steps"] == 1
    assert config["gradient_clipping"] == 0.0 and not config["bf16"]["enabled"]
    assert ds_config(s, "bfloat16")["bf16"]["enabled"]  # the dtype the worker's model was loaded in


@pytest.mark.parametrize("scenario, overrides, path, words", [
    (QUICKSTART, {**DS, "runtime.deepspeed.offload_param": "cpu"}, "runtime.deepspeed.offload_param",
     "needs ZeRO stage 3 (zero_stage is 2)"),
    (QUICKSTART, {**DS, "runtime.deepspeed.zero_stage": 0, "runtime.deepspeed.offload_optimizer": "cpu"},
     "runtime.deepspeed.offload_optimizer", "needs ZeRO stage 1, 2 or 3"),
    (QUICKSTART, {**DS, "runtime.deepspeed.persistence_threshold": 0}, "runtime.deepspeed.persistence_threshold",
     "ZeRO stage 3 only"),
    (QUICKSTART, {"runtime.deepspeed.zero_stage": 3}, "runtime.deepspeed.zero_stage",
     "runtime.engine deepspeed only (it is torch)"),
    (QUICKSTART, {**DS, "runtime.deepspeed.zero_stage": 4}, "runtime.deepspeed.zero_stage", "0, 1, 2 or 3"),
    (QUICKSTART, {**DS, "runtime.train_dtype": "float16"}, "runtime.train_dtype", "loss scaler"),
    (QUICKSTART, {**DS, "runtime.train_dtype": "bfloat16", "runtime.deepspeed.zero_stage": 0},
     "runtime.deepspeed.zero_stage", "use ZeRO stage 1, 2 or 3"),
    (QUICKSTART, {"runtime.engine": "megatron"}, "runtime.engine", "torch"),
    (ROOT / "scenarios" / "peft" / "fedkseed.yaml", DS, "runtime.engine", "forward-only"),
    (QUICKSTART, {**DS, "training.optimizer": "adamw8bit"}, "training.optimizer", "use adamw"),
    (QUICKSTART, {**DS, "training.master_weights": True}, "training.master_weights", "DeepSpeed keeps its own"),
])
def test_bad_combinations_are_one_line_config_errors(scenario, overrides, path, words):
    with pytest.raises(ConfigError) as err:
        load(scenario, overrides)
    assert err.value.path == path, str(err.value)
    assert words in err.value.message and "\n" not in str(err.value)
