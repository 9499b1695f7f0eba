"""Start or join Ray as a cluster spec says, and size the worker pool from its resources."""

from __future__ import annotations

import math
import os

from fedsim.errors import ConfigError
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
    """Start or join Ray (reusing an instance this process already started, e.g. in tests); returns `ray`.

    Joining a cluster (`address`) probes the address first, because ray.init retries an unreachable GCS
    without end: an address that does not answer is a ConfigError on `runtime.cluster.address` within
    about 2 x PROBE_TIMEOUT_S; a Ray Client address (ray://) is refused. Safe to call from any thread.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if spec.address and spec.address.startswith("ray://"):
        raise ConfigError(ADDRESS_KEY, f"{spec.address}: Ray Client is not supported (the run directory would be "
                                       "split between this machine and the cluster): run fedsim on the head node "
                                       "(ray exec, kubectl exec) with address: auto")
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
        if spec.address:
            probe_address(spec.address)
            try:
                ray.init(address=spec.address, **kwargs)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                raise _unreachable(spec.address, None, exc) from None
        else:
            ray.init(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, **kwargs)
            _STARTED_HERE.append(True)
    return ray


_STARTED_HERE: list[bool] = []  # non-empty once this process started its own local Ray


def stop_local_ray() -> bool:
    """Kill the local Ray instance this process started, at once; True if it did (the caller must then leave
    with `os._exit`). Nothing happens when fedsim joined a cluster or found Ray already running.

    For the CLI, whose run directory is complete and closed by then: `ray.shutdown()` stops Ray's processes
    one after another with a graceful second each (~1.4 s here, most of the time between a run's last round
    and its exit), and Ray's core worker cannot be torn down once they are gone (it aborts at interpreter
    exit). So the processes are killed together, as `ray stop --force` does, and the process exits without
    Ray's exit handler.
    """
    if not _STARTED_HERE:
        return False
    import psutil

    for proc in psutil.Process().children(recursive=True):
        try:
            proc.kill()
        except psutil.Error:
            pass
    return True


ADDRESS_KEY = "runtime.cluster.address"
PROBE_TIMEOUT_S = 5.0


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """The host:port ray.init(address) will connect to; a ConfigError unless a Ray server answers there.

    "auto" and host:port resolve as Ray resolves them (RAY_ADDRESS, the newest local session, localhost ->
    this node's IP). A TCP connect and then one Ray RPC each get `timeout` seconds, so a closed port, a black
    hole and a non-Ray service all fail fast.
    """
    from ray._private import services

    try:
        target = services.canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as exc:  # "auto" with no cluster running; a malformed address
        raise _unreachable(address, None, exc) from None
    try:
        _tcp_probe(target, timeout)
    except (OSError, ValueError) as exc:
        raise _unreachable(address, target, exc) from None
    _ray_probe(address, target, timeout)
    return target


def _tcp_probe(target: str, timeout: float) -> None:
    """Open and close one TCP connection to host:port (OSError if refused, unresolvable or silent too long)."""
    import socket

    from ray._private import services

    host, port = services.parse_address(target) or (None, None)
    if host is None or not str(port).isdigit():
        raise ValueError(f"expected host:port, got {target!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except TimeoutError:
        raise TimeoutError(f"no answer within {timeout:g} s") from None


def _ray_probe(address: str, target: str, timeout: float) -> None:
    """Ask the GCS at `target` for its cluster id within `timeout` seconds.

    Uses Ray's own channel settings (TLS, proxy); an answer that is an authentication refusal still proves a
    Ray server is there. Anything else that answers (another service, a proxy) fails here, before ray.init
    starts retrying it.
    """
    import grpc
    from ray._private import ray_constants
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = init_grpc_channel(target, options=ray_constants.GLOBAL_GRPC_OPTIONS)
    try:
        gcs = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)  # gRPC's generated client class
        gcs.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except grpc.RpcError as exc:  # raised by a call, so it is also a grpc.Call with code() and details()
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return  # a Ray server that wants a token: it is there, and ray.init brings the token
        why = f"no answer within {timeout:g} s" if code == grpc.StatusCode.DEADLINE_EXCEEDED else \
            f"{code.name}: {exc.details()}"
        raise _unreachable(address, target, f"the port is open but no Ray GCS answered ({why})") from None
    finally:
        channel.close()


def _unreachable(address: str, target: str | None, reason) -> ConfigError:
    """The one-line error for an address that cannot be joined."""
    if isinstance(reason, OSError) and reason.strerror:
        reason = reason.strerror
    where = f"{address} ({target})" if target and target != address else address
    return ConfigError(ADDRESS_KEY, f"cannot reach Ray at {where}: {' '.join(str(reason).split())}")


def pool_size(ray, spec: ClusterSpec, rt: RuntimeConfig) -> int:
    """runtime.num_workers, else as many workers as fit: inside a placement group (a sweep's trial, or any Ray Tune
    trial that calls `run`) one per bundle after the first (the trial's own) that holds a worker's resources,
    never the whole cluster; otherwise as many as the cluster's CPUs/GPUs hold."""
    if rt.num_workers:
        return rt.num_workers
    need = {"CPU": spec.worker.num_cpus, "GPU": spec.worker.num_gpus}
    group = ray.util.get_current_placement_group()
    if group is not None:  # bundle 0 is the trial's own process (Ray Tune's head bundle): not a worker's
        fits = [b for b in group.bundle_specs[1:] if all(b.get(k, 0) >= v for k, v in need.items() if v > 0)]
        return max(1, len(fits))
    res = ray.cluster_resources()
    fits = [math.floor(res.get(k, 0 if k == "GPU" else 1) / v) for k, v in need.items() if v > 0]
    return max(1, min(fits) if fits else 1)
