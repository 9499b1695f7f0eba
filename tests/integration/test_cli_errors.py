"""Bad input gets one line `fedsim: error: <key>: ...` on stderr and exit code 2 from the real CLI: no traceback,
and nothing half-written (a new --out directory is not created, an existing one keeps its files).

Checks made at scenario load go through `fedsim estimate` / `fedsim validate` (fast); the ones whose point is
the run path go through `fedsim run`, with a short run in case the check does not fire.
"""

import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedsim import cli
from fedsim.errors import ConfigError, RunAborted
from fedsim.runtime.cluster import init_ray, probe_address
from fedsim.scenario.schema import ClusterSpec

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "scenarios" / "quickstart.yaml")
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "FEDSIM_CACHE": str(ROOT / ".cache" / "fedsim"),
    "HF_HOME": str(ROOT / ".cache" / "hf"),
}
# If a run-path check does not fire, the run stays short (one round, no evaluation in between).
SHORT_RUN = ["--quiet", "--set", "server.rounds=1", "--set", "server.eval_every=0"]


def fedsim(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m fedsim ARGS` from the repository root, offline, caches in the repo's .cache/."""
    return subprocess.run([sys.executable, "-m", "fedsim", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)


def assert_user_error(proc: subprocess.CompletedProcess, key: str, code: int = 2) -> str:
    """Exit `code`, stderr exactly one `fedsim: error: <key>: ...` line, no traceback; returns the line."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"fedsim: error: {key}: "), lines[0]
    return lines[0]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under path with its content (to show a directory was left untouched)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- the run path ----------------------------------------------------------------------------------------------

def test_local_model_directory_without_config_json(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "tokenizer.json").write_text("{}")
    out = tmp_path / "out"
    line = assert_user_error(fedsim("run", QUICKSTART, "--out", out, "--set", f"model.name={model}", *SHORT_RUN),
                             "model.name")
    assert "config.json" in line
    assert not out.exists()


def test_unknown_peft_target_module(tmp_path):
    out = tmp_path / "out"
    line = assert_user_error(fedsim("run", QUICKSTART, "--out", out, "--set", "peft.target_modules=[q_proj, qproj]",
                                    *SHORT_RUN), "peft.target_modules")
    assert "qproj matches no module" in line and "q_proj, k_proj, v_proj" in line
    assert not out.exists()


@pytest.mark.parametrize("content", ["", "{}\n"], ids=["zero-bytes", "empty-object"])
def test_empty_data_file(tmp_path, content):
    data = tmp_path / "empty.jsonl"
    data.write_text(content)
    out = tmp_path / "out"
    assert_user_error(fedsim("run", QUICKSTART, "--out", out, "--set", f"data.source={data}", *SHORT_RUN),
                      "data.source")
    assert not out.exists()


@pytest.mark.parametrize("address, words", [
    ("127.0.0.1:1", "cannot reach Ray at 127.0.0.1:1"),
    ("ray://127.0.0.1:1", "Ray Client is not supported"),  # the run directory would be split between machines
])
def test_unreachable_or_client_cluster_address(tmp_path, address, words):
    spec = tmp_path / "cluster.yaml"
    spec.write_text(f"name: nowhere\naddress: {address}\n")
    out = tmp_path / "out"
    line = assert_user_error(fedsim("run", QUICKSTART, "--out", out, "--set", f"runtime.cluster={spec}", *SHORT_RUN),
                             "runtime.cluster.address")
    assert words in line
    assert not out.exists()


@pytest.mark.parametrize("address", ["127.0.0.1:1"])
def test_init_ray_fails_fast_from_a_background_thread(address):
    """The engine calls init_ray from a thread: no signals, and an answerless address fails within seconds."""
    caught: list[BaseException] = []

    def target():
        try:
            init_ray(ClusterSpec(address=address))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            caught.append(exc)

    t0 = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and time.monotonic() - t0 < 30
    assert len(caught) == 1 and isinstance(caught[0], ConfigError), caught
    assert caught[0].path == "runtime.cluster.address" and "cannot reach Ray at " + address in str(caught[0])


def test_a_port_that_is_not_ray_fails_the_probe():
    import socket

    with socket.create_server(("", 0)) as server:  # every interface: Ray resolves 127.0.0.1 to this node's IP
        address = f"127.0.0.1:{server.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="no Ray GCS answered") as err:
            probe_address(address, timeout=1.0)
    assert err.value.path == "runtime.cluster.address" and time.monotonic() - t0 < 10


# --- checks at scenario load (estimate / validate) ------------------------------------------------------------

def test_population_too_big_for_memory(tmp_path):
    out = tmp_path / "out"
    line = assert_user_error(fedsim("estimate", QUICKSTART, "--out", out, "--quiet",
                                    "--set", "population.num_clients=100000000000"), "population.num_clients")
    assert "100000000000 clients need ~" in line and "B per client); this machine has " in line
    assert not out.exists()


def test_user_catalog_entry_missing_a_field(tmp_path):
    cat = tmp_path / "my.yaml"
    cat.write_text("devices:\n  my-phone:\n    peak_flops: 1.0e+12\n    memory_gb: 3.0\n    power_busy_w: 4.0\n"
                   "    efficiency: 0.1\n    networks: {wifi: 1.0}\n")
    out = tmp_path / "out"
    line = assert_user_error(fedsim("estimate", QUICKSTART, "--out", out, "--quiet", "--set",
                                    f"population.catalog={cat}", "--set", "population.devices={my-phone: 1}"),
                             "population.catalog")
    assert line == "fedsim: error: population.catalog: devices.my-phone: missing power_idle_w"
    assert not out.exists()


@pytest.mark.parametrize("key, content", [
    ("device", b"this is not a pickle\n"),
    ("behavior", pickle.dumps({7: {"active": [0, 10], "inactive": [5, "later"], "finish_time": 20}})),
], ids=["device-not-a-pickle", "behavior-text-time"])
def test_malformed_trace(tmp_path, key, content):
    trace = tmp_path / f"{key}.pkl"
    trace.write_bytes(content)
    out = tmp_path / "out"
    assert_user_error(fedsim("estimate", QUICKSTART, "--out", out, "--quiet",
                             "--set", f"population.traces.{key}={trace}"), f"population.traces.{key}")
    assert not out.exists()


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("my notes\n")
    before = snapshot(out)
    proc = fedsim("estimate", QUICKSTART, "--out", out, "--overwrite", "--quiet")
    key = "--overwrite" if "error: --overwrite" in proc.stderr else "--out"
    assert_user_error(proc, key)
    assert snapshot(out) == before


# --- command-line combinations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, key", [(["--set", "server.rounds=40"], "--set"), (["--out", "elsewhere"], "--out")])
def test_resume_refuses_options_that_change_the_run(tmp_path, extra, key):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: recorded\n")
    before = snapshot(run_dir)
    line = assert_user_error(fedsim("run", "--resume", run_dir, *extra), key)
    assert "cannot be combined with --resume" in line
    assert snapshot(run_dir) == before and not (ROOT / "elsewhere").exists()


@pytest.mark.parametrize("exc, code, line", [
    (RunAborted("worker 3 died in round 7;\nresume from checkpoints/round_00005 with --resume"), 1,
     "fedsim: error: worker 3 died in round 7; resume from checkpoints/round_00005 with --resume"),
    (KeyboardInterrupt(), 130, "fedsim: interrupted"),
    (ConfigError("data.source", "empty"), 2, "fedsim: error: data.source: empty"),
])
def test_cli_turns_aborts_and_interrupts_into_one_line(monkeypatch, capsys, exc, code, line):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "_dispatch", fail)
    assert cli.main(["run", QUICKSTART]) == code
    assert capsys.readouterr().err == line + "\n"
