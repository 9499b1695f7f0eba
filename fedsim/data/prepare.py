"""The run's data as the driver sees it: client sizes and, per client, the rows a task carries (never the data).

Two kinds of source:

* **synthetic** — nothing is generated up front. A client's label counts come from its own seeded stream
  (`partition.client_label_counts`) and its rows (prompts and responses) are generated and tokenized by the
  worker that trains it (`fedsim.data.reader`), so a million-client population costs its size array only.
* **table** (a .json/.jsonl/.parquet file or a hub dataset) — tokenized once per (file contents, tokenizer,
  seq_len, fields) into an Arrow cache (`datasets.save_to_disk`) that every worker of a node memory-maps, plus
  small numpy arrays of each row's label and user codes; the partition is computed from those arrays
  (vectorized) and a task carries its client's row ids.

Rows whose prompt leaves no room for a response token within `seq_len` would give a NaN loss; they are dropped
at tokenization (the count is logged).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from fedsim.atomic import atomic_write_text
from fedsim.data import partition, synthetic
from fedsim.errors import ConfigError
from fedsim.paths import cache_dir, digest
from fedsim.rng import stream
from fedsim.scenario.schema import DataConfig, Scenario

TEMPLATE = "Q: {prompt}\nA: "
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model")


@dataclass(frozen=True)
class DataSpec:
    """What a worker needs to open the data (small and picklable; see `fedsim.data.reader`)."""

    kind: str  # "synthetic" | "table"
    seed: int
    seq_len: int
    model_dir: str  # tokenizer
    eval_samples: int
    train_path: str | None = None  # table: the tokenized rows (an Arrow dataset every worker memory-maps)
    eval_rows: tuple[int, ...] = ()  # table: the held-out rows


@dataclass(frozen=True, eq=False)
class ClientData:
    """Sizes of every client and the rows of any one client (computed when it is asked for)."""

    spec: DataSpec
    cfg: DataConfig
    sizes: np.ndarray  # samples per client (int64, one entry per client)
    labels: tuple[str, ...]
    offsets: np.ndarray | None = None  # table: client i owns rows[offsets[i]:offsets[i+1]]
    rows: np.ndarray | None = None
    reuse: float = 1.0  # > 1 when the source had fewer rows than the clients' sizes ask for
    dropped_rows: int = 0  # rows without a response token within seq_len (never trained on)

    def client_rows(self, client: int) -> np.ndarray:
        """Row ids of one client (table), or the task family code of each of its rows (synthetic)."""
        if self.rows is not None:
            return self.rows[self.offsets[client] : self.offsets[client + 1]]
        prior = np.full(len(synthetic.FAMILIES), 1.0 / len(synthetic.FAMILIES))
        counts = partition.client_label_counts(self.cfg, int(self.sizes[client]), prior, self.spec.seed, client)
        return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


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


def has_target(labels) -> np.ndarray:
    """Rows with at least one response token the loss can see (the causal LM loss shifts labels by one)."""
    return (np.asarray(labels)[:, 1:] != -100).any(axis=1)


def prepare_data(s: Scenario, model_dir: str, log=print) -> ClientData:
    """The scenario's data: synthetic (on demand) or a tokenized table (cached by contents) split into a
    held-out eval set and a train pool, partitioned over the clients (vectorized)."""
    cfg, n = s.data, s.population.num_clients
    spec = DataSpec("synthetic", s.seed, s.training.seq_len, str(model_dir), cfg.eval_samples)
    if cfg.source == "synthetic":
        if cfg.partition == "natural":
            raise ConfigError("data.partition", "natural needs a data.source with a user column, not synthetic")
        return ClientData(spec, cfg, partition.client_sizes(cfg, n, s.seed), synthetic.FAMILIES)
    root = _tokenized_table(cfg, s.training.seq_len, str(model_dir), log)
    meta = json.loads((root / "meta.json").read_text())
    _check_columns(cfg, meta["columns"])  # also on a cache hit: the cache holds whatever columns the file has
    if meta["dropped"]:
        log(f"[yellow]{meta['dropped']} rows of {cfg.source} have no response token within training.seq_len="
            f"{s.training.seq_len}: dropped")
    usable = meta["rows"]
    if usable <= cfg.eval_samples:
        raise ConfigError("data.eval_samples", f"{cfg.eval_samples} >= the {usable} usable rows of {cfg.source}"
                                               f" ({meta['dropped']} have no response token within seq_len)")
    perm = stream(s.seed, "eval-split").permutation(usable)
    eval_rows, train = np.sort(perm[: cfg.eval_samples]), np.sort(perm[cfg.eval_samples :])
    spec = dataclasses.replace(spec, kind="table", train_path=str(root / "rows"), eval_rows=tuple(eval_rows.tolist()))
    if cfg.partition == "natural":
        users = np.unique(np.load(root / "user.npy")[train], return_inverse=True)[1]
        offsets, local = partition.natural(users, n, s.seed, "user_field")
        return ClientData(spec, cfg, np.diff(offsets), ("",), offsets, train[local], 1.0, meta["dropped"])
    codes = np.load(root / "label.npy")[train]
    labels = tuple(meta["labels"]) if cfg.partition == "dirichlet" else ("",)
    if cfg.partition == "iid":
        codes = np.zeros_like(codes)
    sizes = partition.client_sizes(cfg, n, s.seed)
    counts = partition.label_counts(cfg, sizes, np.bincount(codes, minlength=len(labels)), s.seed)
    pools = [train[codes == i] for i in range(len(labels))]
    offsets, rows, reuse = partition.assign_rows(counts, pools, s.seed)
    if reuse > 1:
        log(f"[yellow]data.source has fewer rows than the clients ask for: rows reused up to {reuse:.1f}x")
    return ClientData(spec, cfg, sizes, labels, offsets, rows, reuse, meta["dropped"])


def file_digest(path: str) -> str:
    """Hash of a file's contents (the tokenized cache follows edits, not names). Remembered per (path, size,
    mtime, inode), so an unchanged file is not read again at every start."""
    st = Path(path).stat()
    memo = cache_dir("digests") / digest([str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino])
    if memo.is_file():
        return memo.read_text()
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    atomic_write_text(memo, h.hexdigest())
    return h.hexdigest()


def _tokenizer_digest(model_dir: str) -> str:
    d = Path(model_dir)
    return digest([file_digest(str(d / f)) for f in TOKENIZER_FILES if (d / f).is_file()])


def _needed_columns(cfg: DataConfig) -> dict[str, str]:
    needed = {"prompt_field": cfg.prompt_field, "response_field": cfg.response_field}
    if cfg.partition == "dirichlet":
        needed["label_field"] = cfg.label_field
    if cfg.partition == "natural":
        needed["user_field"] = cfg.user_field
    return needed


def _check_columns(cfg: DataConfig, columns: list[str]) -> None:
    for key, col in _needed_columns(cfg).items():
        if col not in columns:
            have = ", ".join(columns) or "none"
            raise ConfigError(f"data.{key}", f"column {col!r} not in {cfg.source} (columns: {have})")


def _load_source(cfg: DataConfig):
    import datasets

    from fedsim.logs import quiet_libraries

    quiet_libraries()  # no progress bars: a bad file must end in one line
    src = cfg.source
    kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(Path(src).suffix)
    if kind and Path(src).stat().st_size == 0:
        raise ConfigError("data.source", f"{src} is empty")
    try:
        ds = datasets.load_dataset(kind, data_files=src, split="train") if kind else \
            datasets.load_dataset(src, split=cfg.split)
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise ConfigError("data.source", f"cannot load {src!r}: {str(exc).splitlines()[0]}") from None
    _check_columns(cfg, ds.column_names)
    if len(ds) == 0:
        raise ConfigError("data.source", f"{src} has no rows")
    return ds


def _codes(values: list) -> tuple[np.ndarray, list[str]]:
    names, codes = np.unique(np.array([str(v) for v in values], dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int32), [str(x) for x in names]


def _tokenized_table(cfg: DataConfig, seq_len: int, model_dir: str, log) -> Path:
    """Tokenize a file or hub dataset once into the cache; the key covers its contents (not only its name),
    the tokenizer, seq_len and the columns read, not the seed or the split (made per run from the cache)."""
    src = cfg.source
    content = file_digest(src) if Path(src).is_file() else f"{src}:{cfg.split}"
    key = digest({"content": content, "tok": _tokenizer_digest(model_dir), "seq": seq_len,
                  "fields": [cfg.prompt_field, cfg.response_field, cfg.label_field, cfg.user_field], "v": 4})
    root = cache_dir("data") / key
    with FileLock(str(root) + ".lock"):
        if not (root / "meta.json").is_file():
            log(f"tokenizing {src} (once; cached by its contents) ...")
            _build_table(cfg, seq_len, model_dir, root)
    return root


def _build_table(cfg: DataConfig, seq_len: int, model_dir: str, root: Path) -> None:
    from transformers import AutoTokenizer

    ds = _load_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fn = dict(tokenizer=tokenizer, seq_len=seq_len, prompt_field=cfg.prompt_field, response_field=cfg.response_field)
    tok = ds.map(tokenize_batch, batched=True, fn_kwargs=fn, remove_columns=ds.column_names)
    keep = np.flatnonzero(has_target(np.asarray(tok["labels"])))
    label_codes, label_names = _codes(ds[cfg.label_field] if cfg.label_field in ds.column_names else [""] * len(ds))
    user_codes, _ = _codes(ds[cfg.user_field] if cfg.user_field in ds.column_names else [""] * len(ds))
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a build that crashed half-way
    tok.select(keep).save_to_disk(str(tmp / "rows"))
    np.save(tmp / "label.npy", label_codes[keep])
    np.save(tmp / "user.npy", user_codes[keep].astype(np.int64))
    (tmp / "meta.json").write_text(json.dumps({"labels": label_names, "dropped": int(len(ds) - len(keep)),
                                               "rows": int(len(keep)), "columns": ds.column_names,
                                               "source": cfg.source}))
    tmp.rename(root)
