"""Build the run's data once: load or generate samples, partition them across clients, tokenize, cache.

The result is two tokenized `datasets` on disk (train pool and held-out eval set; fixed-length `input_ids`
and `labels` with the prompt masked out, and each row's `label`: task family or label column) plus a CSR
partition (client -> rows). Workers memory-map the
datasets; a task carries only its client's row ids. Tokenization happens here, once, never per round.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from fedsim.data import partition, synthetic
from fedsim.errors import ConfigError
from fedsim.paths import cache_dir, digest
from fedsim.scenario.schema import DataConfig

TEMPLATE = "Q: {prompt}\nA: "


@dataclass(frozen=True)
class PreparedData:
    """Where the tokenized data lives and which rows belong to which client."""

    train_path: str
    eval_path: str
    offsets: np.ndarray  # client i owns rows[offsets[i]:offsets[i+1]]
    rows: np.ndarray
    labels: tuple[str, ...]
    reuse: float  # > 1 when the source had fewer rows than the clients' sizes ask for

    def client_rows(self, client: int) -> np.ndarray:
        """Row ids (into the train dataset) of one client."""
        return self.rows[self.offsets[client] : self.offsets[client + 1]]

    @property
    def sizes(self) -> np.ndarray:
        """Samples per client."""
        return np.diff(self.offsets)


def tokenize_batch(batch: dict, tokenizer, seq_len: int, prompt_field: str, response_field: str) -> dict:
    """Prompt + response + EOS, padded/truncated to seq_len; labels are -100 on prompt and padding."""
    prompts = tokenizer([TEMPLATE.format(prompt=p) for p in batch[prompt_field]], add_special_tokens=False)
    answers = tokenizer([str(r) + tokenizer.eos_token for r in batch[response_field]], add_special_tokens=False)
    pad = tokenizer.pad_token_id
    ids_out, lab_out = [], []
    for p, a in zip(prompts["input_ids"], answers["input_ids"]):
        ids = (p + a)[:seq_len]
        lab = ([-100] * len(p) + a)[:seq_len]
        fill = seq_len - len(ids)
        ids_out.append(ids + [pad] * fill)
        lab_out.append(lab + [-100] * fill)
    return {"input_ids": ids_out, "labels": lab_out}


def _load_source(cfg: DataConfig):
    import datasets

    src = cfg.source
    kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(Path(src).suffix)
    try:
        ds = datasets.load_dataset(kind, data_files=src, split="train") if kind else datasets.load_dataset(src, split=cfg.split)
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise ConfigError("data.source", f"cannot load {src!r}: {str(exc).splitlines()[0]}") from None
    needed = [cfg.prompt_field, cfg.response_field] + ([cfg.label_field] if cfg.partition == "dirichlet" else [])
    for key, col in zip(("prompt_field", "response_field", "label_field"), needed):
        if col not in ds.column_names:
            raise ConfigError(f"data.{key}", f"column {col!r} not in {src} (columns: {', '.join(ds.column_names)})")
    return ds


def prepare(cfg: DataConfig, num_clients: int, seed: int, tokenizer, seq_len: int, tok_id: str) -> PreparedData:
    """Sizes -> label counts -> rows per client -> tokenized train/eval datasets (cached by content key)."""
    import datasets

    sizes = partition.client_sizes(cfg, num_clients, seed)
    key = digest({"cfg": dataclasses.asdict(cfg), "n": num_clients, "seed": seed, "seq": seq_len, "tok": tok_id,
                  "v": 2})
    root = cache_dir("data") / key
    if cfg.source == "synthetic":
        labels = synthetic.FAMILIES
        counts = partition.label_counts(cfg, sizes, len(labels), seed)
        per_label = counts.sum(axis=0)
        starts = np.concatenate([[0], np.cumsum(per_label)])
        pools = [np.arange(starts[i], starts[i + 1]) for i in range(len(labels))]

        def build():
            train = datasets.Dataset.from_dict(synthetic.generate(dict(zip(labels, per_label.tolist())), seed))
            each = -(-cfg.eval_samples // len(labels))
            evals = datasets.Dataset.from_dict(synthetic.generate({f: each for f in labels}, seed, "eval"))
            return train, evals.select(range(cfg.eval_samples))
    else:
        ds = _load_source(cfg)
        perm = np.random.default_rng(seed).permutation(len(ds))
        if len(ds) <= cfg.eval_samples:
            raise ConfigError("data.eval_samples", f"{cfg.eval_samples} >= the {len(ds)} rows of {cfg.source}")
        eval_idx, train_idx = perm[: cfg.eval_samples], np.sort(perm[cfg.eval_samples :])
        train_raw = ds.select(train_idx)
        col = train_raw[cfg.label_field] if cfg.partition == "dirichlet" else [""] * len(train_raw)
        labels = tuple(sorted({str(v) for v in col}))
        lab_arr = np.array([labels.index(str(v)) for v in col])
        pools = [np.flatnonzero(lab_arr == i) for i in range(len(labels))]
        counts = partition.label_counts(cfg, sizes, len(labels), seed)

        def build():
            return train_raw, ds.select(eval_idx)

    offsets, rows, reuse = partition.assign_rows(counts, pools, seed)
    with FileLock(str(root) + ".lock"):
        if not (root / "eval" / "dataset_info.json").is_file():
            synthetic_src = cfg.source == "synthetic"
            fn_kwargs = dict(tokenizer=tokenizer, seq_len=seq_len,
                             prompt_field="prompt" if synthetic_src else cfg.prompt_field,
                             response_field="response" if synthetic_src else cfg.response_field)
            label = "task" if synthetic_src else cfg.label_field
            for name, part in zip(("train", "eval"), build()):
                tok = part.map(tokenize_batch, batched=True, fn_kwargs=fn_kwargs, remove_columns=part.column_names)
                kinds = [str(v) for v in part[label]] if label in part.column_names else [""] * len(part)
                tok.add_column("label", kinds).save_to_disk(str(root / name))
    return PreparedData(str(root / "train"), str(root / "eval"), offsets, rows, tuple(labels), reuse)
