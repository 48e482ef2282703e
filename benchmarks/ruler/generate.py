"""``generate(task, tokenizer, max_seq_length, ...)``: RULER samples for one task and length.

Each sample is a dict with the reference's fields (``index``, ``input``, ``outputs``,
``length``, ``answer_prefix``) plus ``task``, ``max_length`` (the target length, lm-eval's
per-length metric key) and ``max_new_tokens``. The model is given ``full_prompt(sample)`` =
``input + answer_prefix``, as RULER's ``call_api.py`` does; ``length`` is the token count of that
prompt plus ``max_new_tokens`` and never exceeds ``max_seq_length``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from benchmarks.ruler import cwe, fwe, niah, qa, vt
from benchmarks.ruler.common import Context, essay_words, nltk_sentences, token_counter
from benchmarks.ruler.templates import DEFAULT_SEED, FAMILIES, TASKS, prompt_template


class NotRun(RuntimeError):
    """A task that cannot be generated here (missing data file); report it as not run, never
    as a score of 0. ``reason`` says what is missing."""

    def __init__(self, task: str, reason: str):
        super().__init__(f"{task} not run: {reason}")
        self.task, self.reason = task, reason


QA_FILES = {"squad": "SQuAD v2 dev (dev-v2.0.json)",
            "hotpotqa": "HotpotQA distractor dev (hotpot_dev_distractor_v1.json)"}


def full_prompt(sample: dict) -> str:
    """What the model is given: the input followed by the answer prefix."""
    return sample["input"] + sample["answer_prefix"]


def _essay(task: str, essay_path: str | Path | None):
    if essay_path is not None:
        return essay_words(str(essay_path))
    try:  # the online route; offline it fails, and the task is not run
        return essay_words(None)
    except Exception as err:
        raise NotRun(task, "essay haystack unavailable: give essay_path (RULER's "
                     "PaulGrahamEssays.json) or hub access to baber/paul_graham_essays "
                     f"({type(err).__name__}: {err})") from err


def generate(task: str, tokenizer: Any, max_seq_length: int, num_samples: int,
             seed: int = DEFAULT_SEED, essay_path: str | Path | None = None,
             qa_path: str | Path | None = None,
             essay: Sequence[str] | None = None,
             model_template: tuple[str, str] | None = None,
             sentence_split: str = "regex") -> list[dict]:
    """Generate ``num_samples`` samples of ``task`` sized for ``tokenizer`` and
    ``max_seq_length``. Raises ``NotRun`` for qa_1/qa_2 without ``qa_path`` (or an essay task
    whose haystack cannot be had), ``TooShort`` when the length cannot hold the task at all.
    ``essay``: the haystack's words themselves (``common.text_words``), in place of
    ``essay_path`` (the sandbox's substitute). ``model_template``: the chat template's text around
    the user turn (``templates.chat_model_template``; None: RULER's ``base``);
    ``sentence_split``: ``regex`` (ours) or ``nltk`` (RULER's ``sent_tokenize``)."""
    if task not in TASKS:
        import difflib
        hint = difflib.get_close_matches(task, TASKS, n=1)
        raise KeyError(f"unknown RULER task {task!r}" + (f"; did you mean {hint[0]!r}?" if hint
                                                          else f"; known: {sorted(TASKS)}"))
    spec = TASKS[task]
    family = FAMILIES[spec.family]
    a = spec.args
    if spec.family == "qa" and qa_path is None:
        raise NotRun(task, f"needs {QA_FILES[a['dataset']]}: pass qa_path")
    ctx = Context(count=token_counter(tokenizer), max_seq_length=int(max_seq_length),
                  tokens_to_generate=family.tokens_to_generate,
                  template=prompt_template(spec.family, model_template),
                  answer_prefix=family.answer_prefix, seed=seed,
                  split={"regex": None, "nltk": nltk_sentences}[sentence_split])
    if spec.family == "niah":
        if a["type_haystack"] != "essay":
            essay = None
        elif essay is None:
            essay = _essay(task, essay_path)
        return niah.generate(task, a, ctx, num_samples, essay)
    if spec.family == "variable_tracking":
        return vt.generate(task, a, ctx, num_samples)
    if spec.family == "common_words_extraction":
        return cwe.generate(task, a, ctx, num_samples)
    if spec.family == "freq_words_extraction":
        return fwe.generate(task, a, ctx, num_samples)
    return qa.generate(task, a, ctx, num_samples, str(qa_path))
