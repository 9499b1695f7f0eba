import json
import re
import subprocess
import sys

import numpy as np
import pytest

from fedsim.errors import ConfigError
from fedsim.scenario import dump, load, parse_overrides

QUICKSTART = "scenarios/quickstart.yaml"


def test_quickstart_loads_and_overrides_are_typed():
    s = load(QUICKSTART, ["server.rounds=5", "population.num_clients=2000", "peft.target_modules=[q_proj]"])
    assert s.server.rounds == 5 and isinstance(s.server.rounds, int)
    assert s.population.num_clients == 2000
    assert s.peft.target_modules == ("q_proj",)
    assert s.model.cost_as == "tinyllama-1.1b"


def test_api_overrides_as_dict_and_roundtrip():
    s = load({}, {"server.deadline_s": 12.5, "seed": 3})
    assert s.server.deadline_s == 12.5 and s.seed == 3
    assert load(dump(s)) == s


@pytest.mark.parametrize(
    "override, path, words",
    [
        ("server.roundz=3", "server.roundz", "unknown key"),
        ("bogus.key=1", "bogus", "unknown key"),
        ("server.rounds=abc", "server.rounds", "valid integer"),
        ("server.rounds=-1", "server.rounds", "greater than 0"),
        ("population.dropout=1.5", "population.dropout", "less than or equal to 1"),
        ("server.over_selection=0.5", "server.over_selection", "greater than or equal to 1"),
        ("population.devices={toaster: 1}", "population.devices.toaster", "not in the catalog"),
        ("data.source=missing.jsonl", "data.source", "file not found"),
        ("model.name=nowhere", "model.name", "neither a catalog model"),
        ("server.clients_per_round=5000", "server.clients_per_round", "exceeds population.num_clients"),
        ("training.optimizer=lion", "training.optimizer", "adamw"),
        ("population.diurnal.timezones={utc: 1}", "population.diurnal.timezones.utc", "UTC offset"),
        ("server.async.buffer_size=0", "server.async.buffer_size", "greater than 0"),
    ],
)
def test_bad_values_name_the_key(override, path, words):
    with pytest.raises(ConfigError) as err:
        load(QUICKSTART, [override])
    assert err.value.path == path
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_do_not_touch_the_callers_dict():
    raw = {"server": {"rounds": 3}}
    load(raw, {"server.rounds": 9, "server.async.concurrency": 4})
    assert raw == {"server": {"rounds": 3}}


def test_override_syntax_errors():
    with pytest.raises(ConfigError):
        parse_overrides(["no-equals-sign"])
    with pytest.raises(ConfigError) as err:
        load({}, ["server.rounds.deeper=1"])
    assert err.value.path.startswith("server.rounds")


def test_missing_scenario_file():
    with pytest.raises(ConfigError, match="file not found: nope.yaml"):
        load("nope.yaml")


def test_broken_cluster_spec_fails_at_load(tmp_path):
    spec = tmp_path / "cluster.yaml"
    spec.write_text("worker: {num_cpus: -1}\n")
    with pytest.raises(ConfigError) as err:
        load({}, {"runtime.cluster": str(spec)})
    assert "worker.num_cpus" in err.value.path and "greater than or equal to 0" in str(err.value)


@pytest.mark.parametrize("args", [
    ["validate", QUICKSTART, "--set", "server.rounds=-2"],
    ["validate", "nope.yaml"],
    ["run", QUICKSTART, "--set", "population.unknown=1", "--out", "runs/never-written"],
])
def test_cli_config_errors_exit_2_with_one_line(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_validate_prints_resolved_scenario():
    proc = subprocess.run([sys.executable, "-m", "fedsim", "validate", QUICKSTART, "--set", "seed=7"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "seed: 7" in proc.stdout and "over_selection: 1.3" in proc.stdout


# --- load-time checks of inputs that used to fail later with a traceback -------------------------------------

def _catalog(tmp_path, text: str) -> str:
    path = tmp_path / "my.yaml"
    path.write_text(text)
    return str(path)


MY_PHONE = """devices:
  my-phone:
    peak_flops: 1.0e+12
    memory_gb: 3.0
    power_busy_w: 4.0
    efficiency: 0.1
    networks: {wifi: 1.0}
"""


@pytest.mark.parametrize("text, words", [
    (MY_PHONE, "devices.my-phone: missing power_idle_w"),
    (MY_PHONE + "    power_idle_w: fast\n", "devices.my-phone.power_idle_w: expected a number, got 'fast'"),
    (MY_PHONE + "    power_idle_w: .nan\n", "devices.my-phone.power_idle_w: expected a finite number"),
    (MY_PHONE + "    power_idle_w: true\n", "devices.my-phone.power_idle_w: expected a finite number, got True"),
    (MY_PHONE.replace("{wifi: 1.0}", "{carrier-pigeon: 1.0}") + "    power_idle_w: 0.3\n",
     "devices.my-phone.networks.carrier-pigeon: not a network class"),
    (MY_PHONE.replace("{wifi: 1.0}", "{wifi: 0}") + "    power_idle_w: 0.3\n",
     "devices.my-phone.networks: mixture weights must sum to more than 0"),
    (MY_PHONE + "    power_idle_w: 0.3\n    power_idl_w: 0.3\n", "devices.my-phone: unknown field power_idl_w"),
    ("networks:\n  sat:\n    down_mbps: 50.0\n    up_mbps: 5.0\n", "networks.sat: missing latency_s"),
    ("networks:\n  wifi:\n    up_mbps: 0\n", "networks.wifi.up_mbps: must be > 0"),
    ("networks:\n  wifi: fast\n", "networks.wifi: expected a mapping, got str"),
    ("energy:\n  server_power_w: null\n", "energy.server_power_w: expected a finite number, got None"),
    ("device:\n  laptop: {}\n", "unknown section device"),
])
def test_user_catalog_entries_are_checked_at_load(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        load({}, {"population.catalog": _catalog(tmp_path, text)})
    assert err.value.path == "population.catalog"
    assert words in str(err.value)


def test_a_complete_user_device_loads_and_yaml_1_1_numbers_become_floats(tmp_path):
    path = _catalog(tmp_path, MY_PHONE.replace("1.0e+12", "1e12") + "    power_idle_w: 0.3\n")
    s = load({}, {"population.catalog": path, "population.devices": {"my-phone": 1.0}})
    from fedsim import catalog

    assert catalog.load(s.population.catalog)["devices"]["my-phone"]["peak_flops"] == 1e12


class _Memory:
    def __init__(self, available: float):
        self.available = available


def test_a_population_too_big_for_memory_fails_at_load(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Memory(21e9))
    with pytest.raises(ConfigError) as err:
        load(QUICKSTART, ["population.num_clients=100000000000"])
    assert err.value.path == "population.num_clients"
    assert re.fullmatch(r"population\.num_clients: 100000000000 clients need ~\d+(\.\d)? TB for the population "
                        r"arrays \(~\d+ B per client\); this machine has 21 GB available", str(err.value))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Memory(1e6))  # 1000 clients x ~80 B = 80 kB: fits
    assert load(QUICKSTART).population.num_clients == 1000
    with pytest.raises(ConfigError, match="less than or equal to 1000000000000"):
        load(QUICKSTART, ["population.num_clients=10000000000000"])


def test_population_bytes_per_client_follow_the_real_arrays():
    from fedsim import catalog
    from fedsim.data.partition import client_sizes
    from fedsim.population import sample
    from fedsim.scenario.load import population_bytes_per_client

    s = load(QUICKSTART, ["population.num_clients=5000"])
    pop = sample(s.population, catalog.load(), s.seed)
    arrays = [v for v in vars(pop).values() if isinstance(v, np.ndarray)]
    expected = (sum(a.nbytes for a in arrays) + client_sizes(s.data, 5000, s.seed).nbytes) / 5000
    assert population_bytes_per_client(s, catalog.load()) == expected
    diurnal = load(QUICKSTART, ["population.diurnal.amplitude=0.5"])
    assert population_bytes_per_client(diurnal, catalog.load()) == expected + 8  # a float64 UTC offset each


def _model_dir(tmp_path, *files: str):
    path = tmp_path / "my-model"
    path.mkdir()
    for name in files:
        (path / name).write_text(json.dumps({"model_type": "llama"}) if name == "config.json" else "{}")
    return str(path)


@pytest.mark.parametrize("files, words", [
    ((), "has no config.json and no tokenizer.json or tokenizer_config.json"),
    (("tokenizer.json",), "has no config.json"),
    (("config.json",), "has no tokenizer.json or tokenizer_config.json"),
])
def test_a_local_model_directory_needs_config_and_tokenizer(tmp_path, files, words):
    with pytest.raises(ConfigError) as err:
        load({}, {"model.name": _model_dir(tmp_path, *files)})
    assert err.value.path == "model.name" and words in str(err.value)


def test_local_model_directories_that_hold_what_is_read_load(tmp_path):
    path = _model_dir(tmp_path, "config.json", "tokenizer_config.json")
    assert load({}, {"model.name": path}).model.name == path
    assert load({}, {"model.cost_as": path}).model.cost_as == path  # costs need no tokenizer
    (tmp_path / "my-model" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not a readable JSON model config") as err:
        load({}, {"model.cost_as": path})
    assert err.value.path == "model.cost_as"
    (tmp_path / "my-model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no model_type"):
        load({}, {"model.name": path})


def test_empty_target_modules_fail_at_load():
    with pytest.raises(ConfigError) as err:
        load(QUICKSTART, ["peft.target_modules=[]"])
    assert err.value.path == "peft.target_modules"


def test_config_error_messages_are_one_line():
    assert str(ConfigError("a.b", "first\nsecond  third")) == "a.b: first second third"


def test_robust_rules_are_checked_against_the_round_size():
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="server.krum_byzantine: Krum with f = 2 needs rounds of at least 7"):
        load({}, {"server.aggregation": "krum", "server.krum_byzantine": 2, "server.clients_per_round": 6})
    load({}, {"server.aggregation": "krum", "server.krum_byzantine": 2, "server.clients_per_round": 7})
    with pytest.raises(ConfigError, match="server.trim_fraction: 0.1 of 5 updates"):
        load({}, {"server.aggregation": "trimmed_mean", "server.clients_per_round": 5})


def test_config_errors_survive_pickling_across_processes():
    """Ray pickles a worker's exception to hand it to the driver: it must stay a ConfigError naming its key."""
    import pickle

    from fedsim.errors import ConfigError

    err = pickle.loads(pickle.dumps(ConfigError("peft.target_modules", "qproj matches no module")))
    assert isinstance(err, ConfigError) and err.path == "peft.target_modules"
    assert str(err) == "peft.target_modules: qproj matches no module"


def test_peft_combinations_peft_cannot_run_are_refused_at_load():
    from fedsim.errors import ConfigError

    for over, key in (({"peft.method": "prefix_tuning", "training.gradient_checkpointing": True},
                       "training.gradient_checkpointing"),
                      ({"peft.method": "ia3", "peft.federation": "ffa"}, "peft.federation"),
                      ({"peft.federation": "fedsa", "server.strategy": "scaffold"}, "peft.federation")):
        with pytest.raises(ConfigError) as err:
            load({}, over)
        assert err.value.path == key


def test_a_peft_key_the_method_does_not_read_is_refused_unless_left_at_its_default():
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load({}, {"peft.method": "prompt_tuning", "peft.r": 16})
    assert err.value.path == "peft.r"
    with pytest.raises(ConfigError) as err:
        load({}, {"peft.num_virtual_tokens": 5})  # LoRA has no virtual tokens
    assert err.value.path == "peft.num_virtual_tokens"
    s = load({}, {"peft.method": "prompt_tuning", "peft.r": 8, "peft.target_modules": None})  # defaults / null
    assert load(dump(s)).peft.method == "prompt_tuning"  # a resolved config.yaml loads again (resume)
