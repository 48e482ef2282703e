"""Common words extraction (RULER ``scripts/data/synthetic/common_words_extraction.py``).

A numbered list ``"1. w1 2. w2 ..."`` where ``num_cw`` words appear ``freq_cw`` times and the
rest ``freq_ucw`` times; the answer is the common words. One worked example (40 words, 10x/3x)
comes first; below 4K tokens the example is 20 words (3x/1x) and the task 6x/1x.
"""
from __future__ import annotations

import logging
import random

from benchmarks.ruler.common import Context, fit_sample, record, search_size
from benchmarks.ruler.words import cwe_vocabulary

log = logging.getLogger(__name__)
NUM_FEWSHOT = 1
STEP = 10


def _word_list(vocab, ctx: Context, num_words: int, common_repeats: int, uncommon_repeats: int,
               num_common: int):
    chosen = ctx.rng.sample(vocab, num_words)
    common, uncommon = chosen[:num_common], chosen[num_common:]
    words = common * common_repeats + uncommon * uncommon_repeats
    random.Random(ctx.seed).shuffle(words)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words)), common


def make_sample(a: dict, ctx: Context, vocab, num_words: int):
    if ctx.max_seq_length < 4096:
        shot_args, task_args = (20, 3, 1), (num_words, 6, 1)
    else:
        shot_args, task_args = (40, 10, 3), (num_words, a["freq_cw"], a["freq_ucw"])
    shots = []
    for _ in range(NUM_FEWSHOT):
        context, answer = _word_list(vocab, ctx, *shot_args, a["num_cw"])
        shots.append(ctx.template.format(context=context, query="") + " "
                     + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer)))
    context, answer = _word_list(vocab, ctx, *task_args, a["num_cw"])
    return "\n".join(shots) + "\n" + ctx.template.format(context=context, query=""), answer


def generate(task: str, a: dict, ctx: Context, num_samples: int) -> list[dict]:
    vocab = cwe_vocabulary(ctx.seed)

    def make(num_words):
        return make_sample(a, ctx, vocab, num_words)

    probe = min(4096, len(vocab))
    per_word = ctx.count(make(probe)[0]) / probe
    upper = max(int(ctx.max_seq_length // per_word) * 2, STEP * 2)
    if upper > len(vocab):  # RULER would sample english_words.json here
        upper = len(vocab)
    size = search_size(lambda n: ctx.fits(make(n)[0]), STEP, upper, lowest=a["num_cw"])
    if size == len(vocab):
        log.warning("cwe at %d tokens is capped at the %d-word vocabulary; prompts are shorter "
                    "than the length budget", ctx.max_seq_length, len(vocab))
    return [record(i, task, *fit_sample(make, ctx.fits, size, STEP, a["num_cw"]), ctx)
            for i in range(num_samples)]
