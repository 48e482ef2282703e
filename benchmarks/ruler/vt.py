"""Variable tracking (RULER ``scripts/data/synthetic/variable_tracking.py``), noise haystack.

A chain ``VAR A = 12345``, ``VAR B = VAR A``, ... (``num_hops`` hops, 5-letter names) is inserted
line by line into repeated noise sentences; the answer is every name in the chain. One in-context
example (3-letter names, value 12345, sized to 500 tokens) is built first, re-randomised for
each sample and put before the task template.
"""
from __future__ import annotations

import dataclasses
import string

from benchmarks.ruler.common import Context, fit_sample, record, search_size
from benchmarks.ruler.templates import NOISE

ICL_MAX_LENGTH = 500


def _chains(ctx: Context, num_chains: int, num_hops: int, is_icl: bool):
    k = 3 if is_icl else 5
    hops = min(10, num_hops) if is_icl else num_hops
    names: list[str] = []
    while len(names) < num_chains * (hops + 1):  # distinct names
        name = "".join(ctx.rng.choices(string.ascii_uppercase, k=k))
        if name not in names:
            names.append(name)
    var_groups, chains = [], []
    for i in range(0, len(names), hops + 1):
        group = names[i:i + hops + 1]
        first = "12345" if is_icl else str(ctx.np_rng.randint(10000, 99999))
        chain = [f"VAR {group[0]} = {first}"]
        chain += [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(hops)]
        var_groups.append(group)
        chains.append(chain)
    return var_groups, chains


def make_sample(a: dict, ctx: Context, size: int, is_icl: bool = False):
    var_groups, chains = _chains(ctx, a["num_chains"], a["num_hops"], is_icl)
    value = chains[0][0].split("=")[-1].strip()
    sentences = [NOISE] * size
    for chain in chains:
        positions = sorted(ctx.rng.sample(range(len(sentences)), len(chain)))
        for j, pos in enumerate(positions):
            sentences.insert(pos + j, chain[j])
    context = "\n".join(sentences).replace(". \n", ".\n")
    text = ctx.template.format(context=context, query=value, num_v=a["num_hops"] + 1)
    return text, var_groups[0]


def _randomize_icl(example: str, ctx: Context, num_hops: int) -> str:
    for name in example.strip().split()[-num_hops - 1:]:
        new = "".join(ctx.rng.choices(string.ascii_uppercase, k=len(name)))
        example = example.replace(name, new)
    return example.replace("12345", str(ctx.np_rng.randint(10000, 99999)))


def _icl_example(a: dict, ctx: Context) -> str:
    """The reference's first pass: one sample at max_seq_length 500, nothing to generate."""
    icl_ctx = dataclasses.replace(ctx, max_seq_length=ICL_MAX_LENGTH, tokens_to_generate=0)
    icl_ctx.rng, icl_ctx.np_rng = ctx.rng, ctx.np_rng  # one RNG stream, as the reference

    def make(size):
        return make_sample(a, icl_ctx, size, is_icl=True)

    step, lowest = 5, a["num_hops"] + 1
    per_unit = ctx.count(make(step)[0]) / step
    upper = max(int(ICL_MAX_LENGTH / per_unit * 3), step * 2)
    size = search_size(lambda n: icl_ctx.fits(make(n)[0]), step, upper, lowest)
    text, names = fit_sample(make, icl_ctx.fits, size, step, lowest)
    return text + " " + " ".join(names) + "\n"


def generate(task: str, a: dict, ctx: Context, num_samples: int) -> list[dict]:
    example = _icl_example(a, ctx)
    example_tokens = ctx.count(example)
    step = 10 if ctx.max_seq_length >= 4096 else 5
    lowest = a["num_hops"] + 1

    def make(size):
        return make_sample(a, ctx, size)

    def make_with_example(size):
        text, names = make(size)
        cut = text.index(ctx.template[:20])  # after the model template (none for base)
        return text[:cut] + _randomize_icl(example, ctx, a["num_hops"]) + "\n" + text[cut:], names

    per_unit = ctx.count(make(step)[0]) / step
    upper = max(int(ctx.max_seq_length / per_unit * 3), step * 2)
    size = search_size(lambda n: ctx.fits(make(n)[0], example_tokens), step, upper, lowest)
    return [record(i, task, *fit_sample(make_with_example, ctx.fits, size, step, lowest), ctx)
            for i in range(num_samples)]
