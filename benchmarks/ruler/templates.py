"""RULER's task families, prompt templates and 13 task configurations, as in NVIDIA/RULER.

Sources (verbatim where quoted): ``scripts/data/synthetic/constants.py`` (templates, answer
prefixes, tokens to generate), ``scripts/synthetic.yaml`` (the 13 tasks and their arguments),
``scripts/eval/synthetic/constants.py`` (which metric each family uses) and the generator scripts
(needle, noise sentence, depths, document format). Only the ``base`` model template
(``"{task_template}"``) is used: the answer prefix follows the task template directly, and a chat
template, if any, is the evaluation harness's business.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Family:
    """A generator family: its prompt template, answer prefix, generation budget and metric."""

    template: str
    answer_prefix: str
    tokens_to_generate: int
    metric: str  # "string_match_all" or "string_match_part"


FAMILIES: dict[str, Family] = {
    "niah": Family(
        template=(
            "Some special magic {type_needle_v} are hidden within the following text. Make sure "
            "to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
            "What are all the special magic {type_needle_v} for {query} mentioned in the "
            "provided text?"),
        answer_prefix=(
            " The special magic {type_needle_v} for {query} mentioned in the provided text are"),
        tokens_to_generate=128,
        metric="string_match_all",
    ),
    "variable_tracking": Family(
        template=(
            "Memorize and track the chain(s) of variable assignment hidden in the following text."
            "\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in "
            "the text above."),
        answer_prefix=(
            " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
            "variables are assigned the value {query}, they are: "),
        tokens_to_generate=30,
        metric="string_match_all",
    ),
    "common_words_extraction": Family(
        template=(
            "Below is a numbered list of words. In these words, some appear more often than "
            "others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the "
            "10 most common words in the above list?"),
        answer_prefix=" Answer: The top 10 words that appear most often in the list are:",
        tokens_to_generate=120,
        metric="string_match_all",
    ),
    "freq_words_extraction": Family(
        template=(
            "Read the following coded text and track the frequency of each coded word. Find the "
            "three most frequently appeared coded words. {context}\nQuestion: Do not provide any "
            "explanation. Please ignore the dots '....'. What are the three most frequently "
            "appeared words in the above coded text?"),
        answer_prefix=(
            " Answer: According to the coded text above, the three most frequently appeared "
            "words are:"),
        tokens_to_generate=50,
        metric="string_match_all",
    ),
    "qa": Family(
        template=(
            "Answer the question based on the given documents. Only give me the answer and do "
            "not output any other words.\n\nThe following are given documents.\n\n{context}\n\n"
            "Answer the question based on the given documents. Only give me the answer and do "
            "not output any other words.\n\nQuestion: {query}"),
        answer_prefix=" Answer:",
        tokens_to_generate=32,
        metric="string_match_part",
    ),
}


@dataclass(frozen=True)
class TaskSpec:
    """One of the 13 tasks: a family and that family's arguments (synthetic.yaml)."""

    family: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_to_generate(self) -> int:
        return FAMILIES[self.family].tokens_to_generate


def _niah(haystack: str, k: str, v: str, nk: int = 1, nv: int = 1, nq: int = 1) -> TaskSpec:
    return TaskSpec("niah", dict(type_haystack=haystack, type_needle_k=k, type_needle_v=v,
                                 num_needle_k=nk, num_needle_v=nv, num_needle_q=nq))


TASKS: dict[str, TaskSpec] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", nk=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", nv=4),
    "niah_multiquery": _niah("essay", "words", "numbers", nq=4),
    "vt": TaskSpec("variable_tracking", dict(type_haystack="noise", num_chains=1, num_hops=4)),
    "cwe": TaskSpec("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": TaskSpec("freq_words_extraction", dict(alpha=2.0)),
    "qa_1": TaskSpec("qa", dict(dataset="squad")),
    "qa_2": TaskSpec("qa", dict(dataset="hotpotqa")),
}

# Tasks that need a data file given by the caller (SQuAD v2 dev, HotpotQA distractor dev).
QA_TASKS = ("qa_1", "qa_2")
# Tasks generated from nothing but the tokenizer (plus the essay file for the essay haystack).
OFFLINE_TASKS = tuple(t for t in TASKS if t not in QA_TASKS)

DEFAULT_SEED = 42  # prepare.py --random_seed (same for every task; + chunk index when chunked)

# Haystack and needle pieces (niah.py, variable_tracking.py, qa.py).
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
         "There and back again.")
DOCUMENT_PROMPT = "Document {i}:\n{document}"
# Insertion depths (percent) for needles in the essay haystack.
DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]


def prompt_template(family: str, model_template: tuple[str, str] | None = None) -> str:
    """The template a generator formats: task template + answer prefix with the ``base`` model
    template; with ``model_template = (before, after)`` (a chat template's text around the user
    message), ``before + task template + after + answer prefix``: RULER's chat model templates
    wrap the task in the user turn, and the answer prefix starts the assistant's reply."""
    fam = FAMILIES[family]
    if model_template is None:
        return fam.template + fam.answer_prefix
    before, after = (t.replace("{", "{{").replace("}", "}}") for t in model_template)
    return before + fam.template + after + fam.answer_prefix


def chat_model_template(tokenizer) -> tuple[str, str] | None:
    """``(before, after)``: the tokenizer's chat template around one user message, with the
    generation prompt (None without a chat template)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    mark = "\x00TASK\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                         add_generation_prompt=True)
    before, _, after = text.partition(mark)
    return before, after
