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
            rows = np.asarray(rows)[: len(rows) - _held(len(rows), holdout)]
            batch = self._train[np.asarray(rows, dtype=np.int64)]
            ids = np.asarray(batch["input_ids"], dtype=np.int32).reshape(len(rows), self.spec.seq_len)
            return ids, np.asarray(batch["labels"], dtype=np.int32).reshape(ids.shape), 0
        rng = stream(self.spec.seed, "synthetic-client", client)
        pairs = [synthetic.make_example(synthetic.FAMILIES[int(f)], rng) for f in rows]
        return self._tokenize([p for p, _ in pairs], [r for _, r in pairs])

    def heldout(self, client: int, rows: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
        """One client's own held-out rows: the last share of its table rows, or, synthetic, as many fresh
        examples of its own task mix from a separate stream (seed, "synthetic-heldout", client)."""
        n = _held(len(rows), holdout)
        if self._train is not None:
            ids, labels, _ = self.client(client, np.asarray(rows)[len(rows) - n:])
            return ids, labels
        rng = stream(self.spec.seed, "synthetic-heldout", client)
        families = np.asarray(rows)[rng.permutation(len(rows))[:n]]
        pairs = [synthetic.make_example(synthetic.FAMILIES[int(f)], rng) for f in families]
        ids, labels, _ = self._tokenize([p for p, _ in pairs], [r for _, r in pairs])
        return ids, labels

    def eval_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out eval set (synthetic: an even share of every task family from the "eval" streams)."""
        if self.spec.kind == "table":
            ids, labels, _ = self.client(-1, np.asarray(self.spec.eval_rows, dtype=np.int64))
            return ids, labels
        each = -(-self.spec.eval_samples // len(synthetic.FAMILIES))
        cols = synthetic.generate({f: each for f in synthetic.FAMILIES}, self.spec.seed, "eval")
        ids, labels, _ = self._tokenize(cols["prompt"][: self.spec.eval_samples],
                                        cols["response"][: self.spec.eval_samples])
        return ids, labels


def _held(n: int, share: float) -> int:
    """Rows of n held out at `share` (at least one when holding out at all, never all of them)."""
    return 0 if share <= 0 or n < 2 else min(n - 1, max(1, int(round(share * n))))
