import subprocess
import sys

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
