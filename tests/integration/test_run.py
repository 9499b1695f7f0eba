"""A tiny federation through real Ray, real peft, real datasets: the run-directory contract and determinism."""

import json

import numpy as np
import pandas as pd
import pytest
import ray

import fedsim

TINY = {
    "name": "tiny",
    "seed": 3,
    "model": {"name": "fedsim-tiny-llama", "cost_as": "qwen2.5-0.5b", "dtype": "bfloat16"},
    "data": {"samples_per_client": {"mean": 12, "sigma": 0.5, "min": 4, "max": 40}, "eval_samples": 64},
    "training": {"local_steps": 3, "batch_size": 4, "seq_len": 48, "lr": 0.005},
    "population": {"num_clients": 80, "dropout": 0.2,
                   "devices": {"phone-budget": 0.3, "phone-flagship": 0.3, "laptop": 0.3, "gpu-workstation": 0.1}},
    "server": {"rounds": 4, "clients_per_round": 5, "over_selection": 1.6, "deadline_s": 120, "eval_every": 2},
}
ASYNC = {"server.schedule": "async", "server.async": {"concurrency": 8, "buffer_size": 3, "max_staleness": 2},
         "server.rounds": 6, "server.eval_every": 3}
ADAM = {"server.optimizer": "adam", "server.server_lr": 0.01}  # FedAdam (Reddi et al. 2021) on FedBuff steps
MILLION = {"population.num_clients": 1_000_000, "server.rounds": 2, "server.eval_every": 0}
TOPK = {"costs.upload_compression": "topk", "costs.topk_fraction": 0.25, "costs.transmit_dtype": "float16"}
ROUND_KEYS = {"round", "sim_time_s", "duration_s", "selected", "completed", "dropped", "late", "ineligible",
              "bytes_up", "bytes_down", "energy_j", "train_loss", "eval_loss"}
CLIENT_KEYS = {"round", "client_id", "device", "network", "status", "t_download_s", "t_compute_s", "t_upload_s",
               "bytes_up", "bytes_down", "energy_j", "num_samples", "trained"}
SUMMARY_KEYS = {"rounds", "sim_time_s", "bytes_up", "bytes_down", "energy_j", "initial_eval_loss",
                "final_eval_loss", "clients_trained", "wall_time_s"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False)
    out = {}
    try:
        for workers in (1, 2):
            path = tmp_path_factory.mktemp(f"w{workers}")
            out[workers] = fedsim.run(TINY, {"runtime.num_workers": workers}, out=path / "run", quiet=True)
        stop = fedsim.run(TINY, {"runtime.num_workers": 2, **ASYNC, **ADAM, "runtime.checkpoint_every": 2},
                          out=tmp_path_factory.mktemp("resumed") / "run", quiet=True, stop_after=4)
        out["stopped"] = stop.summary
        out["resumed"] = fedsim.run(resume=stop.run_dir, quiet=True)
        for name, workers, over in (("async1", 1, ASYNC), ("async2", 2, ASYNC), ("topk", 2, TOPK),
                                    ("local", 2, {**_local_model_and_file(tmp_path_factory.mktemp("data")),
                                                  "runtime.base_quantization": "nf4"}),  # CPU: falls back
                                    ("million", 2, MILLION), ("adam", 2, {**ASYNC, **ADAM}),
                                    ("median", 2, {"server.aggregation": "median"})):
            out[name] = fedsim.run(TINY, {"runtime.num_workers": workers, **over},
                                   out=tmp_path_factory.mktemp(name) / "run", quiet=True)
        out["killed"], out["after_kill"] = _kill_a_worker_then_resume(tmp_path_factory.mktemp("killed") / "run")
        out["survived"] = _kill_a_worker_and_go_on(tmp_path_factory.mktemp("survived") / "run")
    finally:
        ray.shutdown()
    return out


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # noqa: BLE001 - the process ended meanwhile
        return []


def _killer(run_dir):
    """A started thread that SIGKILLs one of this test's worker processes while it trains, once round 1 is
    recorded; its list holds the victim's pid."""
    import os
    import signal
    import threading
    import time

    import psutil

    killed = []

    def killer():
        """After round 1 is recorded, SIGKILL one of this test's own worker actors (a descendant of this
        process: never another Ray session's), preferably while it trains. Five rounds remain, each with
        tasks for both workers, so even an idle victim loses a dispatched task."""
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            rounds = run_dir / "rounds.jsonl"
            if rounds.is_file() and rounds.read_text().count("\n") >= 1:
                mine = [p for p in psutil.Process().children(recursive=True)
                        if "ray::Worker" in " ".join(_cmdline(p))]
                busy = [p for p in mine if "ray::Worker.train" in " ".join(_cmdline(p))]
                if busy or (mine and time.time() > deadline - 100):
                    victim = (busy or mine)[0]
                    os.kill(victim.pid, signal.SIGKILL)
                    killed.append(victim.pid)
                    return
            time.sleep(0.002)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread, killed


def _kill_a_worker_and_go_on(run_dir):
    """The same run with Ray restarting the lost worker and rerunning its tasks (the defaults): it completes."""
    thread, killed = _killer(run_dir)
    run = fedsim.run(TINY, {"runtime.num_workers": 2, **ASYNC, **ADAM}, out=run_dir, quiet=True)
    thread.join()
    return run, killed


def _kill_a_worker_then_resume(run_dir):
    """The async FedAdam run with 2 workers and no task reruns, one worker process SIGKILLed while it trains a
    client: the run must stop with RunAborted (never finish with an update silently missing), leave a
    checkpoint, and resume from it (also across a torn rounds.jsonl line and a torn client-row part left by the
    crash)."""
    from fedsim.errors import RunAborted

    thread, killed = _killer(run_dir)
    with pytest.raises(RunAborted) as aborted:
        fedsim.run(TINY, {"runtime.num_workers": 2, "runtime.task_retries": 0, **ASYNC, **ADAM}, out=run_dir,
                   quiet=True)
    thread.join()
    with open(run_dir / "rounds.jsonl", "a") as f:
        f.write('{"round": 99, "sim_time')  # a line torn by the crash
    parts = run_dir / ".clients_parts"  # (the aborted run closed its ledger: the crash left this part)
    parts.mkdir(exist_ok=True)
    (parts / "r000099-000099.parquet").write_bytes(b"PAR1 torn")
    return {"message": str(aborted.value), "killed": killed}, fedsim.run(resume=run_dir, quiet=True)


def _local_model_and_file(folder):
    """Overrides that use a local HF model directory and a local jsonl dataset with its own field names; some
    prompts fill seq_len (no response token left): they are dropped, not trained to a NaN."""
    from fedsim.data.synthetic import FAMILIES, generate
    from fedsim.models.base import ensure_base_model
    from fedsim.scenario import load

    data = generate({f: 150 for f in FAMILIES[:4]}, seed=9, name="file")
    path = folder / "instructions.jsonl"
    rows = [{"question": q, "answer": a, "family": t} for q, a, t in zip(data["prompt"], data["response"], data["task"])]
    rows += [{"question": "Please " * 60 + "add 1 and 2.", "answer": "3", "family": "add"}] * 40
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model.name": str(ensure_base_model(load(TINY).model)), "data.source": str(path),
            "data.prompt_field": "question", "data.response_field": "answer", "data.label_field": "family",
            "data.eval_samples": 48}


def _assert_same_run(a, b):
    """Same rounds.jsonl (but wall times), same clients.parquet, same adapter bytes."""
    def strip(rows):  # the simulator's own wall time and restarts are not the simulated run's
        return [{k: v for k, v in r.items() if k not in ("wall_s", "worker_restarts")} for r in rows]

    assert strip(_rounds(a)) == strip(_rounds(b))
    pd.testing.assert_frame_equal(pd.read_parquet(a.run_dir / "clients.parquet"),
                                  pd.read_parquet(b.run_dir / "clients.parquet"))
    assert (a.run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (b.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()


def _rounds(result):
    return [json.loads(line) for line in (result.run_dir / "rounds.jsonl").read_text().splitlines()]


def test_run_directory_contract(runs):
    res = runs[2]
    d = res.run_dir
    for name in ("config.yaml", "rounds.jsonl", "clients.parquet", "summary.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (d / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(d / "tb"))
    tb.Reload()
    evals = [(e.step, e.value) for e in tb.Scalars("round/eval_loss")]
    assert [step for step, _ in evals] == [2, 4]
    assert [e.step for e in tb.Scalars("round/bytes_up")] == [1, 2, 3, 4]
    rounds = _rounds(res)
    assert len(rounds) == 4 and all(ROUND_KEYS <= set(r) for r in rounds)
    assert [r["eval_loss"] is not None for r in rounds] == [False, True, False, True]
    assert [v for _, v in evals] == pytest.approx([r["eval_loss"] for r in rounds if r["eval_loss"] is not None],
                                                  rel=1e-6)  # TensorBoard stores float32
    assert (d / "budget.png").stat().st_size > 10_000 and "per_device" in res.summary
    clients = pd.read_parquet(d / "clients.parquet")
    assert CLIENT_KEYS <= set(clients.columns)
    summary = json.loads((d / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary == res.summary
    assert summary["clients_trained"] == int(clients.trained.sum())


def test_client_rows_add_up_to_round_rows_and_only_completed_train(runs):
    res = runs[2]
    clients = pd.read_parquet(res.run_dir / "clients.parquet")
    rounds = pd.DataFrame(_rounds(res)).set_index("round")
    sums = clients.groupby("round")[["bytes_up", "bytes_down", "energy_j"]].sum()
    for col in sums:
        np.testing.assert_allclose(sums[col].values, rounds[col].values, rtol=1e-9)
    counts = clients.groupby(["round", "status"]).size().unstack(fill_value=0)
    for status in ("completed", "dropped", "late", "ineligible"):
        got = counts[status] if status in counts else 0
        np.testing.assert_array_equal(got, rounds[status].reindex(counts.index).values)
    assert (clients.trained == (clients.status == "completed")).all()
    assert clients.loc[~clients.trained, "train_loss"].isna().all()
    assert clients.loc[clients.trained, "train_loss"].notna().all()
    assert (rounds["aggregated"] == rounds["completed"]).all()
    assert (clients.status == "ineligible").any()  # budget phones cannot hold Qwen2.5-0.5B
    assert (clients.loc[clients.status == "ineligible", "energy_j"] == 0).all()
    assert (clients.status == "dropped").any()
    # virtual time only moves forward, by each round's duration
    np.testing.assert_allclose(np.cumsum(rounds.duration_s.values), rounds.sim_time_s.values)


def test_one_and_two_workers_give_identical_results(runs):
    _assert_same_run(runs[1], runs[2])


def test_model_learns_and_adapter_loads_with_peft(runs):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedsim.models.base import ensure_base_model
    from fedsim.scenario import load

    res = runs[2]
    assert res.summary["final_eval_loss"] < res.summary["initial_eval_loss"]
    base_dir = ensure_base_model(load(TINY).model)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, str(res.run_dir / "adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(torch.count_nonzero(p) > 0 for p in lora_b)  # B starts at zero: it was trained


def test_estimate_mode_books_exactly_the_costs_train_mode_booked(runs, tmp_path):
    est = fedsim.estimate(TINY, out=tmp_path / "est")
    skip = {"train_loss", "eval_loss", "wall_s", "aggregated", "global_sha", "exact_match", "exact_match_by_task",
            "client_eval_mean", "client_eval_std"}
    for trained, estimated in zip(_rounds(runs[1]), _rounds(est)):
        assert {k: v for k, v in trained.items() if k not in skip} == {k: v for k, v in estimated.items() if k not in skip}
        assert estimated["train_loss"] is None and estimated["eval_loss"] is None
    a = pd.read_parquet(runs[1].run_dir / "clients.parquet").drop(columns=["trained", "train_loss", "trained_from", "quarantined"])
    b = pd.read_parquet(est.run_dir / "clients.parquet").drop(columns=["trained", "train_loss", "trained_from", "quarantined"])
    pd.testing.assert_frame_equal(a, b)
    assert est.summary["clients_trained"] == 0 and est.summary["completed_total"] == runs[1].summary["clients_trained"]


def test_async_fedbuff_trains_from_dispatched_versions_deterministically(runs):
    a, b = runs["async1"], runs["async2"]
    _assert_same_run(a, b)
    clients = pd.read_parquet(a.run_dir / "clients.parquet")
    used = clients[clients.trained]
    assert (used.groupby("round").size() == 3).all()  # buffer size
    assert (used.staleness == used["round"] - 1 - used.version).all() and used.staleness.max() <= 2
    assert (clients.loc[clients.status == "stale", "staleness"] > 2).all()
    assert not clients.loc[clients.status != "completed", "trained"].any()
    assert a.summary["final_eval_loss"] < a.summary["initial_eval_loss"]
    for key in ("finish_p50_s", "finish_p90_s", "finish_p99_s", "wasted_energy_j", "wasted_bytes"):
        assert all(key in r for r in _rounds(a))


def test_topk_compression_is_applied_and_counted(runs):
    from fedsim.costs.compression import upload_bytes
    from fedsim.models.shapes import model_shape

    res = runs["topk"]
    shape = model_shape("qwen2.5-0.5b", fedsim.validate(TINY).peft)
    expected = upload_bytes(list(shape.trainable_tensors), "float16", "topk", 0.25)
    clients = pd.read_parquet(res.run_dir / "clients.parquet")
    done = clients[clients.status == "completed"]
    np.testing.assert_allclose(done.bytes_up, expected)
    assert expected < shape.n_trainable * 2 * 0.25 * 3.01  # values + indices of a quarter of the entries
    assert res.summary["final_eval_loss"] < res.summary["initial_eval_loss"]
    plain = _rounds(runs[2])
    assert sum(r["bytes_up"] for r in _rounds(res)) < 0.6 * sum(r["bytes_up"] for r in plain)


def test_report_and_compare_pages_are_self_contained(runs, tmp_path):
    import base64
    import re
    import subprocess
    import sys

    from fedsim.report import compare

    page = runs["async2"].run_dir / "report.html"  # written automatically at the end of the run
    text = page.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) >= 5  # timeline, round times, loss, costs, staleness, budget
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "src=\"http" not in text and "time to target loss" in text
    assert "final exact match" in text
    for name in ("timeline", "round_times", "loss", "costs", "staleness", "evaluation"):
        assert (runs["async2"].run_dir / "report" / f"{name}.png").is_file()
    out = compare([runs[2].run_dir, runs["async2"].run_dir], tmp_path / "cmp")
    assert out.name == "compare.html" and len(re.findall("data:image/png", out.read_text())) == 2
    table = pd.read_parquet(tmp_path / "cmp" / "compare_rounds.parquet")
    assert table.run.nunique() == 2 and len(table) == len(_rounds(runs[2])) + len(_rounds(runs["async2"]))
    bad = subprocess.run([sys.executable, "-m", "fedsim", "report", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a fedsim run directory" in bad.stderr


def test_estimate_async_books_what_train_async_booked(runs, tmp_path):
    est = fedsim.estimate(TINY, ASYNC, out=tmp_path / "est-async")
    skip = {"train_loss", "eval_loss", "wall_s", "aggregated", "global_sha", "exact_match", "exact_match_by_task",
            "client_eval_mean", "client_eval_std"}
    for trained, estimated in zip(_rounds(runs["async1"]), _rounds(est)):
        assert {k: v for k, v in trained.items() if k not in skip} == {k: v for k, v in estimated.items() if k not in skip}


def test_local_model_directory_and_jsonl_dataset(runs):
    res = runs["local"]
    config = (res.run_dir / "config.yaml").read_text()
    assert "instructions.jsonl" in config and "fedsim-tiny-llama-" in config
    assert res.summary["final_eval_loss"] < res.summary["initial_eval_loss"]
    clients = pd.read_parquet(res.run_dir / "clients.parquet")
    assert clients.trained.sum() > 0 and (clients.num_samples > 0).all()
    # an NF4 base needs bitsandbytes on a GPU: these CPU workers trained the float32 base, and say so
    assert {k: res.summary[k] for k in ("train_device", "train_dtype", "base_quantization")} == \
        {"train_device": "cpu", "train_dtype": "float32", "base_quantization": "none"}


def test_stop_and_resume_continues_bit_for_bit(runs):
    """Stopped after step 4 of 6 (async FedAdam: clients in flight and server moments across the cut), resumed:
    same rows, same adapter."""
    assert runs["stopped"]["complete"] is False and runs["stopped"]["rounds"] == 4
    resumed, straight = runs["resumed"], runs["adam"]
    assert resumed.summary["complete"] is True
    _assert_same_run(resumed, straight)
    assert sorted(p.name for p in (resumed.run_dir / "checkpoints").iterdir()) == ["round_00004", "round_00006"]
    assert not (resumed.run_dir / ".clients_parts").exists()


def _version_digests(res):
    return {0: res.summary["initial_global_sha"], **{r["round"]: r["global_sha"] for r in _rounds(res)}}


def test_each_client_trains_from_exactly_the_version_it_was_dispatched_with(runs):
    """The worker hashes the global state it trained from; it must be the digest of version v (the aggregator
    hashes every version it makes), v the version the schedule dispatched the client with."""
    for name in (2, "async2", "resumed"):
        res = runs[name]
        digests = _version_digests(res)
        clients = pd.read_parquet(res.run_dir / "clients.parquet")
        trained = clients[clients.trained]
        assert trained.trained_from.notna().all() and clients.loc[~clients.trained, "trained_from"].isna().all()
        assert (trained.trained_from == trained.version.map(digests)).all(), name
    async_versions = pd.read_parquet(runs["async2"].run_dir / "clients.parquet").query("trained")
    assert (async_versions.groupby("round").version.nunique() > 1).any()  # stale and fresh in one step


def test_a_million_clients_in_train_mode(runs):
    res = runs["million"]
    clients = pd.read_parquet(res.run_dir / "clients.parquet")
    assert res.summary["rounds"] == 2 and clients.client_id.max() > 100_000
    assert res.summary["clients_trained"] > 0 and res.summary["final_eval_loss"] < res.summary["initial_eval_loss"]
    assert res.summary["per_device"]["laptop"]["population"] > 200_000


def test_a_lost_worker_stops_the_run_with_a_checkpoint_and_resume_matches(runs):
    """kill -9 of a worker mid-round: one clear error naming the checkpoint; resuming (over a torn ledger)
    gives exactly the uninterrupted run."""
    killed = runs["killed"]
    assert killed["killed"], "no worker process was caught training"
    msg = killed["message"]
    assert "worker actor was lost while training client" in msg and "fedsim run --resume" in msg and "\n" not in msg
    resumed, straight = runs["after_kill"], runs["adam"]
    _assert_same_run(resumed, straight)


def test_a_lost_worker_is_restarted_and_its_tasks_rerun_identically(runs):
    """kill -9 of a worker mid-round with the default restarts and reruns: the run completes, identical to the
    run nobody killed (every rerun trains the same client from the same version with the same streams)."""
    survived, killed = runs["survived"]
    assert killed, "no worker process was caught training"
    assert sum(r["worker_restarts"] for r in _rounds(survived)) >= 1  # the ledger says a worker was restarted
    assert sum(r["worker_restarts"] for r in _rounds(runs["adam"])) == 0
    _assert_same_run(survived, runs["adam"])

def test_resume_refuses_overrides(runs):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="--resume"):
        fedsim.run(resume=runs["resumed"].run_dir, overrides={"server.rounds": 9})


def test_fedadam_moves_the_model_differently_and_learns(runs):
    """Same clients, same updates in step 1; FedAdam's normalised step differs from FedAvg's from step 1 on."""
    adam, avg = _rounds(runs["adam"]), _rounds(runs["async2"])
    assert [r["completed"] for r in adam] == [r["completed"] for r in avg]  # the schedule does not depend on it
    assert adam[0]["global_sha"] != avg[0]["global_sha"]
    assert runs["adam"].summary["final_eval_loss"] < runs["adam"].summary["initial_eval_loss"]


def test_a_robust_rule_runs_through_the_actors(runs):
    """The coordinate-wise median in train mode: round 1 trains the same clients from the same global as the
    FedAvg run (the schedule does not depend on the rule), so a different global after it is the rule's doing."""
    med, avg = _rounds(runs["median"]), _rounds(runs[2])
    assert [r["completed"] for r in med] == [r["completed"] for r in avg]
    assert med[0]["global_sha"] != avg[0]["global_sha"] and not any(r["robust_fallback"] for r in med)
    assert runs["median"].summary["final_eval_loss"] < runs["median"].summary["initial_eval_loss"]
