"""Every strategy family of scenarios/strategies/ in train mode through real Ray and peft: 1 and 2 workers give
identical runs, FedAdam + SCAFFOLD resume bit for bit (sync and async, server moments and client variates in
flight), secure aggregation changes nothing but fixed-point rounding, DP reports the accountant's epsilon."""

import json
from pathlib import Path

import pandas as pd
import pytest
import ray

import fedsim
from fedsim.costs.profile import scenario_costs
from fedsim.strategies.privacy import DPAccountant, sampling_rate

FAMILIES = ("fedavg", "fedopt", "fedprox", "scaffold", "robust-under-attack", "dp", "secagg", "oort")
SMALL = {"server.rounds": 3, "server.eval_every": 0, "population.num_clients": 200, "data.eval_samples": 32}
FEDADAM = {"server.optimizer": "adam", "server.server_lr": 0.01}
ASYNC = {"server.schedule": "async", "server.async": {"concurrency": 6, "buffer_size": 3, "max_staleness": 2},
         "server.rounds": 4}
SCENARIOS = Path(__file__).parents[2] / "scenarios" / "strategies"


def _run(tmp, name, over, **kw):
    return fedsim.run(SCENARIOS / f"{name}.yaml", {**SMALL, **over}, out=tmp.mktemp(name) / "run", quiet=True,
                      report="off", **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False)
    out = {}
    try:
        for name in FAMILIES:
            extra = FEDADAM if name == "scaffold" else {}  # FedAdam + SCAFFOLD: both kinds of server state
            for workers in (1, 2):
                out[name, workers] = _run(tmp_path_factory, name, {**extra, "runtime.num_workers": workers})
        for label, over in (("sync", {}), ("async", ASYNC)):
            over = {**FEDADAM, **over, "runtime.num_workers": 2, "runtime.checkpoint_every": 2}
            if label == "async":
                out["async", 2] = _run(tmp_path_factory, "scaffold", over)
            stopped = _run(tmp_path_factory, "scaffold", over, stop_after=2)
            out["resumed", label] = fedsim.run(resume=stopped.run_dir, quiet=True, report="off")
    finally:
        ray.shutdown()
    return out


def _rounds(run):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in
            (json.loads(line) for line in (run.run_dir / "rounds.jsonl").read_text().splitlines())]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _same(a, b):
    assert _rounds(a) == _rounds(b)
    assert pd.read_parquet(a.run_dir / "clients.parquet").equals(pd.read_parquet(b.run_dir / "clients.parquet"))
    assert _files(a.run_dir / "adapter") == _files(b.run_dir / "adapter")
    assert _client_states(a) == _client_states(b)


def _client_states(run) -> dict[int, dict]:
    """Every client's newest stored state (what a next round would read), as bytes."""
    from fedsim.client_state import ClientStore

    store = ClientStore(run.run_dir / "client_state")
    ids = sorted({int(p.name.split(".r")[0]) for p in (run.run_dir / "client_state").rglob("*.npz")})
    return {c: {k: v.tobytes() for k, v in store.read(c).items()} for c in ids}


@pytest.mark.parametrize("name", FAMILIES)
def test_one_and_two_workers_give_the_same_run(runs, name):
    _same(runs[name, 1], runs[name, 2])
    assert runs[name, 1].summary["final_eval_loss"] < runs[name, 1].summary["initial_eval_loss"] or name == "dp"


@pytest.mark.parametrize("label", ["sync", "async"])
def test_fedadam_with_scaffold_resumes_bit_for_bit(runs, label):
    uninterrupted = runs["scaffold", 2] if label == "sync" else runs["async", 2]
    resumed = runs["resumed", label]
    _same(uninterrupted, resumed)
    assert len(list((resumed.run_dir / "client_state").rglob("*.npz"))) > 0  # client variates were kept


def test_scaffold_books_twice_the_bytes_and_moves_its_server_variate(runs):
    plain, sc = runs["fedopt", 1], runs["scaffold", 1]  # same schedule, FedAdam in both
    assert sc.summary["adapter_bytes"] == 2 * plain.summary["adapter_bytes"]
    assert sc.summary["upload_bytes"] == 2 * plain.summary["upload_bytes"]


def test_secure_aggregation_changes_only_fixed_point_rounding(runs):
    plain, masked = runs["fedavg", 1].summary, runs["secagg", 1].summary
    assert masked["final_eval_loss"] == pytest.approx(plain["final_eval_loss"], rel=1e-4)
    # it did go through 32-bit fixed point: the global adapters differ in their last bits
    assert runs["secagg", 1].rounds[-1]["global_sha"] != runs["fedavg", 1].rounds[-1]["global_sha"]
    assert masked["bytes_down"] > plain["bytes_down"]  # keys and shares


def test_dp_reports_the_accountants_epsilon_per_round(runs):
    run = runs["dp", 1]
    s = fedsim.validate(run.run_dir / "config.yaml")
    _, pop, profile = scenario_costs(s)
    q = sampling_rate(s, pop, profile)
    assert q > s.server.clients_per_round / s.population.num_clients  # some devices cannot hold the model
    acc = DPAccountant(q, s.privacy.dp.noise_multiplier, s.privacy.dp.delta)
    eps = [r["dp_epsilon"] for r in run.rounds]
    assert eps == [acc.epsilon(t) for t in (1, 2, 3)] and eps == sorted(eps)
    assert runs["fedavg", 1].rounds[0]["dp_epsilon"] is None


@pytest.mark.parametrize("name", ["scaffold", "dp", "secagg"])
def test_estimate_mode_books_what_train_mode_booked(runs, name, tmp_path):
    """SCAFFOLD's doubled payloads, SecAgg's keys, shares and unmasking, DP's epsilon: same in both modes."""
    extra = FEDADAM if name == "scaffold" else {}
    est = fedsim.estimate(SCENARIOS / f"{name}.yaml", {**SMALL, **extra}, out=tmp_path / "est")
    keys = ("sim_time_s", "duration_s", "selected", "completed", "bytes_up", "bytes_down", "energy_j", "dp_epsilon")
    trained = [{k: r[k] for k in keys} for r in runs[name, 1].rounds]
    assert [{k: r[k] for k in keys} for r in est.rounds] == trained


def test_robust_rule_and_oort_run_as_configured(runs):
    attacked = pd.read_parquet(runs["robust-under-attack", 1].run_dir / "clients.parquet")
    assert attacked.loc[attacked.trained, "adversary"].any()
    assert runs["oort", 1].summary["ineligible_total"] == 0  # Oort selects among devices that check in
