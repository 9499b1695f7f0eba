"""The plain engine's local step honours training.loss, training.optimizer and training.master_weights (a tiny Llama
saved from its config: no cache, a second or two)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedsim.errors import ConfigError
from fedsim.models.device import Placement
from fedsim.models.local import load_local_model, make_optimizer, train_client
from fedsim.scenario import load
from fedsim.scenario.schema import PeftConfig, TrainingConfig

PEFT = PeftConfig(r=4, target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(out)
    return str(out)


def _rows(n: int = 12, s: int = 10):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 97, (n, s)).astype(np.int32)
    labels = ids.copy()
    labels[:, :3] = -100
    return ids, labels


def _train(lm, cfg: TrainingConfig):
    """Train one client from a fixed start (B away from 0: both factors get a gradient)."""
    ids, labels = _rows()
    rng = np.random.default_rng(1)
    start = {n: 0.05 * rng.standard_normal(tuple(p.shape)).astype(np.float32) for n, p in zip(lm.names, lm.params)}
    return train_client(lm, start, ids, labels, cfg, seed=0, dispatch=1, client=2)


def test_the_chunked_loss_trains_what_the_full_loss_trains(model_dir):
    lm = load_local_model(model_dir, PEFT, where=Placement("cpu", "float32", "none", attention="eager"))
    assert lm.model.config._attn_implementation == "eager"
    full, full_losses = _train(lm, TrainingConfig(local_steps=3, batch_size=4))
    chunked, chunked_losses = _train(lm, TrainingConfig(local_steps=3, batch_size=4, loss="chunked", loss_chunks=3))
    np.testing.assert_allclose(chunked_losses, full_losses, rtol=1e-5)
    for k in full:
        np.testing.assert_allclose(chunked[k], full[k], atol=1e-6)
    assert max(np.abs(v).max() for v in full.values()) > 1e-3


def test_master_weights_keep_16_bit_parameters_and_an_fp32_copy(model_dir):
    where = Placement("cpu", "bfloat16", "none", master_weights=True)
    lm = load_local_model(model_dir, PEFT, where=where)
    assert {p.dtype for p in lm.params} == {torch.bfloat16} and {m.dtype for m in lm.master} == {torch.float32}
    delta, losses = _train(lm, TrainingConfig(local_steps=3, batch_size=4, lr=1e-3))
    assert np.isfinite(losses).all()
    state = lm.get_state()  # the masters: updates finer than bfloat16 resolves
    for p, m, k in zip(lm.params, lm.master, lm.names):
        assert torch.equal(p, m.to(torch.bfloat16)) and np.array_equal(state[k], m.numpy())
    assert any(not np.array_equal(v, torch.from_numpy(v).bfloat16().float().numpy()) for v in state.values())
    plain = load_local_model(model_dir, PEFT, where=Placement("cpu", "bfloat16", "none"))
    assert plain.master is None and {p.dtype for p in plain.params} == {torch.float32}  # peft upcasts the adapter


def test_master_weights_change_nothing_in_float32(model_dir):
    cfg = TrainingConfig(local_steps=2, batch_size=4)
    runs = [_train(load_local_model(model_dir, PEFT, where=Placement("cpu", "float32", "none", master_weights=m)),
                   cfg)[0] for m in (False, True)]
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_adamw8bit_without_a_gpu_is_torchs_adamw():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert type(make_optimizer(TrainingConfig(optimizer="adamw8bit"), p, "cpu")) is torch.optim.AdamW
    assert type(make_optimizer(TrainingConfig(optimizer="sgd"), p, "cpu")) is torch.optim.SGD


def test_master_weights_are_refused_for_fedkseeds_forward_only_clients():
    with pytest.raises(ConfigError, match="training.master_weights: does not apply to FedKSeed"):
        load(Path(__file__).parents[2] / "scenarios" / "peft" / "fedkseed.yaml", {"training.master_weights": True})
