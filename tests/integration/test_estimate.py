"""Estimate mode and `fedsim cost` on the shipped scenarios and every catalog model, offline."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fedsim
from fedsim import catalog
from fedsim.cost import client_cost
from fedsim.scenario import load

BUDGET = "scenarios/llama2-7b-budget.yaml"
SMALL = {"population.num_clients": 3000, "server.rounds": 30}


def test_budget_scenario_contract_and_ineligible_phones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedsim", "estimate", BUDGET, "--out", str(tmp_path / "b"), "--quiet",
                           *[f"--set={k}={v}" for k, v in SMALL.items()]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    d = tmp_path / "b"
    rounds = [json.loads(x) for x in (d / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 30 and all(r["train_loss"] is None and r["eval_loss"] is None for r in rounds)
    summary = json.loads((d / "summary.json").read_text())
    for key in ("model_params", "trainable_params", "adapter_bytes", "co2_g", "energy_kwh", "per_device", "sim_time_s"):
        assert key in summary
    assert summary["model_params"] == 6_738_415_616 and summary["trainable_params"] == 39_976_960
    assert summary["adapter_bytes"] == 39_976_960 * 2  # bf16 on the wire
    dev = summary["per_device"]
    assert dev["phone-budget"]["eligible_share"] == 0 and dev["phone-flagship"]["eligible_share"] == 0
    assert dev["datacenter-gpu"]["eligible_share"] == 1 and dev["datacenter-gpu"]["share_none"] == 1
    assert dev["laptop"]["eligible_share"] == 1 and dev["laptop"]["share_none"] == 0  # only via a quantized base
    assert dev["phone-budget"]["energy_j"] == 0 and dev["phone-budget"]["ineligible"] > 0
    clients = pd.read_parquet(d / "clients.parquet")
    assert set(clients.loc[clients.device == "laptop", "quantization"]) <= {"int8", "nf4"}
    for key in ("bytes_up", "bytes_down", "energy_j"):
        np.testing.assert_allclose(clients.groupby("round")[key].sum().values, [r[key] for r in rounds])
    assert (d / "budget.png").stat().st_size > 10_000 and list((d / "tb").iterdir())


def test_per_device_table_replaces_client_rows_above_the_limit(tmp_path):
    res = fedsim.estimate(BUDGET, {**SMALL, "estimate.client_rows_limit": 100}, out=tmp_path / "agg")
    assert not (res.run_dir / "clients.parquet").exists()
    agg = pd.read_parquet(res.run_dir / "clients_by_device.parquet")
    by_round = agg.groupby("round")
    for key in ("bytes_up", "energy_j"):
        np.testing.assert_allclose(by_round[key].sum().values, [r[key] for r in res.rounds])
    np.testing.assert_array_equal(by_round.clients.sum().values, [r["selected"] for r in res.rounds])
    assert res.summary["client_rows"] == "clients_by_device.parquet"


def test_cross_silo_70b_fits_only_sharded(tmp_path):
    res = fedsim.estimate("scenarios/llama2-70b-cross-silo.yaml", {"server.rounds": 5}, out=tmp_path / "silo")
    assert res.summary["model_params"] == 68_976_648_192
    assert res.summary["ineligible_total"] == 0 and res.summary["completed_total"] > 0
    report = client_cost(load("scenarios/llama2-70b-cross-silo.yaml"), "datacenter-8xa100", gpus=8, zero_stage=3)
    assert report["zero"]["model_state_bytes_per_gpu"] < 80e9 < report["memory_bytes"]


@pytest.mark.parametrize("name", sorted(catalog.model_configs()))
def test_cost_and_estimate_work_for_every_catalog_model(name, tmp_path):
    s = load(BUDGET, {"model.name": name, "population.num_clients": 200, "server.rounds": 2})
    report = client_cost(s, "gpu-workstation")
    for key in ("model_params", "trainable_params", "adapter_bytes", "flops_per_step", "memory_bytes",
                "memory_breakdown"):
        assert report[key] > 0 if key != "memory_breakdown" else set(report[key]) >= {"weights", "activations"}
    assert report["memory_bytes"] == pytest.approx(sum(report["memory_breakdown"].values()))
    res = fedsim.estimate(s, out=tmp_path / name)
    assert res.summary["trainable_params"] == report["trainable_params"]


def test_cost_cli_json():
    proc = subprocess.run([sys.executable, "-m", "fedsim", "cost", BUDGET, "--device", "phone-flagship", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["device"]["eligible"] is False and report["memory_breakdown"]["weights"] > 13e9
    bad = subprocess.run([sys.executable, "-m", "fedsim", "cost", BUDGET, "--device", "toaster"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("fedsim: error: --device")
