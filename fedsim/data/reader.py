"""The worker's side of the data: materialize ONE client's tokenized rows when it is trained, and the eval set.

Synthetic rows are generated from the client's own seeded stream and tokenized here (a few dozen rows: about a
millisecond); table rows are read by id from the memory-mapped Arrow cache (`datasets.load_from_disk` maps the
files, so every worker of a node shares the same pages and none holds the whole train set).
"""

from __future__ import annotations

import numpy as np

from fedsim.data import synthetic
from fedsim.data.prepare import DataSpec, has_target, tokenize_batch
from fedsim.rng import stream


class DataReader:
    """Opens a `DataSpec` once per worker process; `client()` returns one client's arrays."""

    def __init__(self, spec: DataSpec):
        from transformers import AutoTokenizer

        self.spec = spec
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model_dir)
        self._train = None
        if spec.kind == "table":
            import datasets

            self._train = datasets.load_from_disk(spec.train_path).with_format("numpy", columns=["input_ids",
                                                                                                  "labels"])

    def _tokenize(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """(input_ids, labels, rows dropped): rows without a response token within seq_len are dropped."""
        out = tokenize_batch({"p": prompts, "r": responses}, self.tokenizer, self.spec.seq_len, "p", "r")
        ids = np.asarray(out["input_ids"], dtype=np.int32).reshape(len(prompts), self.spec.seq_len)
        labels = np.asarray(out["labels"], dtype=np.int32).reshape(len(prompts), self.spec.seq_len)
        keep = has_target(labels) if len(prompts) else np.zeros(0, bool)
        return ids[keep], labels[keep], int(len(prompts) - keep.sum())

    def client(self, client: int, rows: np.ndarray, holdout: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
        """(input_ids, labels, rows dropped) of one client; `rows` as `ClientData.client_rows` gave them.

        Synthetic: row j is example j of the client's stream (seed, "synthetic-client", client) in the family
        `rows[j]`, so the same client gets the same rows on any worker. Rows without a response token within
        seq_len are dropped (counted). `holdout` > 0 (personalised evaluation): a table client trains without
        the last share of its rows, which `heldout` returns (synthetic held-out rows are fresh draws).
        """
        if self._train is not None:
            rows = self._split(client, rows, holdout)[0]
            batch = self._train[np.asarray(rows, dtype=np.int64)]
            ids = np.asarray(batch["input_ids"], dtype=np.int32).reshape(len(rows), self.spec.seq_len)
            return ids, np.asarray(batch["labels"], dtype=np.int32).reshape(ids.shape), 0
        return self._examples(stream(self.spec.seed, "synthetic-client", client), rows)

    def _split(self, client: int, rows: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, held-out rows) of a table client: a seeded random share held out (a client's rows come
        in label blocks, so the last ones would be one label)."""
        rows = np.asarray(rows)
        n = _held(len(rows), holdout)
        if n == 0:
            return rows, rows[:0]
        out = np.zeros(len(rows), bool)
        out[stream(self.spec.seed, "heldout", client).permutation(len(rows))[:n]] = True
        return rows[~out], rows[out]

    def heldout(self, client: int, rows: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
        """One client's own held-out rows: a seeded share of its table rows (never trained on), or, synthetic,
        as many fresh examples of its own task mix from a separate stream (seed, "synthetic-heldout", client)."""
        if self._train is not None:
            ids, labels, _ = self.client(client, self._split(client, rows, holdout)[1])
            return ids, labels
        rng = stream(self.spec.seed, "synthetic-heldout", client)
        ids, labels, _ = self._examples(rng, np.asarray(rows)[rng.permutation(len(rows))[:_held(len(rows), holdout)]])
        return ids, labels

    def _examples(self, rng: np.random.Generator, families) -> tuple[np.ndarray, np.ndarray, int]:
        """One synthetic example per family code, drawn from `rng` in order, tokenized."""
        pairs = [synthetic.make_example(synthetic.FAMILIES[int(f)], rng) for f in families]
        return self._tokenize([p for p, _ in pairs], [r for _, r in pairs])

    def eval_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out eval set (synthetic: an even share of every task family from the "eval" streams)."""
        if self.spec.kind == "table":
            ids, labels, _ = self.client(-1, np.asarray(self.spec.eval_rows, dtype=np.int64))
            return ids, labels
        ids, labels, _ = self._tokenize(*self._eval_columns()[:2])
        return ids, labels

    def _eval_columns(self) -> tuple[list, list, list]:
        """Synthetic eval prompts, responses and task families (an even share of every family)."""
        each = -(-self.spec.eval_samples // len(synthetic.FAMILIES))
        cols = synthetic.generate({f: each for f in synthetic.FAMILIES}, self.spec.seed, "eval")
        n = self.spec.eval_samples
        return cols["prompt"][:n], cols["response"][:n], cols["task"][:n]

    def eval_tasks(self) -> np.ndarray | None:
        """The task family of each `eval_set` row (synthetic data; None for a table)."""
        if self.spec.kind == "table":
            return None
        prompts, responses, tasks = self._eval_columns()
        out = tokenize_batch({"p": prompts, "r": responses}, self.tokenizer, self.spec.seq_len, "p", "r")
        return np.asarray(tasks, dtype=object)[has_target(out["labels"])]


def _held(n: int, share: float) -> int:
    """Rows of n held out at `share` (at least one when holding out at all, never all of them)."""
    return 0 if share <= 0 or n < 2 else min(n - 1, max(1, int(round(share * n))))
