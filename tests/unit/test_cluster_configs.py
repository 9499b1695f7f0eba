"""The files in clusters/, checked offline (no cloud, no Kubernetes, no Ray cluster started).

- fedsim cluster specs load through `load_cluster`; clusters/local.yaml is the embedded default.
- clusters/ray-up.yaml passes Ray's own launcher validation: the defaults-filling `ray up` does before it calls
  the cloud (`prepare_config`), then `validate_config` (ray-schema.json plus Ray's cross-field checks) and
  `check_legacy_fields` (the first step of Ray's AWS bootstrap). Broken copies fail it.
- clusters/kuberay.yaml passes a structure test, and Ray's own KubeRay code derives (and validates) an
  autoscaling config from it. Broken copies fail the structure test.
- The launcher's nodes, the KubeRay pods and clusters/fedsim.Dockerfile pin the same Ray, Python and torch
  (the Makefile's TORCH_PIN) and install fedsim from this checkout; a fedsim worker actor of
  clusters/ray-cluster.yaml fits on each GPU node of both.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

from fedsim.errors import ConfigError
from fedsim.scenario.load import load_cluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
LAUNCHER = CLUSTERS / "ray-up.yaml"
KUBERAY = CLUSTERS / "kuberay.yaml"
DOCKERFILE = CLUSTERS / "fedsim.Dockerfile"
DOCKERIGNORE = CLUSTERS / "fedsim.Dockerfile.dockerignore"
GPU_CLUSTER_SPEC = CLUSTERS / "ray-cluster.yaml"

# rayproject/ray:2.60.0-py311-gpu ; fedsim:0.1.0-ray2.60.0-py311-gpu (any registry prefix)
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?P<platform>cpu|gpu|cu\d+)$")
FEDSIM_IMAGE = re.compile(
    r"^(?:[^:]+/)?fedsim:(?P<fedsim>[0-9][\w.]*)-ray(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?P<platform>gpu|cu\d+)$"
)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _kind(doc: Any) -> str:
    """What a clusters/*.yaml file is: a Ray launcher config, a KubeRay manifest, or (otherwise) a fedsim spec."""
    if isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc:
        return "launcher"
    if isinstance(doc, dict) and "apiVersion" in doc:
        return "kubernetes"
    return "fedsim"


def _torch_pin() -> str:
    match = re.search(r"^TORCH_PIN\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert match, "Makefile: TORCH_PIN not found"
    return match.group(1)


def _setup_py() -> str:
    return (ROOT / "setup.py").read_text(encoding="utf-8")


def _fedsim_version() -> str:
    return re.search(r'\bversion="([^"]+)"', _setup_py()).group(1)


def _ver(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def _ray_floor() -> tuple[int, ...]:
    return _ver(re.search(r'"ray\[[^\]]*\]>=([\d.]+)"', _setup_py()).group(1))


def _python_floor() -> tuple[int, ...]:
    return _ver(re.search(r'python_requires=">=([\d.]+)"', _setup_py()).group(1))


def _py_tag(tag: str) -> tuple[int, int]:
    return int(tag[0]), int(tag[1:])


def _gpu_worker() -> Any:
    """The resources one fedsim worker actor reserves on a cluster of GPU nodes."""
    return load_cluster(str(GPU_CLUSTER_SPEC)).worker


def _check_ray_pin(version: str, py: str, where: str) -> None:
    """A pinned Ray/Python satisfies setup.py; a Ray other than this venv's is worth a warning, not a failure."""
    assert _ver(version) >= _ray_floor(), f"{where}: Ray {version} is older than setup.py's floor"
    assert _py_tag(py) >= _python_floor(), f"{where}: Python {py} is older than setup.py's python_requires"
    if _ver(version)[:2] != _ver(ray.__version__)[:2]:
        # setup.py does not pin Ray, so a fresh venv may hold a newer one than the images; `ray up` should run
        # with the cluster's Ray, so say so, without failing the suite whenever Ray releases.
        warnings.warn(f"{where} pins Ray {version}, this venv has Ray {ray.__version__}", stacklevel=2)


# --- fedsim cluster specs --------------------------------------------------------------------------------


def _fedsim_specs() -> list[Path]:
    return [p for p in sorted(CLUSTERS.glob("*.yaml")) if _kind(_yaml(p)) == "fedsim"]


def test_clusters_folder_holds_specs_a_launcher_config_and_a_kuberay_manifest():
    kinds = {p.name: _kind(_yaml(p)) for p in CLUSTERS.glob("*.yaml")}
    assert kinds["ray-up.yaml"] == "launcher"
    assert kinds["kuberay.yaml"] == "kubernetes"
    assert {"local.yaml", "single-node-gpus.yaml", "ray-cluster.yaml"} <= {n for n, k in kinds.items() if k == "fedsim"}


@pytest.mark.parametrize("path", _fedsim_specs(), ids=lambda p: p.name)
def test_every_fedsim_spec_loads(path):
    spec = load_cluster(str(path))
    assert spec.name and spec.worker.num_cpus + spec.worker.num_gpus > 0


def test_local_yaml_is_the_embedded_default():
    assert load_cluster(str(CLUSTERS / "local.yaml")) == load_cluster("local")


def test_a_broken_fedsim_spec_is_refused(tmp_path):
    broken = _yaml(GPU_CLUSTER_SPEC)
    broken["worker"]["num_gpu"] = broken["worker"].pop("num_gpus")  # a typo'd key
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    with pytest.raises(ConfigError, match="num_gpu"):
        load_cluster(str(path))


# --- Ray cluster launcher config (ray up) ------------------------------------------------------------------


def _validated_launcher(raw: dict[str, Any]) -> dict[str, Any]:
    """`ray up`'s checks of the YAML (ray.autoscaler._private.commands._bootstrap_config), less its AWS calls:
    prepare_config (fill in the provider's defaults, merge setup commands, check docker, set per-type min/max
    workers); [skipped: look up each instance type on AWS to fill in resources the file leaves out];
    validate_config; then check_legacy_fields, the first (offline) step of Ray's AWS bootstrap."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    check_legacy_fields(config)
    return config


def _head(config):
    return config["available_node_types"][config["head_node_type"]]


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def test_launcher_config_passes_rays_validation():
    config = _validated_launcher(_yaml(LAUNCHER))
    assert config["provider"]["type"] == "aws"
    workers = _worker_types(config)
    assert workers, "no worker node type"
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"], name
        assert node["node_config"].get("InstanceType"), name
    # The head runs the driver and the aggregator, not GPU worker actors.
    assert _head(config)["resources"].get("GPU", 0) == 0


def test_a_fedsim_gpu_worker_fits_on_each_launcher_worker_node():
    worker = _gpu_worker()
    for name, node in _worker_types(_validated_launcher(_yaml(LAUNCHER))).items():
        resources = node["resources"]
        assert resources.get("GPU", 0) >= max(worker.num_gpus, 1), f"{name}: not a GPU node"
        assert resources.get("CPU", 0) >= worker.num_cpus, f"{name}: fewer CPUs than one worker actor reserves"


def _sum_min_above_max(config):
    for node in _worker_types(config).values():
        node["min_workers"] = config["max_workers"] + 1


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda c: c.pop("provider"), jsonschema.ValidationError),
        (lambda c: c.update(max_workers="eight"), jsonschema.ValidationError),
        (lambda c: c.update(setup_comands=[]), jsonschema.ValidationError),  # the schema allows no extra key
        (lambda c: c["docker"].update(imagee="rayproject/ray:latest"), jsonschema.ValidationError),
        (lambda c: _head(c).pop("resources"), jsonschema.ValidationError),
        (lambda c: _head(c)["resources"].update(GPU=0.5), jsonschema.ValidationError),  # whole units per node
        (lambda c: c.update(head_node_type="ray.head.missing"), ValueError),
        (_sum_min_above_max, ValueError),
    ],
    ids=["no-provider", "max-workers-str", "unknown-key", "docker-unknown-key", "head-no-resources",
         "fractional-gpu", "head-type-unknown", "min-above-max"],
)
def test_a_broken_launcher_config_fails_rays_validation(mutate, error):
    config = prepare_config(copy.deepcopy(_yaml(LAUNCHER)))
    mutate(config)
    with pytest.raises(error):
        validate_config(config)


def test_a_launcher_yaml_with_a_typo_fails_the_whole_ray_up_pipeline():
    raw = _yaml(LAUNCHER)
    raw["worker_setup_comands"] = raw.pop("worker_setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="worker_setup_comands"):
        _validated_launcher(raw)


def test_launcher_nodes_run_one_ray_and_python_and_gpu_workers_get_the_cuda_image():
    config = _validated_launcher(_yaml(LAUNCHER))
    docker = config["docker"]
    images = {"head": docker.get("head_image", docker["image"])}
    for name, node in _worker_types(config).items():
        images[name] = node.get("docker", {}).get("worker_image", docker.get("worker_image", docker["image"]))
    parsed = {where: RAY_IMAGE.match(image) for where, image in images.items()}
    assert all(parsed.values()), f"not a rayproject/ray:X.Y.Z-pyXY-platform image: {images}"
    assert len({(m["ray"], m["py"]) for m in parsed.values()}) == 1, f"nodes disagree on Ray/Python: {images}"
    for name, node in _worker_types(config).items():
        if node["resources"].get("GPU", 0):
            assert parsed[name]["platform"] != "cpu", f"{name} has GPUs but a CPU image"
    head = parsed["head"]
    _check_ray_pin(head["ray"], head["py"], "clusters/ray-up.yaml")


def _install_steps(commands: list[str], mount: str) -> tuple[int, int, str]:
    torch = [i for i, c in enumerate(commands) if "pip install" in c and _torch_pin() in c.split()]
    fedsim = [i for i, c in enumerate(commands) if re.search(rf"pip install\b.*\s(-e\s+)?{re.escape(mount)}(\"?\[[a-z,]+\]\"?)?/?(\s|$)", c)]
    assert torch, f"{_torch_pin()} is not installed: {commands}"
    assert fedsim, f"fedsim ({mount}) is not installed: {commands}"
    return torch[0], fedsim[0], commands[torch[0]]


def test_launcher_installs_the_pinned_torch_then_fedsim_from_this_checkout_on_every_node():
    config = _validated_launcher(_yaml(LAUNCHER))
    # The checkout reaches the nodes through a file mount of the repository root ("." relative to where
    # `ray up` runs: the repository root, as the file says), minus what .gitignore ignores (.venv, caches, runs).
    mounts = [remote for remote, local in config["file_mounts"].items() if (ROOT / local).resolve() == ROOT]
    assert len(mounts) == 1, f"no file mount of the repository root: {config['file_mounts']}"
    assert 'name="fedsim"' in _setup_py()
    assert ".gitignore" in config["rsync_filter"]
    mount = mounts[0]
    # After prepare_config, head_/worker_setup_commands include the common setup_commands.
    for role in ("head_setup_commands", "worker_setup_commands"):
        torch_at, fedsim_at, torch_cmd = _install_steps(config[role], mount)
        assert torch_at < fedsim_at, f"{role}: fedsim is installed before the pinned torch"
        if role == "worker_setup_commands":
            assert "/whl/cpu" not in torch_cmd, "GPU workers would get the CPU build of torch"


# --- KubeRay RayCluster manifest ---------------------------------------------------------------------------


def _quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (enough for CPU and GPU counts: "4", 4, "500m")."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _container_problems(where: str, pod: Any, gpu: bool) -> list[str]:
    containers = pod.get("spec", {}).get("containers") if isinstance(pod, dict) else None
    if not isinstance(containers, list) or not containers:
        return [f"{where}: template.spec.containers is empty"]
    ray_container = containers[0]  # KubeRay: the Ray container is the first one
    problems = [f"{where}: container without {key}" for key in ("name", "image") if not ray_container.get(key)]
    resources = ray_container.get("resources") or {}
    for kind in ("requests", "limits"):
        for key in ("cpu", "memory"):
            if key not in resources.get(kind, {}):
                problems.append(f"{where}: no {kind}.{key}")
    if gpu:
        limit = resources.get("limits", {}).get("nvidia.com/gpu")
        if limit is None or _quantity(limit) < 1:
            problems.append(f"{where}: no limits.nvidia.com/gpu")
        request = resources.get("requests", {}).get("nvidia.com/gpu")
        if request is not None and request != limit:
            problems.append(f"{where}: requests.nvidia.com/gpu differs from its limit")
    return problems


def _kuberay_problems(doc: Any) -> list[str]:
    """What would make KubeRay (CRD ray.io/v1) refuse the manifest, or fedsim run badly on it."""
    if not isinstance(doc, dict):
        return ["not a mapping"]
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}, expected ray.io/v1")
    if doc.get("kind") != "RayCluster":
        problems.append(f"kind {doc.get('kind')!r}, expected RayCluster")
    if not isinstance(doc.get("metadata", {}).get("name"), str):
        problems.append("metadata.name missing")
    spec = doc.get("spec") or {}
    if not re.fullmatch(r"\d+\.\d+\.\d+", str(spec.get("rayVersion", ""))):
        problems.append("spec.rayVersion is not X.Y.Z")

    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return [*problems, "spec.headGroupSpec missing"]
    if not _string_map(head.get("rayStartParams")):
        problems.append("headGroupSpec.rayStartParams missing or not a map of strings")
    problems += _container_problems("headGroupSpec", head.get("template"), gpu=False)

    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return [*problems, "spec.workerGroupSpecs is empty"]
    names = [g.get("groupName") for g in groups if isinstance(g, dict)]
    if len(set(names)) != len(groups):
        problems.append(f"worker groupNames missing or repeated: {names}")
    for i, group in enumerate(groups):
        where = f"workerGroupSpecs[{i}]"
        if not isinstance(group, dict):
            problems.append(f"{where}: not a mapping")
            continue
        if not isinstance(group.get("groupName"), str) or not group.get("groupName"):
            problems.append(f"{where}: no groupName")
        counts = [group.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            problems.append(f"{where}: minReplicas/replicas/maxReplicas must be integers: {counts}")
        elif not 0 <= counts[0] <= counts[1] <= counts[2]:
            problems.append(f"{where}: replicas not within [minReplicas, maxReplicas]: {counts}")
        if not _string_map(group.get("rayStartParams")):
            problems.append(f"{where}: rayStartParams missing or not a map of strings")
        problems += _container_problems(where, group.get("template"), gpu=True)

    # Same fedsim everywhere: one image on the head and every worker, built by clusters/fedsim.Dockerfile from
    # this checkout and tagged with fedsim's version and the Ray of spec.rayVersion.
    images = {
        c.get("image")
        for g in [head, *groups]
        if isinstance(g, dict)
        for c in (g.get("template") or {}).get("spec", {}).get("containers", [])[:1]
    }
    if len(images) != 1:
        problems.append(f"head and workers run different images: {sorted(map(str, images))}")
    for image in images:
        match = FEDSIM_IMAGE.match(str(image))
        if not match:
            problems.append(f"image {image!r} is not fedsim:VERSION-rayX.Y.Z-pyXY-gpu")
        elif match["fedsim"] != _fedsim_version() or match["ray"] != spec.get("rayVersion"):
            problems.append(f"image {image!r}: not fedsim {_fedsim_version()} on Ray {spec.get('rayVersion')}")
    return problems


def test_kuberay_manifest_passes_the_structure_test():
    assert _kuberay_problems(_yaml(KUBERAY)) == []


def _group(doc):
    return doc["spec"]["workerGroupSpecs"][0]


def _worker_container(doc):
    return _group(doc)["template"]["spec"]["containers"][0]


def _head_container(doc):
    return doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(apiVersion="ray.io/v1alpha1"),
        lambda d: d.update(kind="RayJob"),
        lambda d: d["spec"]["headGroupSpec"].pop("rayStartParams"),
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),  # must be a string
        lambda d: _head_container(d).pop("image"),
        lambda d: _head_container(d)["resources"].pop("limits"),
        lambda d: _group(d).pop("groupName"),
        lambda d: _group(d).update(replicas=_group(d)["maxReplicas"] + 1),
        lambda d: _group(d).update(minReplicas=_group(d)["replicas"] + 1),
        lambda d: _worker_container(d)["resources"]["limits"].pop("nvidia.com/gpu"),
        lambda d: _worker_container(d)["resources"]["requests"].update({"nvidia.com/gpu": "2"}),
        lambda d: _worker_container(d).update(image="rayproject/ray:2.60.0-py311-gpu"),  # fedsim not installed
        lambda d: d["spec"].update(rayVersion="2.40.0"),  # the image's Ray differs
        lambda d: d["spec"].update(workerGroupSpecs=[]),
    ],
    ids=["api-version", "kind", "head-no-ray-start-params", "ray-start-param-int", "head-no-image",
         "head-no-limits", "no-group-name", "replicas-above-max", "min-above-replicas", "no-gpu-limit",
         "gpu-request-not-limit", "worker-other-image", "ray-version", "no-worker-groups"],
)
def test_a_broken_kuberay_manifest_fails_the_structure_test(mutate):
    doc = _yaml(KUBERAY)
    mutate(doc)
    assert _kuberay_problems(doc)


def test_rays_kuberay_autoscaler_reads_the_manifest_and_a_fedsim_gpu_worker_fits_each_worker_pod():
    doc = _yaml(KUBERAY)
    doc["metadata"].setdefault("namespace", "default")  # set by `kubectl apply -n`; Ray's code reads it
    # Ray's own translation of a RayCluster into its autoscaler config (what the autoscaler sidecar runs),
    # which ends with validate_config.
    config = _derive_autoscaling_config_from_ray_cr(doc)
    worker = _gpu_worker()
    types = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert set(types) == {g["groupName"] for g in doc["spec"]["workerGroupSpecs"]}
    for name, node in types.items():
        assert node["resources"].get("GPU", 0) >= max(worker.num_gpus, 1), f"{name}: Ray sees no GPU"
        assert node["resources"]["CPU"] >= worker.num_cpus, f"{name}: fewer CPUs than one worker actor reserves"
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("GPU", 0) == 0
    _check_ray_pin(doc["spec"]["rayVersion"], FEDSIM_IMAGE.match(_head_container(doc)["image"])["py"],
                   "clusters/kuberay.yaml")


# --- the image KubeRay runs ---------------------------------------------------------------------------------


def _dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_kuberay_image_installs_the_same_ray_torch_and_fedsim_as_the_launcher():
    lines = _dockerfile_lines()
    base = RAY_IMAGE.match(next(line for line in lines if line.startswith("FROM ")).split()[1])
    assert base and base["platform"] != "cpu", "the image must be a rayproject/ray CUDA image"
    manifest = _yaml(KUBERAY)
    assert base["ray"] == manifest["spec"]["rayVersion"], "rayVersion differs from the image's Ray"
    assert base["py"] == FEDSIM_IMAGE.match(_head_container(manifest)["image"])["py"]
    launcher = RAY_IMAGE.match(_yaml(LAUNCHER)["docker"]["image"])
    assert (base["ray"], base["py"]) == (launcher["ray"], launcher["py"]), "ray-up.yaml and the image differ"
    # torch (the Makefile's pin, CUDA build) before fedsim, fedsim from the copied checkout.
    torch_at = next(i for i, line in enumerate(lines) if line.startswith("RUN ") and _torch_pin() in line.split())
    copy_at = next(i for i, line in enumerate(lines) if re.match(r"COPY\b.*\s\.\s+\.$", line))
    fedsim_at = next(i for i, line in enumerate(lines) if re.search(r"pip install\b.*\s(-e\s+)?\"?\.(\[[a-z,]+\])?\"?(\s|$)", line))
    assert torch_at < fedsim_at and copy_at < fedsim_at
    assert "/whl/cpu" not in lines[torch_at]


def test_the_kuberay_image_leaves_out_what_git_ignores():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    for entry in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines():
        entry = entry.strip()
        if entry and not entry.startswith("#"):
            # .gitignore's unanchored directory names match at any depth; .dockerignore needs **/ for that.
            assert entry in ignored or f"**/{entry}" in ignored, f".gitignore's {entry} is in the image"
    assert ".git" in ignored
