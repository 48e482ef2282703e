"""Frequent words extraction (RULER ``scripts/data/synthetic/freq_words_extraction.py``).

Random 6-letter "coded" words appear with zeta-distributed counts, ``num_words * k^-alpha /
zeta(alpha)`` for rank k; rank 1 is replaced by ``'...'`` (noise) and the answer is ranks 2-4.
The size search is the reference's linear one: grow the word count by ``budget // 32`` until the
prompt reaches the budget, step back once, and shrink each sample while it overflows.
"""
from __future__ import annotations

import random
import string

import numpy as np

from benchmarks.ruler.common import Context, TooShort, record

CODED_WORDLEN = 6


def zeta(alpha: float, terms: int = 1000) -> float:
    """Riemann zeta for alpha > 1 (scipy.special.zeta in the reference): the partial sum plus
    its Euler-Maclaurin tail, accurate to ~1e-12 for alpha >= 1.1."""
    k = np.arange(1, terms, dtype=np.float64)
    n = float(terms)
    return float(np.sum(k ** -alpha) + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha
                 + alpha * n ** (-alpha - 1) / 12)


def _vocab(ctx: Context, size: int) -> list[str]:
    vocab = ["".join(ctx.rng.choices(string.ascii_lowercase, k=CODED_WORDLEN))
             for _ in range(size)]
    while len(set(vocab)) < size:
        vocab.append("".join(ctx.rng.choices(string.ascii_lowercase, k=CODED_WORDLEN)))
    vocab = sorted(set(vocab))
    random.Random(ctx.seed).shuffle(vocab)
    vocab[0] = "..."  # the top rank is noise
    return vocab


def _text(ctx: Context, vocab: list[str], num_words: int, alpha: float):
    ranks = np.arange(1, len(vocab) + 1)
    counts = (num_words * (ranks ** -alpha) / zeta(alpha)).astype(int)
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(ctx.seed).shuffle(words)
    return ctx.template.format(context=" ".join(words), query=""), vocab[1:4]


def make_sample(ctx: Context, budget: int, vocab_size: int, alpha: float, num_words: int = -1):
    """The reference's ``generate_input_output``: a fresh vocabulary, then the word count that
    fits ``budget`` prompt tokens (searched from scratch when ``num_words`` is -1)."""
    step = budget // 32
    vocab = _vocab(ctx, vocab_size)
    if num_words > 0:
        text, answer = _text(ctx, vocab, num_words, alpha)
        while ctx.count(text) > budget:
            num_words -= step
            if num_words <= 0:
                raise TooShort("fwe: no word count fits the length budget")
            text, answer = _text(ctx, vocab, num_words, alpha)
    else:
        num_words = budget // CODED_WORDLEN
        text, answer = _text(ctx, vocab, num_words, alpha)
        while ctx.count(text) < budget:
            num_words += step
            text, answer = _text(ctx, vocab, num_words, alpha)
        num_words -= step
    text, answer = _text(ctx, vocab, num_words, alpha)
    return text, answer, num_words


def generate(task: str, a: dict, ctx: Context, num_samples: int) -> list[dict]:
    budget = ctx.max_seq_length - ctx.tokens_to_generate
    vocab_size = budget // 50
    if budget // 32 < 1 or vocab_size < 4:
        raise TooShort(f"fwe needs a longer max_seq_length than {ctx.max_seq_length}")
    _, _, num_words = make_sample(ctx, budget, vocab_size, a["alpha"])
    samples = []
    for i in range(num_samples):
        text, answer, _ = make_sample(ctx, budget, vocab_size, a["alpha"], num_words)
        samples.append(record(i, task, text, answer, ctx))
    return samples
