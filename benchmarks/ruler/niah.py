"""Needle in a haystack (RULER ``scripts/data/synthetic/niah.py``): 8 of the 13 tasks."""
from __future__ import annotations

import random
import uuid
from typing import Sequence

from benchmarks.ruler.common import Context, fit_sample, record, search_size, split_sentences
from benchmarks.ruler.templates import DEPTHS, NEEDLE, NOISE
from benchmarks.ruler.words import random_word_key


def random_needle_part(kind: str, rng: random.Random) -> str:
    if kind == "numbers":  # 7 digits
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return random_word_key(rng)
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


def essay_context(words: Sequence[str], size: int, needles: list[str], rng,
                  split=None) -> str:
    """The first ``size`` essay words (repeated as needed), split into sentences, with the
    needles inserted at sentence boundaries at depths drawn from ``DEPTHS``."""
    if size <= len(words):
        text = " ".join(words[:size])
    else:  # repeat the essays as often as needed
        text = " ".join((list(words) * -(-size // len(words)))[:size])
    sents = (split or split_sentences)(text.strip())
    cuts = ([0] + sorted(int(len(sents) * (d / 100)) for d in rng.sample(DEPTHS, len(needles)))
            + [len(sents)])
    parts = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(needles):
            parts.append(needles[i - 1])
    return " ".join(parts)


def _line_context(a: dict, size: int, needles: list[str], rng) -> str:
    if a["type_haystack"] == "noise":
        sentences = [NOISE] * size
    else:  # "needle": distractor needles with random keys and values
        sentences = [NEEDLE.format(type_needle_v=a["type_needle_v"],
                                   key=random_needle_part(a["type_needle_k"], rng),
                                   value=random_needle_part(a["type_needle_v"], rng))
                     for _ in range(size)]
    positions = sorted(rng.sample(range(size), len(needles)), reverse=True)
    for pos, needle in zip(positions, needles):
        sentences.insert(pos, needle)
    return "\n".join(sentences)


def make_sample(a: dict, ctx: Context, size: int, essay: Sequence[str] | None):
    """One prompt (template + answer prefix) with ``size`` haystack units, and its answers."""
    rng = ctx.rng
    num_k = max(a["num_needle_k"], a["num_needle_q"])
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(random_needle_part(a["type_needle_k"], rng))
        values.append([])
        for _ in range(a["num_needle_v"]):
            values[-1].append(random_needle_part(a["type_needle_v"], rng))
            needles.append(NEEDLE.format(type_needle_v=a["type_needle_v"], key=keys[-1],
                                         value=values[-1][-1]))
    random.Random(ctx.seed).shuffle(needles)

    if a["type_haystack"] == "essay":
        context = essay_context(essay, size, needles, rng, ctx.split)
    else:
        context = _line_context(a, size, needles, rng)

    picked = rng.sample(range(num_k), a["num_needle_q"])
    queries = [keys[i] for i in picked]
    answers = [v for i in picked for v in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]

    template, type_v = ctx.template, a["type_needle_v"]
    if a["num_needle_q"] * a["num_needle_v"] == 1:  # singular wording
        template = (template.replace("Some", "A").replace("are all", "is")
                    .replace("are", "is").replace("answers", "answer"))
        type_v = type_v[:-1]
    return template.format(type_needle_v=type_v, context=context, query=query), answers


def generate(task: str, a: dict, ctx: Context, num_samples: int,
             essay: Sequence[str] | None = None) -> list[dict]:
    if a["type_haystack"] == "essay":
        step = 500
    else:
        step = 25 if ctx.max_seq_length >= 4096 else 5
    num_needles = max(a["num_needle_k"], a["num_needle_q"]) * a["num_needle_v"]
    lowest = 1 if a["type_haystack"] == "essay" else num_needles

    def make(size):
        return make_sample(a, ctx, size, essay)

    probe = max(step, lowest)
    per_unit = ctx.count(make(probe)[0]) / probe
    upper = max(int(ctx.max_seq_length / per_unit * 3), step * 2)
    size = search_size(lambda n: ctx.fits(make(n)[0]), step, upper, lowest)
    return [record(i, task, *fit_sample(make, ctx.fits, size, step, lowest), ctx)
            for i in range(num_samples)]
