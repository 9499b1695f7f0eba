"""Data from local files and the synthetic generator: tokenization once (cached by contents), partitions,
rows materialized per client by the worker-side reader, clear errors for bad columns."""

import json

import datasets
import numpy as np
import pytest

from fedsim.data.prepare import prepare_data
from fedsim.data.reader import DataReader
from fedsim.errors import ConfigError
from fedsim.models.base import ensure_base_model
from fedsim.scenario import load


@pytest.fixture(scope="module")
def model_dir():
    return str(ensure_base_model(load({}).model))


def _write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [{"q": f"Add {i} and {i}.", "a": str(2 * i), "kind": "even" if i % 2 == 0 else "odd", "who": f"u{i % 25}"}
        for i in range(400)]
FIELDS = {"data.prompt_field": "q", "data.response_field": "a"}


def _scenario(**over):
    return load({}, {"training.seq_len": 32, "server.clients_per_round": 4, **FIELDS, **over})


def test_jsonl_dirichlet_by_label(tmp_path, model_dir):
    s = _scenario(**{"data.source": _write(tmp_path, ROWS), "data.label_field": "kind", "data.dirichlet_alpha": 0.05,
                     "data.eval_samples": 40, "population.num_clients": 30})
    data = prepare_data(s, model_dir, log=lambda _: None)
    assert data.labels == ("even", "odd") and data.spec.kind == "table"
    assert len(data.spec.eval_rows) == 40 and not set(data.spec.eval_rows) & set(data.rows)  # held out
    reader = DataReader(data.spec)
    kinds = np.load(f"{data.spec.train_path}/../label.npy")
    majority = [max(np.mean(kinds[data.client_rows(c)] == k) for k in (0, 1)) for c in range(30)]
    assert np.mean(majority) > 0.85  # alpha 0.05: clients hold (almost) one label each
    ids, labels, dropped = reader.client(0, data.client_rows(0))
    assert ids.shape == (len(data.client_rows(0)), 32) and dropped == 0
    assert ((labels[:, 1:] != -100).sum(axis=1) > 0).all()  # every row keeps response tokens to learn from


def test_parquet_iid_and_column_errors(tmp_path, model_dir):
    path = _write(tmp_path, ROWS, "data.parquet")
    data = prepare_data(_scenario(**{"data.source": path, "data.partition": "iid", "data.eval_samples": 20,
                                     "population.num_clients": 10}), model_dir, log=lambda _: None)
    assert data.sizes.sum() == len(data.rows) and data.labels == ("",)
    with pytest.raises(ConfigError) as err:
        prepare_data(_scenario(**{"data.source": path, "data.prompt_field": "question", "data.eval_samples": 20}),
                     model_dir, log=lambda _: None)
    assert err.value.path == "data.prompt_field" and "'question' not in" in str(err.value)
    with pytest.raises(ConfigError, match="data.eval_samples"):
        prepare_data(_scenario(**{"data.source": path, "data.partition": "iid", "data.eval_samples": 500}),
                     model_dir, log=lambda _: None)


def test_natural_partition_gives_one_client_per_user(tmp_path, model_dir):
    s = _scenario(**{"data.source": _write(tmp_path, ROWS), "data.partition": "natural", "data.user_field": "who",
                     "data.eval_samples": 50, "population.num_clients": 25, "server.clients_per_round": 5})
    data = prepare_data(s, model_dir, log=lambda _: None)
    users = np.load(f"{data.spec.train_path}/../user.npy")
    assert data.sizes.sum() == 350 and len(data.sizes) == 25
    for c in range(25):
        assert len(set(users[data.client_rows(c)])) == 1  # one user's rows, all of them
    assert sorted({int(users[data.client_rows(c)][0]) for c in range(25)}) == list(range(25))


def test_a_cached_table_is_checked_for_the_columns_each_run_needs(tmp_path, model_dir):
    """An iid run caches a file without a label column; a Dirichlet run on the same file (a cache hit) must
    still say the column is missing instead of partitioning over one label."""
    path = _write(tmp_path, [{k: v for k, v in r.items() if k != "kind"} for r in ROWS])
    prepare_data(_scenario(**{"data.source": path, "data.partition": "iid", "data.eval_samples": 20}), model_dir,
                 log=lambda _: None)
    with pytest.raises(ConfigError, match="data.label_field: column 'kind' not in"):
        prepare_data(_scenario(**{"data.source": path, "data.label_field": "kind", "data.eval_samples": 20}),
                     model_dir, log=lambda _: None)


def test_tokenized_cache_follows_the_files_contents(tmp_path, model_dir):
    """An edited file (same name) must not reuse the stale tokens of its previous contents."""
    path = _write(tmp_path, ROWS)
    s = _scenario(**{"data.source": path, "data.partition": "iid", "data.eval_samples": 20})
    before = prepare_data(s, model_dir, log=lambda _: None)
    _write(tmp_path, [{**r, "a": r["a"] + " exactly"} for r in ROWS])
    after = prepare_data(s, model_dir, log=lambda _: None)
    assert before.spec.train_path != after.spec.train_path
    tok = DataReader(after.spec).tokenizer
    row = datasets.load_from_disk(after.spec.train_path)[0]
    assert "exactly" in tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


def test_rows_without_a_response_token_are_dropped_with_a_count(tmp_path, model_dir):
    """A prompt that fills seq_len leaves no target token: such a row would give a NaN loss."""
    long = [{"q": "Please " * 40 + f"add {i} and {i}.", "a": str(2 * i)} for i in range(100)]
    path = _write(tmp_path, ROWS[:200] + long)
    logged = []
    data = prepare_data(_scenario(**{"data.source": path, "data.partition": "iid", "data.eval_samples": 20}),
                        model_dir, log=logged.append)
    assert data.dropped_rows == 100 and any("100 rows" in m and "dropped" in m for m in logged)
    assert json.loads(open(f"{data.spec.train_path}/../meta.json").read())["rows"] == 200


def test_synthetic_rows_exist_only_for_the_client_asked_and_are_repeatable(model_dir):
    s = load({}, {"population.num_clients": 1_000_000})
    data = prepare_data(s, model_dir, log=lambda _: None)
    assert data.rows is None and len(data.sizes) == 1_000_000
    rows = data.client_rows(987_654)
    assert len(rows) == data.sizes[987_654] and np.array_equal(rows, data.client_rows(987_654))
    a, b = DataReader(data.spec), DataReader(data.spec)
    ids_a, lab_a, _ = a.client(987_654, rows)
    ids_b, lab_b, _ = b.client(987_654, rows)
    assert np.array_equal(ids_a, ids_b) and np.array_equal(lab_a, lab_b)
    assert not np.array_equal(ids_a[:1], a.client(987_653, rows)[0][:1])  # another client, other rows
    ev_ids, ev_lab = a.eval_set()
    assert len(ev_ids) == s.data.eval_samples and (ev_lab[:, 1:] != -100).any(axis=1).all()


def test_base_model_builds_from_an_empty_cache(tmp_path, monkeypatch):
    """The tiny base model build path (a warm developer cache would otherwise never exercise it)."""
    import math

    from transformers import AutoModelForCausalLM

    from fedsim.scenario.schema import ModelConfig

    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    path = ensure_base_model(ModelConfig(pretrain_steps=3), log=lambda _: None)
    assert path.parent == tmp_path / "models" and (path / "tokenizer.json").is_file()
    recipe = json.loads((path / "fedsim_recipe.json").read_text())
    assert recipe["steps"] == 3 and math.isfinite(recipe["final_loss"])
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == 512 and model.config.num_hidden_layers == 3
    assert ensure_base_model(ModelConfig(pretrain_steps=3)) == path  # cached: not rebuilt
