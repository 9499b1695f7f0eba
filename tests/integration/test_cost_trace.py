"""Traced costs (`fedsim cost --trace`): the analytic model held to the trace over a grid of catalog
configurations, the trace held to a real step's measured memory on CPU, and the CLI's cached trace."""

import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.costs import memory
from fedsim.costs.traced import TraceSetup
from fedsim.models.shapes import hf_config_dict, model_shape
from fedsim.models.trace import trace_step
from fedsim.scenario.schema import PeftConfig, TrainingConfig

ALL = ("all-linear",)
# catalog model, PEFT, base dtype and quantization, local step: >= 24 points over models x batch x sequence x
# checkpointing x attention x quantization x PEFT method (and the loss, optimizer and master weights); the
# deeper catalog models are held to their traces at one common setup by benchmarks/cost_table.py (README)
GRID = [
    ("qwen2.5-0.5b", {}, "bfloat16", "none", {}),
    ("qwen2.5-0.5b", {}, "bfloat16", "none", {"attention": "eager"}),
    ("qwen2.5-0.5b", {}, "float32", "none", {"batch_size": 4, "seq_len": 256}),
    ("qwen2.5-0.5b", {"target_modules": ALL}, "bfloat16", "none", {"loss": "chunked"}),
    ("qwen2.5-0.5b", {"target_modules": ALL}, "bfloat16", "nf4", {"gradient_checkpointing": True}),
    ("qwen2.5-0.5b", {"method": "ia3", "target_modules": None}, "bfloat16", "none", {}),
    ("qwen2.5-0.5b", {"method": "prompt_tuning"}, "bfloat16", "none", {"seq_len": 256}),
    ("qwen2.5-0.5b", {"method": "prefix_tuning"}, "bfloat16", "none", {}),
    ("qwen2.5-0.5b", {"method": "p_tuning"}, "float32", "none", {"gradient_checkpointing": True}),
    ("qwen2.5-0.5b", {"federation": "ffa"}, "bfloat16", "none", {"optimizer": "sgd"}),
    ("qwen2.5-0.5b", {"target_modules": ALL, "r": 64}, "bfloat16", "none", {"optimizer": "adamw8bit"}),
    ("qwen2.5-0.5b", {"target_modules": ALL}, "bfloat16", "none", {"master_weights": True, "loss": "chunked",
                                                                    "gradient_checkpointing": True}),
    ("llama-3.2-1b", {}, "bfloat16", "none", {"batch_size": 1, "seq_len": 1024}),
    ("llama-3.2-1b", {"target_modules": ALL}, "bfloat16", "none", {"gradient_checkpointing": True,
                                                                    "loss": "chunked"}),
    ("llama-3.2-1b", {"target_modules": ALL}, "bfloat16", "nf4", {"gradient_checkpointing": True,
                                                               "loss": "chunked"}),
    ("llama-3.2-1b", {}, "bfloat16", "int8", {"attention": "flash"}),
    ("llama-3.2-1b", {"target_modules": ALL, "dropout": 0.1}, "bfloat16", "none", {"seq_len": 256}),
    ("llama-3.2-1b", {}, "bfloat16", "none", {"attention": "eager", "gradient_checkpointing": True,
                                              "batch_size": 1, "seq_len": 1024}),
    ("tinyllama-1.1b", {}, "bfloat16", "none", {"batch_size": 4, "seq_len": 256}),
    ("tinyllama-1.1b", {"target_modules": ("q_proj", "k_proj", "v_proj", "o_proj")}, "float32", "none",
     {"attention": "eager", "seq_len": 256}),
    ("tinyllama-1.1b", {}, "bfloat16", "nf4", {"loss": "chunked", "loss_chunks": 4}),
    ("tinyllama-1.1b", {"federation": "fedsa", "target_modules": ALL}, "bfloat16", "int8",
     {"gradient_checkpointing": True}),
    ("llama-3.2-1b", {}, "bfloat16", "nf4", {"batch_size": 1, "seq_len": 2048, "attention": "flash"}),
    ("fedsim-tiny-llama", {}, "float32", "none", {}),
]


def _point(name, peft, dtype, quant, training):
    return name, PeftConfig(**{"r": 16, **peft}), dtype, quant, TrainingConfig(**{"batch_size": 2, "seq_len": 512,
                                                                                  **training})


def _calibration(point) -> str | None:
    """Trace one grid point and hold the analytic model to it: None, or what is off."""
    name, peft, dtype, quant, t = _point(*point)
    traced = trace_step(TraceSetup(hf_config_dict(name), peft, t, dtype, quant))
    parts, flops = memory.step_costs(model_shape(name, peft), t, dtype, quant)
    mem_err, flop_err = sum(parts.values()) / traced.peak_bytes - 1, flops / traced.flops - 1
    weights_err = parts["weights"] / traced.parts["weights"] - 1  # the base's storage, exactly
    if abs(mem_err) > 0.10 or abs(flop_err) > 0.05 or abs(weights_err) > 0.01:
        return f"{point}: memory {mem_err:+.1%}, FLOPs {flop_err:+.1%}, weights {weights_err:+.1%}"
    return None


def test_analytic_model_is_calibrated_to_the_trace():
    # two processes (this machine's two cores): each trace is single-threaded Python dispatch
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        off = [r for r in pool.map(_calibration, GRID) if r]
    assert len(GRID) >= 24 and not off, "\n".join(off)


# ~60M-parameter Llama-style models (<= 100M): the CPU can run their steps for real
SMALL = {**hf_config_dict("llama-3.1-8b"), "num_hidden_layers": 6, "hidden_size": 512, "intermediate_size": 1536,
         "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 32000}
MEASURED = [
    ({"r": 16}, {"batch_size": 4, "seq_len": 256}),
    ({"r": 16, "target_modules": ALL}, {"batch_size": 4, "seq_len": 256, "gradient_checkpointing": True,
                                         "loss": "chunked"}),
    ({"r": 8}, {"batch_size": 2, "seq_len": 512, "attention": "eager"}),
]


def test_traced_peak_matches_a_measured_cpu_step():
    specs = [{"config": SMALL, "peft": peft, "training": training, "dtype": "float32"} for peft, training in MEASURED]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    script = str(Path(__file__).with_name("cpu_peak.py"))
    # each setup in a process of its own (a clean high-water mark), two at a time (two cores)
    procs = [subprocess.Popen([sys.executable, script, json.dumps([spec])], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for spec in specs[:2]]
    outs = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    last = subprocess.run([sys.executable, script, json.dumps(specs[2:])], capture_output=True, text=True, env=env,
                          timeout=600)
    outs.append((last.stdout, last.stderr, last.returncode))
    assert all(code == 0 for _, _, code in outs), [err[-2000:] for _, err, _ in outs]
    rows = [json.loads(line) for out, _, _ in outs for line in out.strip().splitlines()]
    for r in rows:  # the whole peak within 15%, and the step's own bytes (no weights, adapter or state) too
        assert r["traced"] == pytest.approx(r["measured"], rel=0.15), rows
        assert r["traced_step"] == pytest.approx(r["measured_step"], rel=0.15), rows


def test_cost_trace_prints_caches_and_feeds_estimates(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    scenario = ["scenarios/quickstart.yaml", "--set", "model.cost_as=llama-3.2-1b", "--set", "model.dtype=bfloat16",
                "--set", "training.seq_len=256", "--set", "training.batch_size=2"]
    assert main(["cost", *scenario, "--device", "gpu-workstation", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["cost_model"] == "analytic" and "trace" not in before
    assert main(["cost", *scenario, "--device", "gpu-workstation", "--trace", "--json"]) == 0
    traced = json.loads(capsys.readouterr().out)
    assert traced["cost_model"] == "traced" and traced["trace"]["peak_bytes"] > 0
    layers = [k for k in traced["trace"]["layers"] if k.startswith("layer ")]
    assert len(layers) == 16  # llama-3.2-1b's decoder layers, each holding activations at the peak
    # memory and FLOPs now come from the trace, beside the analytic parts; the device's implied tokens/s too
    assert traced["memory_bytes"] == pytest.approx(traced["trace"]["peak_bytes"] + 3e8)
    assert traced["flops_per_step"] == traced["trace"]["flops"]
    dev = traced["device"]  # the implied throughput: the catalog's 165.2 TFLOP/s x 30% over the traced FLOPs/token
    assert dev["tokens_per_s"] == pytest.approx(165.2e12 * 0.30 / traced["flops_per_token"])
    assert dev["tokens_per_s"] == pytest.approx(before["device"]["tokens_per_s"], rel=0.05)  # analytic ~ traced
    # cached: a plain `fedsim cost` (and estimate mode, through the same profile) reads it without tracing
    assert main(["cost", *scenario, "--device", "gpu-workstation", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cost_model"] == "traced" and again["memory_bytes"] == traced["memory_bytes"]
    assert main(["cost", *scenario, "--device", "gpu-workstation", "--trace"]) == 0
    printed = capsys.readouterr().out
    assert "traced step" in printed and "activations by layer" in printed and "implied throughput" in printed
    # estimate mode books the traced memory and FLOPs too, without importing torch
    sets = scenario[2::2]  # the values of the --set options
    overrides, out_dir = [*sets, "server.rounds=2"], str(tmp_path / "est")
    code = (f"import sys, json, fedsim; r = fedsim.estimate('scenarios/quickstart.yaml', overrides={overrides!r}, "
            f"out={out_dir!r}); print(json.dumps([r.summary['cost_model'], r.summary['memory_bytes'], "
            "'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FEDSIM_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    model, memory_bytes, torch_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert model == "traced" and memory_bytes == traced["memory_bytes"] and not torch_loaded


def test_trace_refuses_a_zeroth_order_step(capsys):
    code = main(["cost", "scenarios/quickstart.yaml", "--set", "server.strategy=fedkseed", "--set",
                 "training.optimizer=sgd", "--device", "laptop", "--trace"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "server.strategy" in err[0]
