"""Data preparation from local files: tokenization once, partition by label, clear errors for bad columns."""

import json

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from fedsim.data.prepare import prepare
from fedsim.errors import ConfigError
from fedsim.models.base import ensure_base_model
from fedsim.scenario import load


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_base_model(load({}).model))


def _write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    if name.endswith(".parquet"):
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [{"q": f"Add {i} and {i}.", "a": str(2 * i), "kind": "even" if i % 2 == 0 else "odd"} for i in range(400)]


def test_jsonl_dirichlet_by_label(tmp_path, tokenizer):
    cfg = load({}, {"data.source": _write(tmp_path, ROWS), "data.prompt_field": "q", "data.response_field": "a",
                    "data.label_field": "kind", "data.dirichlet_alpha": 0.05, "data.eval_samples": 40}).data
    prep = prepare(cfg, 30, 0, tokenizer, 32, "tok")
    assert prep.labels == ("even", "odd")
    train = datasets.load_from_disk(prep.train_path).with_format("numpy")[:]
    evals = datasets.load_from_disk(prep.eval_path)
    assert len(evals) == 40 and train["input_ids"].shape[1] == 32
    assert ((train["labels"] != -100).sum(axis=1) > 0).all()  # every row keeps response tokens to learn from
    kinds = np.asarray(train["label"])
    majority = [max(np.mean(kinds[prep.client_rows(c)] == k) for k in ("even", "odd")) for c in range(30)]
    assert np.mean(majority) > 0.85  # alpha 0.05: clients hold (almost) one label each
    assert set(kinds) == {"even", "odd"}


def test_parquet_iid_and_column_errors(tmp_path, tokenizer):
    path = _write(tmp_path, ROWS, "data.parquet")
    cfg = load({}, {"data.source": path, "data.prompt_field": "q", "data.response_field": "a",
                    "data.partition": "iid", "data.eval_samples": 20}).data
    prep = prepare(cfg, 10, 0, tokenizer, 32, "tok")
    assert prep.sizes.sum() == len(prep.rows) and prep.labels == ("",)
    bad = load({}, {"data.source": path, "data.prompt_field": "question", "data.eval_samples": 20}).data
    with pytest.raises(ConfigError) as err:
        prepare(bad, 10, 0, tokenizer, 32, "tok")
    assert err.value.path == "data.prompt_field" and "'question' not in" in str(err.value)
    few = load({}, {"data.source": path, "data.prompt_field": "q", "data.response_field": "a",
                    "data.partition": "iid", "data.eval_samples": 500}).data
    with pytest.raises(ConfigError, match="data.eval_samples"):
        prepare(few, 10, 0, tokenizer, 32, "tok")


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
