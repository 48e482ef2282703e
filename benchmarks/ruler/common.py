"""Shared pieces of the RULER generators: token counting, sizing searches, the essay haystack,
sentence splitting and the output record.

Sizing follows the reference: estimate tokens per haystack unit from one sample, binary-search
the largest haystack whose prompt (task template + answer prefix) plus ``tokens_to_generate``
fits ``max_seq_length``, then regenerate each sample and shrink it by the family's increment
while it overflows. Tokens are counted without special tokens, as RULER's HF tokenizer wrapper
(``tokenizer.tokenize``) does.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np


class TooShort(ValueError):
    """``max_seq_length`` cannot hold even the smallest prompt of a task."""


@dataclass
class Context:
    """What a family generator needs: the length budget, the prompt template and the RNGs.

    ``rng`` plays the reference's global ``random`` and ``np_rng`` its global ``np.random``, both
    seeded with ``seed``; ``seed`` itself also drives the fixed-seed shuffles
    (``random.Random(seed).shuffle``) the reference applies to needles, word lists and documents.
    """

    count: Callable[[str], int]
    max_seq_length: int
    tokens_to_generate: int
    template: str       # task template + answer prefix (in the model template, if any)
    answer_prefix: str  # the family's unformatted answer prefix (its first 10 chars split it off)
    seed: int
    split: Callable[[str], list[str]] | None = None   # essay sentences (None: split_sentences)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.np_rng = np.random.RandomState(self.seed)

    def fits(self, text: str, extra_tokens: int = 0) -> bool:
        return self.count(text) + extra_tokens + self.tokens_to_generate <= self.max_seq_length


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Count tokens without special tokens, for an HF tokenizer or a ``tokenizers.Tokenizer``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        Tokenizer = ()
    if isinstance(tokenizer, Tokenizer):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def binary_search(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """Largest n in [low, high] with fits(n) (fits assumed monotone), or None."""
    best = None
    while low <= high:
        mid = (low + high) // 2
        if fits(mid):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best


def search_size(fits: Callable[[int], bool], step: int, upper: int, lowest: int = 1) -> int:
    """The reference's binary search over [step, upper]; if nothing there fits (a
    ``max_seq_length`` below what RULER was written for: the reference then loops forever), search
    [lowest, step) as well, and raise ``TooShort`` if even ``lowest`` does not fit."""
    size = binary_search(fits, step, max(upper, step))
    if size is None and lowest < step:
        size = binary_search(fits, lowest, step - 1)
    if size is None:
        raise TooShort(f"even the smallest haystack ({lowest}) overflows max_seq_length")
    return size


def fit_sample(make: Callable[[int], tuple], fits: Callable[[str], bool], size: int,
               step: int, lowest: int = 1) -> tuple:
    """Regenerate ``make(size)`` until it fits, shrinking by ``step`` (by 1 once at or below
    ``step``, where the reference would spin). Returns make's tuple."""
    while True:
        out = make(size)
        if fits(out[0]):
            return out
        if size > step:
            size -= step
        elif size > lowest:
            size -= 1
        else:
            raise TooShort(f"a sample of the smallest haystack ({lowest}) overflows")


def split_answer_prefix(text: str, answer_prefix: str) -> tuple[str, str]:
    """Split the prompt at the last occurrence of the answer prefix's first 10 characters, as
    the reference does: returns (input, answer_prefix)."""
    cut = text.rfind(answer_prefix[:10])
    return text[:cut], text[cut:]


def record(index: int, task: str, text: str, outputs: list[str], ctx: Context) -> dict:
    """One sample in the reference's jsonl shape plus our bookkeeping fields.

    ``length`` is the reference's: prompt tokens (incl. answer prefix) + tokens_to_generate.
    The model is given ``input + answer_prefix`` (RULER's ``call_api.py``)."""
    inp, prefix = split_answer_prefix(text, ctx.answer_prefix)
    return {
        "index": index,
        "task": task,
        "input": inp,
        "answer_prefix": prefix,
        "outputs": list(outputs),
        "length": ctx.count(text) + ctx.tokens_to_generate,
        "max_length": ctx.max_seq_length,
        "max_new_tokens": ctx.tokens_to_generate,
    }


# ---------------------------------------------------------------- essay haystack


@lru_cache(maxsize=2)
def essay_words(essay_path: str | None) -> tuple[str, ...]:
    """The essay haystack as words: RULER's ``re.sub(r'\\s+', ' ', text).split(' ')``.

    ``essay_path`` is RULER's ``PaulGrahamEssays.json`` (``{"text": ...}``). Without it the
    Hugging Face dataset ``baber/paul_graham_essays`` (rows joined with a space, as lm-eval's
    RULER does) is tried; the caller turns a failure into a not-run task."""
    if essay_path is not None:
        text = json.loads(Path(essay_path).read_text(encoding="utf-8"))["text"]
    else:
        from datasets import load_dataset

        text = " ".join(load_dataset("baber/paul_graham_essays", split="train")["text"])
    return text_words(text)


def text_words(text: str) -> tuple[str, ...]:
    """A haystack text as words, as RULER splits the essays."""
    return tuple(re.sub(r"\s+", " ", text).split(" "))


# RULER splits the essay with nltk's punkt (``sent_tokenize``), which needs a data download. We
# split at [.!?] (plus closing quotes or brackets) followed by whitespace and a capital, digit or
# opening quote, unless the word before the stop is a common abbreviation or a single initial.
# Sentences are re-joined with single spaces, so the split only decides where needles may go.
_BOUNDARY = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(\s+)(?=["'\u201c\u2018(\[]?[A-Z0-9])""")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e inc ltd co corp no fig approx u.s a.m p.m".split())


def nltk_sentences(text: str) -> list[str]:
    """RULER's own splitting: ``nltk.sent_tokenize`` (English punkt), for ``preset: official``.
    The model files come from ``scripts/fetch_punkt.py`` (``make setup`` runs it)."""
    import nltk

    try:
        return nltk.sent_tokenize(text)
    except LookupError as exc:
        raise RuntimeError(
            "RULER preset official splits sentences with nltk's punkt_tab, which is not "
            "installed: run `.venv/bin/python scripts/fetch_punkt.py` (part of make setup)"
        ) from exc


def split_sentences(text: str) -> list[str]:
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        word = text[text.rfind(" ", 0, m.start()) + 1:m.start()].lower()
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue
        sentences.append(text[start:m.start(1)])
        start = m.end(1)
    sentences.append(text[start:])
    return [s for s in sentences if s]
