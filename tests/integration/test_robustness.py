"""Train mode under attack: 20% of the clients send sign-flipped updates (x2). FedAvg's eval loss degrades;
the coordinate-wise median and the trimmed mean keep it within 10% of the clean run (issue 8's acceptance
test; same seed, population and schedule in all four runs)."""

import pandas as pd
import pytest
import ray

import fedsim

BASE = {"name": "attack", "seed": 5, "model": {"name": "fedsim-tiny-llama"},
        "data": {"samples_per_client": {"mean": 16, "sigma": 0.3, "min": 8, "max": 40}, "eval_samples": 64},
        "training": {"local_steps": 3, "batch_size": 4, "seq_len": 48, "lr": 0.005},
        "population": {"num_clients": 200, "dropout": 0.0, "devices": {"laptop": 1.0}},
        "server": {"rounds": 6, "clients_per_round": 10, "over_selection": 1.0, "eval_every": 0},
        "runtime": {"num_workers": 2}}
ATTACK = {"population.adversaries": {"fraction": 0.2, "attack": "sign_flip", "scale": 2.0}}
RUNS = {"clean": {}, "mean": ATTACK, "median": {**ATTACK, "server.aggregation": "median"},
        "trimmed": {**ATTACK, "server.aggregation": "trimmed_mean", "server.trim_fraction": 0.2}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        return {name: fedsim.run(BASE, over, out=tmp_path_factory.mktemp(name) / "run", quiet=True, report="off")
                for name, over in RUNS.items()}
    finally:
        ray.shutdown()


def test_sign_flipping_clients_degrade_fedavg_and_robust_rules_hold(runs):
    final = {name: r.summary["final_eval_loss"] for name, r in runs.items()}
    assert final["mean"] > 1.1 * final["clean"], final  # the attack hurts the plain mean
    assert final["median"] <= 1.1 * final["clean"], final
    assert final["trimmed"] <= 1.1 * final["clean"], final
    clients = pd.read_parquet(runs["mean"].run_dir / "clients.parquet")
    assert clients.loc[clients.trained, "adversary"].sum() >= 6  # ~2 of 10 a round attacked
    clean = pd.read_parquet(runs["clean"].run_dir / "clients.parquet")
    assert not clean.adversary.any()
    # same schedule in every run: only what the adversaries send differs
    assert clients.client_id.tolist() == clean.client_id.tolist()
