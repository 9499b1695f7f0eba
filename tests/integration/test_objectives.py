"""Client objectives on real local LoRA training (tiny model): FedProx's proximal term (Li et al. 2020) by hand and
its pull, SCAFFOLD's gradient correction (Karimireddy et al. 2020)."""

import numpy as np
import pytest
import torch

from fedsim.data.prepare import prepare_data
from fedsim.data.reader import DataReader
from fedsim.models.base import ensure_base_model
from fedsim.models.local import evaluate, load_local_model, proximal_term, train_client
from fedsim.scenario import load


def test_proximal_term_and_its_gradient_by_hand():
    # mu/2 * (||[1, 2] - [0, 1]||^2 + ||[3] - [3]||^2) = 0.25 * (1 + 1) = 0.5; gradient mu (w - w_t) = [.5, .5], [0]
    w = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([3.0], requires_grad=True)]
    anchors = [torch.tensor([0.0, 1.0]), torch.tensor([3.0])]
    term = proximal_term(w, anchors, mu=0.5)
    term.backward()
    assert term.item() == pytest.approx(0.5)
    assert w[0].grad.tolist() == [0.5, 0.5] and w[1].grad.tolist() == [0.0]


def _client(overrides: dict, client: int):
    """(scenario, local model, its initial adapter, the client's rows and labels)."""
    s = load({}, overrides)
    model_dir = str(ensure_base_model(s.model))
    data = prepare_data(s, model_dir, log=lambda _: None)
    ids, labels, _ = DataReader(data.spec).client(client, data.client_rows(client))
    lm = load_local_model(model_dir, s.peft)
    return s, lm, lm.get_state(), ids, labels


def test_the_proximal_term_keeps_local_training_near_the_global_model():
    s, lm, start, ids, labels = _client({"training.local_steps": 6, "training.optimizer": "sgd", "training.lr": 0.5}, 7)
    norms = {}
    for mu in (0.0, 0.5, 1.5):  # SGD on the quadratic term is stable while lr * mu < 2
        delta, losses = train_client(lm, start, ids, labels, s.training, s.seed, 1, 7, proximal_mu=mu)
        norms[mu] = float(np.sqrt(sum((d.astype(np.float64) ** 2).sum() for d in delta.values())))
        assert np.isfinite(losses).all() and len(losses) == 6
    assert norms[0.0] > norms[0.5] > norms[1.5] > 0
    assert norms[1.5] < 0.6 * norms[0.0]


def test_the_worker_trains_with_the_mu_its_task_carries():
    """The contract's wiring: a ClientTask with proximal_mu reaches the local objective (no Ray: the worker
    class itself)."""
    from fedsim.client_round import ClientConfig, ClientTask
    from fedsim.runtime.worker import Worker
    from fedsim.scenario import dump

    s = load({}, {"training.local_steps": 4, "training.optimizer": "sgd", "training.lr": 0.5})
    model_dir = str(ensure_base_model(s.model))
    data = prepare_data(s, model_dir, log=lambda _: None)
    worker = Worker(dump(s), model_dir, data.spec)
    assert worker.ready() is None
    start = worker.initial_state()
    norms = []
    for mu in (0.0, 1.5):
        task = ClientTask(7, 1, 1, 0, data.client_rows(7), ClientConfig("fedprox" if mu else "fedavg", mu))
        result, payload = worker.train(task, start)
        update = payload["delta"]
        assert result.finite and result.client == 7
        norms.append(float(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in update.values()))))
    assert norms[1] < 0.6 * norms[0]


def test_a_local_step_is_corrected_by_c_minus_c_i():
    """One SGD step from the same point: the corrected delta is -eta (g + c - c_i), so it differs from the plain
    one by exactly -eta (c - c_i) (SCAFFOLD, Algorithm 1, line 10)."""
    s, lm, start, ids, labels = _client({"training.local_steps": 1, "training.optimizer": "sgd", "training.lr": 0.1}, 3)
    rng = np.random.default_rng(0)
    corr = {k: rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in start.items()}
    plain, _ = train_client(lm, start, ids, labels, s.training, s.seed, 1, 3)
    corrected, _ = train_client(lm, start, ids, labels, s.training, s.seed, 1, 3, correction=corr)
    for k in start:
        np.testing.assert_allclose(corrected[k] - plain[k], -0.1 * corr[k], atol=2e-6)


def test_ffa_lora_trains_b_only_and_a_never_changes():
    """FFA-LoRA (Sun et al. 2024): A stays at its seeded initialisation (the same in every process), only B is
    in the state clients train and send."""
    s, lm, start, ids, labels = _client({"peft.federation": "ffa", "training.local_steps": 3}, 5)
    assert start and all(".lora_B." in k for k in start)
    a_before = {n: p.detach().clone() for n, p in lm.model.named_parameters() if ".lora_A." in n}
    assert a_before and not any(p.requires_grad for n, p in lm.model.named_parameters() if ".lora_A." in n)
    delta, losses = train_client(lm, start, ids, labels, s.training, s.seed, 1, 5)
    assert set(delta) == set(start) and any(np.abs(d).max() > 0 for d in delta.values())
    after = dict(lm.model.named_parameters())
    assert all(torch.equal(after[n], a) for n, a in a_before.items())
    again = load_local_model(str(ensure_base_model(s.model)), s.peft)  # another worker: the same A
    assert all(torch.equal(dict(again.model.named_parameters())[n], a) for n, a in a_before.items())


def test_fedsa_lora_sends_a_and_keeps_b():
    """FedSA-LoRA (Guo et al. 2025) through the worker: the global holds A only, the update is A's, the client
    keeps its new B; a second round starts from that B, not from zero."""
    from fedsim.client_round import ClientTask
    from fedsim.runtime.worker import Worker
    from fedsim.scenario import dump
    from fedsim.strategies.base import Strategy

    s = load({}, {"peft.federation": "fedsa", "training.local_steps": 3})
    model_dir = str(ensure_base_model(s.model))
    data = prepare_data(s, model_dir, log=lambda _: None)
    worker = Worker(dump(s), model_dir, data.spec)
    assert worker.ready() is None
    start = Strategy(s).initial(worker.initial_state())
    assert start and all(".lora_A." in k for k in start)
    result, payload = worker.train(ClientTask(4, 1, 1, 0, data.client_rows(4)), start)
    assert set(payload["delta"]) == set(start)  # only A travels
    b = payload["client_state"]
    assert b and all(".lora_B." in k for k in b) and any(np.abs(v).max() > 0 for v in b.values())
    _, again = worker.train(ClientTask(4, 2, 2, 0, data.client_rows(4)), start, b)
    moved = {k: again["client_state"][k] - b[k] for k in b}
    assert any(np.abs(v).max() > 0 for v in moved.values())  # trained on from its own B
    personal = worker.evaluate_personal(start, b, 4, data.client_rows(4))
    assert np.isfinite(personal) and personal < worker.evaluate(start)  # its own B helps on its own rows


def test_exact_match_by_one_forward_pass_agrees_with_greedy_generation():
    """A row counts as an exact match iff greedy decoding reproduces its response and stops: build references
    from what `generate` really produces (must match) and from a one-token change of it (must not)."""
    s, lm, start, ids, labels = _client({"peft.method": "lora"}, 2)
    lm.set_state(start)
    lm.model.eval()
    rows_ids, rows_labels, expected = [], [], []
    for row in range(4):
        prompt_len = int(np.argmax(labels[row] != -100))
        prompt = torch.from_numpy(ids[row : row + 1, :prompt_len]).long()
        gen = lm.model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        answer = gen[0, prompt_len:].tolist()
        eos = lm.model.generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        answer = answer[: answer.index(eos) + 1] if eos in answer else answer
        for wrong in (False, True):
            ref = list(answer)
            if wrong:
                ref[0] = (ref[0] + 1) % lm.model.config.vocab_size
            seq = ids[row, :prompt_len].tolist() + ref
            lab = [-100] * prompt_len + ref
            pad = s.training.seq_len - len(seq)
            rows_ids.append(seq + [0] * pad)
            rows_labels.append(lab + [-100] * pad)
            expected.append(not wrong)  # a reference cut before EOS (seq_len) is matched token for token
    got: list = []
    evaluate(lm, start, np.array(rows_ids, np.int32), np.array(rows_labels, np.int32), exact=got)
    assert got == expected and any(expected)
