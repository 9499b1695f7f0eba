"""A procedurally generated multi-task instruction dataset (offline, seeded).

Seven task families with prompt/response pairs that a small model can learn from a few thousand examples:
arithmetic, word reversal, upper-casing, sorting, letter counting, a fixed fictional capital-city table
(memorisation) and a word-list sentiment rule. Words are pseudo-words built from syllables so the corpus needs
no word list or download. `pretraining_text` gives generic sentences over the same vocabulary, used to
pre-train the tiny base model before federated instruction tuning.
"""

from __future__ import annotations

import numpy as np

from fedsim.rng import stream

FAMILIES = ("add", "reverse", "upper", "sort", "count", "capital", "sentiment")
_SYL = ("ka", "lo", "mi", "ne", "ru", "ta", "po", "si", "da", "fe", "gu", "hi", "jo", "ba", "ve", "zo", "ri", "mu")
_POS = ("bright", "calm", "happy", "kind", "warm", "sweet", "brave", "clean")
_NEG = ("dark", "cold", "angry", "rude", "sad", "dirty", "weak", "bitter")


def _words(n: int, seed: int) -> list[str]:
    rng = stream(seed, "synthetic-words")
    out: set[str] = set()
    while len(out) < n:
        k = int(rng.integers(2, 4))
        out.add("".join(_SYL[i] for i in rng.integers(0, len(_SYL), k)))
    return sorted(out)


WORDS = _words(240, 0)
COUNTRIES = WORDS[:40]
CAPITALS = {c: WORDS[200 + i % 40] for i, c in enumerate(COUNTRIES)}


def make_example(family: str, rng: np.random.Generator) -> tuple[str, str]:
    """One (prompt, response) pair of a task family."""
    w = WORDS[int(rng.integers(40, 200))]
    if family == "add":
        a, b = (int(x) for x in rng.integers(0, 100, 2))
        return f"Add {a} and {b}.", str(a + b)
    if family == "reverse":
        return f"Reverse the word {w}.", w[::-1]
    if family == "upper":
        phrase = " ".join(WORDS[int(i)] for i in rng.integers(40, 200, 2))
        return f"Uppercase: {phrase}", phrase.upper()
    if family == "sort":
        nums = [int(x) for x in rng.integers(0, 50, 4)]
        return f"Sort: {' '.join(map(str, nums))}", " ".join(map(str, sorted(nums)))
    if family == "count":
        return f"How many letters in {w}?", str(len(w))
    if family == "capital":
        c = COUNTRIES[int(rng.integers(0, len(COUNTRIES)))]
        return f"What is the capital of {c}?", CAPITALS[c]
    if family == "sentiment":
        pos = int(rng.integers(0, 4))
        words = list(rng.choice(_POS, pos)) + list(rng.choice(_NEG, 3 - pos))
        rng.shuffle(words)
        return f"Sentiment of: {' '.join(words)}", "positive" if pos >= 2 else "negative"
    raise ValueError(f"unknown task family {family!r}")


def generate(counts: dict[str, int], seed: int, name: str = "train") -> dict[str, list]:
    """Columns prompt/response/task with counts[family] rows per family, deterministic in (seed, name)."""
    cols: dict[str, list] = {"prompt": [], "response": [], "task": []}
    for fam, n in counts.items():
        rng = stream(seed, f"synthetic-{name}", FAMILIES.index(fam))
        for _ in range(int(n)):
            p, r = make_example(fam, rng)
            cols["prompt"].append(p)
            cols["response"].append(r)
            cols["task"].append(fam)
    return cols


def pretraining_text(n: int, seed: int = 0) -> list[str]:
    """Generic sentences over the corpus vocabulary and digits (no task formats), for base pre-training."""
    rng = stream(seed, "pretraining-text")
    lines = []
    for _ in range(n):
        k = int(rng.integers(4, 10))
        toks = [WORDS[int(i)] if rng.random() < 0.8 else str(int(rng.integers(0, 100))) for i in rng.integers(0, 240, k)]
        if rng.random() < 0.3:
            toks = [t.upper() for t in toks[:2]] + toks[2:]
        lines.append(" ".join(toks).capitalize() + rng.choice([".", "?", "!", ":"]))
    return lines
