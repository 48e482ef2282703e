"""Question answering (RULER ``scripts/data/synthetic/qa.py``): qa_1 = SQuAD v2 dev, qa_2 =
HotpotQA distractor dev, read from the official JSON files.

The gold paragraph(s) plus distractors (SQuAD: other paragraphs of the same article first, then
random ones; HotpotQA: random) are shuffled and formatted ``"Document {i}:\\n{document}"``. The
document count is binary-searched on question 0; sample i asks question i in file order.
"""
from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from benchmarks.ruler.common import Context, fit_sample, record, search_size
from benchmarks.ruler.templates import DOCUMENT_PROMPT

STEP = 10


@lru_cache(maxsize=2)
def read_squad(path: str) -> tuple[list[dict], list[str]]:
    """Answerable questions of SQuAD v2 (``dev-v2.0.json``) with all annotator answers."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    docs = sorted({p["context"] for d in data for p in d["paragraphs"]})
    doc_id = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data:
        article = [doc_id[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            gold = doc_id[p["context"]]
            for q in p["qas"]:
                if not q["is_impossible"]:
                    qas.append({"query": q["question"],
                                "outputs": [x["text"] for x in q["answers"]],
                                "context": [gold],
                                "more_context": [i for i in article if i != gold]})
    return qas, docs


@lru_cache(maxsize=2)
def read_hotpotqa(path: str) -> tuple[list[dict], list[str]]:
    """HotpotQA distractor dev (``hotpot_dev_distractor_v1.json``): each question's 10
    paragraphs (``title\\n`` + sentences joined) are its documents."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))

    def doc(title, sents):
        return f"{title}\n{''.join(sents)}"

    docs = sorted({doc(t, s) for d in data for t, s in d["context"]})
    doc_id = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [doc_id[doc(t, s)] for t, s in d["context"]]} for d in data]
    return qas, docs


READERS = {"squad": read_squad, "hotpotqa": read_hotpotqa}


def make_sample(ctx: Context, qas, docs, index: int, num_docs: int):
    qa = qas[index]
    gold, more = qa["context"], qa.get("more_context", [])
    num_docs = max(num_docs, len(gold))  # the reference fails below the gold count
    if num_docs < len(docs):
        if num_docs - len(gold) > len(more):
            taken = set(gold + more)
            rest = [i for i in range(len(docs)) if i not in taken]
            chosen = gold + more + ctx.rng.sample(rest, num_docs - len(gold) - len(more))
        else:
            chosen = gold + ctx.rng.sample(more, num_docs - len(gold))
        chosen_docs = [docs[i] for i in chosen]
    else:  # repeat all documents as often as needed
        chosen_docs = (list(docs) * -(-num_docs // len(docs)))[:num_docs]
    random.Random(ctx.seed).shuffle(chosen_docs)
    context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d)
                          for i, d in enumerate(chosen_docs))
    return ctx.template.format(context=context, query=qa["query"]), qa["outputs"]


def generate(task: str, a: dict, ctx: Context, num_samples: int, path: str) -> list[dict]:
    qas, docs = READERS[a["dataset"]](str(path))
    if num_samples > len(qas):
        raise ValueError(f"{task}: {num_samples} samples asked, {len(qas)} questions in {path}")
    per_doc = ctx.count(make_sample(ctx, qas, docs, 0, STEP)[0]) / STEP
    upper = max(int(ctx.max_seq_length / per_doc * 3), STEP * 2)
    size = search_size(lambda n: ctx.fits(make_sample(ctx, qas, docs, 0, n)[0]), STEP, upper)
    samples = []
    for i in range(num_samples):
        text, answers = fit_sample(lambda n: make_sample(ctx, qas, docs, i, n), ctx.fits, size,
                                   STEP, lowest=len(qas[i]["context"]))
        samples.append(record(i, task, text, answers, ctx))
    return samples
