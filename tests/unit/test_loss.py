"""The chunked cross-entropy fused with the frozen LM head (training.loss chunked, Liger-Kernel style): the same loss
and the same adapter gradients as transformers' own loss, a trained head refused, and it runs on fake tensors."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from transformers import LlamaConfig, LlamaForCausalLM

from fedsim.errors import ConfigError
from fedsim.models.loss import fused_linear_cross_entropy, task_loss
from fedsim.scenario import load
from fedsim.scenario.schema import TrainingConfig

FEDKSEED = Path(__file__).parents[2] / "scenarios" / "peft" / "fedkseed.yaml"
VOCAB = 97
TINY = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
LORA = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")


def _model(peft_config=LORA):
    torch.manual_seed(0)
    return get_peft_model(LlamaForCausalLM(TINY), peft_config)


def _batch(b: int = 2, s: int = 7):
    """b x s = 14 tokens (3 and 8 do not divide it), with prompt tokens and a padded tail labelled -100."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (b, s), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    labels[1, 5:] = -100
    return ids, labels


def _loss_and_grads(model, loss: str, chunks: int = 8):
    model.zero_grad(set_to_none=True)
    ids, labels = _batch()
    value = task_loss(model, ids, labels, TrainingConfig(loss=loss, loss_chunks=chunks))
    value.backward()
    return value.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunks", [1, 3, 8, 64])
def test_chunked_loss_and_lora_gradients_equal_the_full_loss(chunks):
    model = _model()
    full, want = _loss_and_grads(model, "full")
    chunked, got = _loss_and_grads(model, "chunked", chunks)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
    assert got.keys() == want.keys() and len(got) == 8
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
        assert want[name].abs().max() > 1e-4, name  # the gradient compared is not zero


def test_prompt_tuning_virtual_tokens_are_padded_as_peft_pads_them():
    model = _model(PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM"))
    (full, want), (chunked, got) = _loss_and_grads(model, "full"), _loss_and_grads(model, "chunked", 3)
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_fused_cross_entropy_with_a_head_bias_against_torch(dtype, tol):
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(10, 16, generator=g).to(dtype).requires_grad_()
    weight, bias = torch.randn(VOCAB, 16, generator=g).to(dtype), torch.randn(VOCAB, generator=g).to(dtype)
    targets = torch.randint(0, VOCAB, (10,), generator=g)
    targets[[0, 4]] = -100
    got = fused_linear_cross_entropy(hidden, weight, bias, targets, 3)
    (grad,) = torch.autograd.grad(2.0 * got, hidden)
    ref = hidden.detach().clone().requires_grad_()
    want = F.cross_entropy(F.linear(ref, weight, bias).float(), targets)  # logits upcast, as transformers does
    (2.0 * want).backward()
    assert grad.dtype == dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, ref.grad, rtol=tol, atol=tol)


def test_all_tokens_ignored_gives_nan_and_no_gradient_as_torch():
    hidden = torch.randn(4, 8, requires_grad=True)
    got = fused_linear_cross_entropy(hidden, torch.randn(5, 8), None, torch.full((4,), -100), 2)
    got.backward()
    assert torch.isnan(got) and torch.equal(hidden.grad, torch.zeros(4, 8))


def test_a_trained_lm_head_is_refused_at_load_and_at_run_time():
    with pytest.raises(ConfigError) as err:
        load({}, {"training.loss": "chunked", "peft.target_modules": ["q_proj", "lm_head"]})
    assert err.value.path == "training.loss" and "trains lm_head" in err.value.message
    with pytest.raises(ConfigError, match="training.loss_chunks: is read with training.loss chunked only"):
        load({}, {"training.loss_chunks": 4})
    with pytest.raises(ConfigError, match="training.loss: chunked does not apply to FedKSeed"):
        load(FEDKSEED, {"training.loss": "chunked"})
    model = _model(LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    with pytest.raises(RuntimeError, match="needs a frozen LM head"):
        task_loss(model, *_batch(), TrainingConfig(loss="chunked"))


def test_chunked_loss_runs_on_fake_tensors():
    """Under FakeTensorMode (FLOP and memory tracing): no value is read, every shape is static."""
    model, mode = _model(), FakeTensorMode()
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(mode.from_tensor(p), requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = mode.from_tensor(b)
    with mode:
        ids, labels = (mode.from_tensor(t) for t in _batch())
        value = task_loss(model, ids, labels, TrainingConfig(loss="chunked", loss_chunks=3))
        value.backward()
    assert isinstance(value, FakeTensor) and value.shape == ()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(grads) == 8 and all(isinstance(g, FakeTensor) for g in grads)
