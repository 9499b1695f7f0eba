"""Start or join Ray as a cluster spec says, and size the worker pool from its resources."""

from __future__ import annotations

import math
import os

from fedsim.scenario.schema import ClusterSpec, RuntimeConfig

# Variables the worker processes must see (offline hubs, caches), forwarded into every actor's runtime_env.
FORWARDED_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "FEDSIM_CACHE", "TORCH_EXTENSIONS_DIR",
                 "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")


def worker_env() -> dict[str, str]:
    """Environment forwarded to worker actors."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def init_ray(spec: ClusterSpec):
    """Start or join Ray (reusing an instance this process already started, e.g. in tests)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
        if spec.address:
            ray.init(address=spec.address, **kwargs)
        else:
            ray.init(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, **kwargs)
    return ray


def pool_size(ray, spec: ClusterSpec, rt: RuntimeConfig) -> int:
    """runtime.num_workers, or as many workers as the cluster's CPUs/GPUs hold."""
    if rt.num_workers:
        return rt.num_workers
    res = ray.cluster_resources()
    fits = []
    if spec.worker.num_cpus > 0:
        fits.append(math.floor(res.get("CPU", 1) / spec.worker.num_cpus))
    if spec.worker.num_gpus > 0:
        fits.append(math.floor(res.get("GPU", 0) / spec.worker.num_gpus))
    return max(1, min(fits) if fits else 1)
