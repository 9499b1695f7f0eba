"""GPU workers: bf16 with deterministic algorithms (1 vs N workers identical), several workers per GPU, a QLoRA
(NF4) base through bitsandbytes. CUDA-only: these skip on a machine without a GPU (as this CI machine is);
run them on a GPU node (`pytest tests/integration/test_gpu.py`)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import ray
import yaml

import fedsim

sys.path.insert(0, str(Path(__file__).parent))
from test_run import TINY, _assert_same_run  # noqa: E402

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")


def _gpu_cluster(tmp_path: Path, per_gpu: int) -> str:
    path = tmp_path / f"gpu{per_gpu}.yaml"
    path.write_text(yaml.safe_dump({"name": f"gpu{per_gpu}", "worker": {"num_cpus": 1, "num_gpus": 1 / per_gpu}}))
    return str(path)


@pytest.fixture(scope="module")
def gpu_ray():
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_bf16_workers_sharing_a_gpu_equal_one_worker(gpu_ray, tmp_path):
    """Two workers on half a GPU each and one worker on the whole GPU train the same federation to the same bits:
    bfloat16 chosen by train_dtype auto, torch's deterministic algorithms on."""
    runs = [fedsim.run(TINY, {"runtime.cluster": _gpu_cluster(tmp_path, k), "runtime.num_workers": k},
                       out=tmp_path / f"w{k}", quiet=True) for k in (1, 2)]
    for r in runs:
        assert r.summary["train_device"] == "cuda" and r.summary["train_dtype"] == "bfloat16"
    _assert_same_run(*runs)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (pip install fedsim[gpu])")
def test_qlora_nf4_base_trains_on_a_gpu(gpu_ray, tmp_path):
    """runtime.base_quantization model: the NF4 base the cost model books is the base the workers train on."""
    result = fedsim.run(TINY, {"runtime.cluster": _gpu_cluster(tmp_path, 1), "model.quantization": "nf4",
                               "runtime.base_quantization": "model", "server.rounds": 4}, out=tmp_path / "q", quiet=True)
    assert result.summary["base_quantization"] == "nf4"
    assert result.summary["final_eval_loss"] < result.summary["initial_eval_loss"]
