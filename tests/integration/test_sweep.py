"""Sweeps on real Ray Tune: every trial a whole federation with its own placement group, resumable after Ctrl-C,
ASHA stopping a hopeless federation early, Optuna searching an estimate-mode space."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

import fedsim
from fedsim.sweeps.config import SUMMARY_NUMBERS

ROOT = Path(__file__).resolve().parents[2]
STRAGGLERS = ROOT / "scenarios" / "sweeps" / "stragglers-grid.yaml"


def _finished(out: Path) -> list[Path]:
    return sorted(p for p in (out / "trials").glob("*/summary.json"))


def test_train_sweep_survives_ctrl_c_and_resumes_without_rerunning_finished_trials(tmp_path):
    """The acceptance sweep: 8 train-mode federations of the tiny model sharing two CPUs. Interrupted once two
    trials have finished, then run again: the finished ones are not rerun, the rest complete, and sweep.parquet
    has one row per trial with its values and summary numbers."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fedsim", "sweep", str(STRAGGLERS), "--out", str(out)]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(_finished(out)) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    early = {p: p.stat().st_mtime_ns for p in _finished(out)}
    assert len(early) >= 2, first.communicate(timeout=60)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "interrupted with" in err and "the same command resumes it" in err
    assert not (out / "sweep.parquet").exists()

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for path, mtime in early.items():  # finished trials were not rerun
        assert path.stat().st_mtime_ns == mtime
    table = pd.read_parquet(out / "sweep.parquet")
    assert len(table) == 8 and set(table["status"]) == {"completed"}
    grid = set(zip(table["server.clients_per_round"], table["server.deadline_s"], table["seed"]))
    assert grid == {(k, d, s) for k in (4, 8) for d in (30, 120) for s in (1, 2)}
    assert (table["rounds"] == 4).all() and (table["round_reached"] == 4).all()
    assert (table["num_workers"] == 1).all()  # its own placement group, not the whole cluster's two CPUs
    for row in table.itertuples():
        run_dir = out / row.run_dir
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["seed"] == row.seed and config["server"]["clients_per_round"] == row._3
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["bytes_up"] == pytest.approx(row.bytes_up) and summary["complete"]
    # more clients per round upload more bytes (same seeds and deadlines)
    by_k = table.groupby("server.clients_per_round")["bytes_up"].mean()
    assert by_k[8] > by_k[4]
    assert {p.name for p in (out / "figures").glob("*.png")} >= {"bytes_up_vs_server_clients_per_round.png",
                                                                 "final_eval_loss_vs_server_deadline_s.png"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def _write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_asha_stops_a_hopeless_federation_early(local_ray, tmp_path):
    """ASHA (grace period 1, reduction factor 2), one trial at a time: the federation that learns (lr 0.003)
    finishes; the one that cannot (lr 1e-9) has a higher train loss at the first rung and is stopped there."""
    path = _write(tmp_path, {
        "name": "asha", "scenario": str(ROOT / "scenarios" / "stragglers.yaml"),
        "set": {"server.rounds": 4, "server.eval_every": 0, "population.dropout": 0.0},
        "grid": {"training.lr": [0.003, 1.0e-9]},
        "scheduler": {"type": "asha", "metric": "train_loss", "grace_period": 1, "reduction_factor": 2},
        "trial": {"workers": 1, "max_concurrent": 1},
    })
    table = fedsim.sweep(path, out=tmp_path / "out").table.set_index("training.lr")
    assert table.loc[0.003, "status"] == "completed" and table.loc[0.003, "round_reached"] == 4
    assert table.loc[1e-9, "status"] == "stopped" and table.loc[1e-9, "round_reached"] == 1  # the first rung
    assert table.loc[1e-9, "train_loss"] > table.loc[0.003, "train_loss"]
    assert not (tmp_path / "out" / table.loc[1e-9, "run_dir"] / "summary.json").exists()


def test_a_federation_that_breaks_is_an_error_row_and_the_sweep_goes_on(local_ray, tmp_path):
    """A trial whose every client task raises (runtime.fail_clients: the whole population) stops its federation;
    the sweep records it as an error with one line and finishes the other trial."""
    everyone = list(range(12))
    path = _write(tmp_path, {
        "name": "broken", "scenario": str(ROOT / "scenarios" / "quickstart.yaml"),
        "set": {"server.rounds": 2, "population.num_clients": 12, "population.dropout": 0.0,
                "server.clients_per_round": 3, "server.eval_every": 0, "runtime.task_retries": 0},
        "grid": {"runtime.fail_clients": [[], everyone]},
        "trial": {"workers": 1},
    })
    table = fedsim.sweep(path, out=tmp_path / "out").table
    ok, broken = (table[table["runtime.fail_clients"].map(len) == n].iloc[0] for n in (0, 12))
    assert ok["status"] == "completed" and ok["rounds"] == 2
    assert broken["status"] == "error" and "kept failing" in broken["error"] and "\n" not in broken["error"]


def test_estimate_sweep_with_optuna_search(local_ray, tmp_path):
    """An estimate-mode search: Optuna's TPE through Tune picks 6 (rank, clients per round) pairs from a space;
    each trial's numbers are those of a plain `fedsim estimate` of the same values."""
    path = _write(tmp_path, {
        "name": "optuna", "scenario": str(ROOT / "scenarios" / "quickstart.yaml"), "mode": "estimate",
        "set": {"server.rounds": 3},
        "random": {"peft.r": {"choice": [4, 8, 16]}, "server.clients_per_round": {"randint": [2, 12]}},
        "search": "optuna", "num_samples": 6, "metric": "bytes_up", "direction": "min",
    })
    result = fedsim.sweep(path, out=tmp_path / "out")
    table = result.table
    assert len(table) == 6 and set(table["status"]) == {"completed"}
    assert set(SUMMARY_NUMBERS) <= set(table.columns)  # every metric a sweep may name is a summary number
    assert set(table["peft.r"]) <= {4, 8, 16} and table["server.clients_per_round"].between(2, 11).all()
    assert list((tmp_path / "out" / "tune").glob("searcher-state-*.pkl"))  # Optuna's state, for a resume
    row = table.iloc[0]
    plain = fedsim.estimate(ROOT / "scenarios" / "quickstart.yaml",
                            {"server.rounds": 3, "peft.r": int(row["peft.r"]),
                             "server.clients_per_round": int(row["server.clients_per_round"])},
                            out=tmp_path / "plain")
    assert plain.summary["bytes_up"] == pytest.approx(row["bytes_up"], rel=1e-12)
    assert result.figures  # bytes_up, time, energy against both keys


def test_a_trial_inside_a_placement_group_sizes_its_pool_from_the_group(local_ray):
    """run() inside any Tune trial (or placement group) takes one worker per bundle that holds a worker, never
    the whole cluster."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from fedsim.runtime.cluster import pool_size
    from fedsim.scenario.schema import ClusterSpec, RuntimeConfig

    group = placement_group([{"CPU": 1}, {"CPU": 1}])  # the trial's own bundle, then one worker's
    ray.get(group.ready())

    @ray.remote(num_cpus=0)
    def size():
        return pool_size(ray, ClusterSpec(), RuntimeConfig()), pool_size(ray, ClusterSpec(), RuntimeConfig(num_workers=3))

    try:
        assert ray.get(size.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True)).remote()) == (1, 3)
        assert pool_size(ray, ClusterSpec(), RuntimeConfig()) == 2  # outside: the cluster's two CPUs (all held)
    finally:
        ray.util.remove_placement_group(group)


def test_sweep_input_errors_are_one_line_and_write_nothing(tmp_path):
    """Through the CLI: a file that is not YAML, a trial that could never be scheduled here (it would wait
    forever), an --out that holds something else: exit code 2, one line, nothing written or touched."""
    from tests.integration.test_cli_errors import assert_user_error, snapshot
    from tests.integration.test_cli_errors import fedsim as cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    assert_user_error(cli("sweep", bad), "sweep")
    one_cpu = tmp_path / "one-cpu.yaml"  # whatever this machine has: a local Ray of one CPU
    one_cpu.write_text("name: one-cpu\nnum_cpus: 1\n")
    big = _write(tmp_path, {"name": "big", "scenario": str(ROOT / "scenarios" / "quickstart.yaml"),
                            "set": {"runtime.cluster": str(one_cpu)}, "grid": {"peft.r": [4]},
                            "trial": {"workers": 2}})
    line = assert_user_error(cli("sweep", big, "--out", tmp_path / "big"), "trial.workers")
    assert "one trial needs 2 CPUs" in line and not (tmp_path / "big").exists()
    other = tmp_path / "other"
    (other / "notes.txt").parent.mkdir()
    (other / "notes.txt").write_text("mine")
    small = _write(tmp_path, {"name": "small", "scenario": str(ROOT / "scenarios" / "quickstart.yaml"),
                              "mode": "estimate", "grid": {"peft.r": [4]}})
    before = snapshot(other)
    assert "holds no sweep" in assert_user_error(cli("sweep", small, "--out", other), "--out")
    assert snapshot(other) == before
    # the same sweep file over an edited base scenario is another sweep: not resumed into the old directory
    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "scenarios" / "quickstart.yaml").read_text())
    edited = _write(tmp_path, {"name": "edited", "scenario": str(base), "mode": "estimate",
                               "set": {"server.rounds": 2}, "grid": {"peft.r": [4]}})
    assert cli("sweep", edited, "--out", tmp_path / "e", "--quiet").returncode == 0
    before = snapshot(tmp_path / "e")
    base.write_text(base.read_text().replace("seed: ", "seed: 1", 1))
    assert "holds a different sweep" in assert_user_error(cli("sweep", edited, "--out", tmp_path / "e"), "--out")
    assert snapshot(tmp_path / "e") == before

