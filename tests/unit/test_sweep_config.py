"""Sweep files: parsed and checked before Ray starts; every value a trial can take is loaded as a scenario."""

from pathlib import Path

import pytest
import yaml

from fedsim.errors import ConfigError
from fedsim.sweeps.config import load_sweep
from fedsim.sweeps.results import figures_of

ROOT = Path(__file__).resolve().parents[2]
BASE = str(ROOT / "scenarios" / "quickstart.yaml")


def _sweep(tmp_path, **body):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "scenario": BASE, **body}))
    return path


def test_shipped_sweeps_load_and_count_their_trials():
    grid = load_sweep(ROOT / "scenarios" / "sweeps" / "stragglers-grid.yaml")
    assert grid.num_trials() == 2 * 2 * 2 and grid.swept == ["server.clients_per_round", "server.deadline_s", "seed"]
    assert grid.scenario == str(ROOT / "scenarios" / "stragglers.yaml")  # relative to the sweep file
    budget = load_sweep(ROOT / "scenarios" / "sweeps" / "budget-grid.yaml")
    assert budget.mode == "estimate" and budget.num_trials() == 5 * 5 * 2 * 4 >= 200


def test_a_search_runs_num_samples_trials(tmp_path):
    cfg = load_sweep(_sweep(tmp_path, grid={"peft.r": [4, 8]}, random={"training.lr": {"loguniform": [1e-4, 1e-2]}},
                            search="optuna", num_samples=5))
    assert cfg.num_trials() == 5


@pytest.mark.parametrize("body, key, words", [
    ({"grid": {"server.clients_per_round": [4, 0]}}, "server.clients_per_round", "server.clients_per_round=0"),
    ({"grid": {"server.no_such_key": [1]}}, "server", "no_such_key"),
    ({"random": {"training.lr": {"uniform": [-1, 0.1]}}}, "training.lr", "training.lr=-1"),
    ({"random": {"training.lr": {"normal": [0, 1]}}}, "random.training.lr", "expected one of"),
    ({"random": {"training.lr": {"uniform": [0.1]}}}, "random.training.lr.uniform", "takes 2 numbers"),
    ({"grid": {"peft.r": []}}, "grid.peft.r", "at least one value"),
    ({"grid": {"peft.r": [4]}, "set": {"peft.r": 8}}, "peft.r", "both fixed"),
    ({"grid": {"seed": [1, 2]}}, "seeds", "seeds: [...]"),
    ({"set": {"runtime.num_workers": 2}}, "runtime.num_workers", "trial.workers"),
    ({"mode": "estimate", "scheduler": {"type": "asha"}}, "scheduler", "estimate-mode"),
    ({"grid": {"peft.r": [4]}, "figures": [{"x": "training.lr", "y": "bytes_up"}]}, "figures", "not a swept key"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type", "asha"),
    ({"trial": {"workers": 0}}, "trial.workers", "greater than 0"),
    ({"metric": "final_eval_los"}, "metric", "final_eval_loss"),
    ({"set": ["server.rounds=2"]}, "set", "expected a mapping"),
    ({"random": {"training.weight_decay": {"loguniform": [0, 0.1]}}}, "random.training.weight_decay.loguniform",
     "positive lower end"),
    ({"random": {"peft.r": {"randint": [4, 4]}}}, "random.peft.r.randint", "low < high"),
    ({"random": {"peft.r": {"randint": [2.5, 8]}}}, "random.peft.r.randint", "integers"),
    ({"random": {"training.lr": {"quniform": [0.1, 0.5, 0]}}}, "random.training.lr.quniform", "positive quantum"),
    ({"grid": {"runtime.cluster": ["local", "clusters/single-node-gpus.yaml"]}}, "runtime.cluster", "cannot vary"),
    ({"search": "optuna", "seeds": [1, 2], "random": {"peft.r": {"choice": [4, 8]}}}, "seeds", "optimise over"),
    ({"grid": {"peft.r": [4]}, "figures": [{"x": "peft.r", "y": "bytes_upp"}]}, "figures", "not a number fedsim draws"),
])
def test_bad_sweeps_name_the_key(tmp_path, body, key, words):
    with pytest.raises(ConfigError) as err:
        load_sweep(_sweep(tmp_path, **body))
    assert err.value.path.startswith(key) and words in str(err.value), str(err.value)


def test_missing_scenario_and_missing_file(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("grid: {peft.r: [4]}\n")
    with pytest.raises(ConfigError, match="scenario"):
        load_sweep(bare)
    with pytest.raises(ConfigError, match="file not found"):
        load_sweep(tmp_path / "nope.yaml")


def test_default_figures_draw_the_metric_time_bytes_and_energy_against_each_swept_key(tmp_path):
    cfg = load_sweep(_sweep(tmp_path, grid={"peft.r": [4, 8], "server.clients_per_round": [2, 4]}, seeds=[0, 1]))
    figs = figures_of(cfg)
    assert {(f.x, f.hue) for f in figs} == {("peft.r", "server.clients_per_round"),
                                            ("server.clients_per_round", "peft.r")}
    assert [f.y for f in figs[:4]] == ["final_eval_loss", "sim_time_s", "bytes_up", "energy_kwh"]


def test_a_randint_upper_end_is_excluded_and_a_grid_may_complete_the_base(tmp_path):
    """Tune's randint excludes its upper end: [0, 2] never draws 2, so the value checked is 1 (a dropout of 2
    would be refused). A value checked alone is loaded with the rest of the first trial's values."""
    from fedsim.sweeps.config import ends, first_point

    assert ends("randint", [1, 11]) == [1, 10] and ends("loguniform", [1e-4, 1e-2]) == [1e-4, 1e-2]
    cfg = load_sweep(_sweep(tmp_path, random={"population.dropout": {"randint": [0, 2]}},
                            grid={"peft.r": [4, 8]}, seeds=[3]))
    assert first_point(cfg) == {"peft.r": 4, "population.dropout": 0, "seed": 3}
    # a base invalid alone (8 clients per round of 4) that every trial's grid value makes whole
    whole = load_sweep(_sweep(tmp_path, set={"population.num_clients": 4},
                              random={"server.over_selection": {"uniform": [1.0, 1.2]}},
                              grid={"server.clients_per_round": [2, 3]}))
    assert whole.num_trials() == 2
    with pytest.raises(ConfigError, match="exceeds population.num_clients 4"):
        load_sweep(_sweep(tmp_path, set={"population.num_clients": 4}, grid={"server.clients_per_round": [2, 8]}))
    assert ends("quniform", [0.05, 0.5, 0.1]) == pytest.approx([0.1, 0.5])
    with pytest.raises(ConfigError, match="no multiple of 1"):
        load_sweep(_sweep(tmp_path, random={"training.lr": {"quniform": [0.1, 0.5, 1]}}))

