"""LongBench-v2: 503 multiple-choice questions over 8K-2M-word contexts (THUDM/LongBench).

What follows the official code (THUDM/LongBench, top-level ``pred.py``, ``result.py`` and
``prompts/``, read at commit 2e00731):

- the prompt templates ``0shot.txt``, ``0shot_cot.txt`` and ``0shot_cot_ans.txt`` verbatim, filled
  with the same ``str.replace`` chain (context and choices ``.strip()``-ed);
- CoT in two passes: the CoT prompt (1,024 new tokens), then the answer prompt with ``$COT$``
  filled by the stripped CoT response and the context replaced by "The text is too long and
  omitted here." (128 new tokens);
- middle truncation of the whole prompt, ``query_llm``: ``ids = tokenizer.encode(prompt)``; if
  longer than ``max_len`` keep ``ids[:max_len//2] + ids[-max_len//2:]`` and decode with
  ``skip_special_tokens=True``; ``max_len`` is 120,000 for every 128K model in
  ``config/model2maxlen.json``;
- answer extraction, ``extract_answer``: drop ``*``, then ``The correct answer is \\(([A-D])\\)``,
  then ``The correct answer is ([A-D])``, else ``None`` (counted wrong);
- sampling: temperature 0.1 (``query_llm`` calls), the prompt sent as one chat user message;
- scores, ``result.py``: accuracy ×100 rounded to one decimal, overall, easy / hard (anything not
  "easy" counts as hard) and short / medium / long (anything not short or medium counts as
  long); ``compensated=True`` counts an unparsed answer as 0.25.

Ours, not in the official code:

- ``completion=True``: a prompt for base models, which the official chat-only flow does not
  support. It is the official user text followed by ``"\\n\\nThe correct answer is"``; the model
  continues it (typically `` (B)``) and extraction runs on that prefix plus the continuation, so
  the official regexes decide. In CoT mode only the answer pass gets the prefix (the CoT prompt
  already ends with "Let’s think step by step:"). The registered adapter's ``prompt: open``
  (``benchmarks.adapters.LongBenchV2``) ends the prompt at the official text and
  ``"\n\n"`` instead, and the response, which then writes the whole answer line, is read as
  written.
- An empty response is scored (``pred=None``, wrong) by default. ``pred.py`` instead drops the
  item (``if output == '': continue``, after either pass) so that a failed API call is retried
  on the next run; with a local engine an empty output is the model's answer, and dropping it
  inflates accuracy. ``drop_empty=True`` (the ``official`` preset) does as ``pred.py``, and the
  dropped items are counted.
- A bucket with no items reports ``None`` (``result.py`` divides by zero).
- ``official_max_len(length)``: 120,000 at a 131,072-token server (``--max_model_len 131072``,
  the official setting); at other lengths the same ratio (the official code has no other).
- ``sample_items``: a seeded random sample when fewer items than the file's are wanted
  (``pred.py`` runs them all).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HF_DATASET = "THUDM/LongBench-v2"
HF_SPLIT = "train"
MAX_LEN = 120_000              # config/model2maxlen.json, every 128K model
TEMPERATURE = 0.1              # pred.py
MAX_NEW_TOKENS = 128           # pred.py, answer
MAX_NEW_TOKENS_COT = 1024      # pred.py, CoT first pass
SERVER_MAX_LEN = 131_072       # the README's ``vllm serve ... --max_model_len 131072``

FIELDS = ("_id", "domain", "sub_domain", "difficulty", "length", "question",
          "choice_A", "choice_B", "choice_C", "choice_D", "answer", "context")
DIFFICULTIES = ("easy", "hard")
LENGTHS = ("short", "medium", "long")
CHOICES = ("A", "B", "C", "D")

# prompts/0shot.txt, prompts/0shot_cot.txt, prompts/0shot_cot_ans.txt, verbatim (no final newline;
# "Let’s" has a typographic apostrophe, U+2019).
TEMPLATE_0SHOT = (
    "Please read the following text and answer the question below.\n"
    "\n"
    "<text>\n"
    "$DOC$\n"
    "</text>\n"
    "\n"
    "What is the correct answer to this question: $Q$\n"
    "Choices:\n"
    "(A) $C_A$\n"
    "(B) $C_B$\n"
    "(C) $C_C$\n"
    "(D) $C_D$\n"
    "\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
TEMPLATE_0SHOT_COT = (
    "Please read the following text and answer the questions below.\n"
    "\n"
    "<text>\n"
    "$DOC$\n"
    "</text>\n"
    "\n"
    "What is the correct answer to this question: $Q$\n"
    "Choices:\n"
    "(A) $C_A$\n"
    "(B) $C_B$\n"
    "(C) $C_C$\n"
    "(D) $C_D$\n"
    "\n"
    "Let\u2019s think step by step:"
)
TEMPLATE_0SHOT_COT_ANS = (
    "Please read the following text and answer the questions below.\n"
    "\n"
    "The text is too long and omitted here.\n"
    "\n"
    "What is the correct answer to this question: $Q$\n"
    "Choices:\n"
    "(A) $C_A$\n"
    "(B) $C_B$\n"
    "(C) $C_C$\n"
    "(D) $C_D$\n"
    "\n"
    "Let\u2019s think step by step: $COT$\n"
    "\n"
    "Based on the above, what is the single, most likely answer choice? "
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
# Ours: appended for base models so the official regexes apply to prefix + continuation.
COMPLETION_ANSWER_PREFIX = "The correct answer is"
COMPLETION_SEPARATOR = "\n\n"

_ANSWER_PAREN = re.compile(r"The correct answer is \(([A-D])\)")
_ANSWER_BARE = re.compile(r"The correct answer is ([A-D])")


class LongBenchV2Error(ValueError):
    """A LongBench-v2 file or item that does not follow the official schema."""


# ---------------------------------------------------------------- loading

def load_items(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Items in the official schema from ``path`` (a JSON list or JSON lines) or, with no path,
    from the Hugging Face dataset ``THUDM/LongBench-v2`` (split ``train``; needs the network)."""
    if path is None:
        items = _load_hf()
        source = f"{HF_DATASET}:{HF_SPLIT}"
    else:
        items = _read_json_or_jsonl(Path(path))
        source = str(path)
    validate_items(items, source)
    return items


def _read_json_or_jsonl(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"LongBench-v2 file not found: {path}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        return list(data)
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LongBenchV2Error(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
    return items


def _offline() -> bool:
    from harness.api import hub_offline
    return hub_offline()


def _load_hf() -> list[dict[str, Any]]:
    if _offline():
        raise LongBenchV2Error(
            f"LongBench-v2: no local file given and the Hugging Face hub is offline "
            f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set), so '{HF_DATASET}' cannot be downloaded. "
            f"Pass the path of a file in the official schema (a JSON list or JSON lines with "
            f"fields {', '.join(FIELDS)}), e.g. the dataset's data.json.")
    from datasets import load_dataset

    ds = load_dataset(HF_DATASET, split=HF_SPLIT)
    return [{k: row[k] for k in FIELDS} for row in ds]   # pred.py keeps exactly these fields


def validate_items(items: Sequence[Any], source: str = "items") -> None:
    """Every item has the official fields, as strings, with valid labels; else a clear error."""
    if not items:
        raise LongBenchV2Error(f"{source}: no items")
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise LongBenchV2Error(f"{source}: item {i} is a {type(item).__name__}, not an object")
        name = f"{source}: item {i} (_id={item.get('_id', '?')!r})"
        for field in FIELDS:
            if field not in item:
                raise LongBenchV2Error(f"{name}: missing field '{field}'")
            if not isinstance(item[field], str):
                raise LongBenchV2Error(f"{name}: field '{field}' is a "
                                       f"{type(item[field]).__name__}, expected a string")
        checks = (("difficulty", DIFFICULTIES), ("length", LENGTHS), ("answer", CHOICES))
        for field, allowed in checks:
            if item[field] not in allowed:
                raise LongBenchV2Error(f"{name}: field '{field}' is {item[field]!r}, "
                                       f"expected one of {', '.join(allowed)}")
        if item["_id"] in seen:
            raise LongBenchV2Error(f"{name}: duplicate _id (also item {seen[item['_id']]})")
        seen[item["_id"]] = i


# ---------------------------------------------------------------- prompts

def fill_template(template: str, item: dict[str, Any], cot: str | None = None) -> str:
    """pred.py's replace chain, in its order; ``cot`` fills ``$COT$`` (answer pass)."""
    prompt = (template.replace("$DOC$", item["context"].strip())
              .replace("$Q$", item["question"].strip())
              .replace("$C_A$", item["choice_A"].strip())
              .replace("$C_B$", item["choice_B"].strip())
              .replace("$C_C$", item["choice_C"].strip())
              .replace("$C_D$", item["choice_D"].strip()))
    if cot is not None:
        prompt = prompt.replace("$COT$", cot)
    return prompt


def completion_prompt(user_text: str) -> str:
    """Ours, for base models: the official user text, then the answer prefix to continue."""
    return user_text + COMPLETION_SEPARATOR + COMPLETION_ANSWER_PREFIX


def truncate_middle(prompt: str, tokenizer: Any, max_len: int = MAX_LEN) -> str:
    """pred.py ``query_llm`` for HF tokenizers: keep the first ``max_len//2`` and the last
    ``max_len//2`` token ids of ``tokenizer.encode(prompt)`` (special tokens included, as there)
    and decode with ``skip_special_tokens=True``. A prompt that fits is returned unchanged."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    input_ids = list(tokenizer.encode(prompt))
    if len(input_ids) <= max_len:
        return prompt
    input_ids = input_ids[:max_len // 2] + input_ids[-max_len // 2:]
    return tokenizer.decode(input_ids, skip_special_tokens=True)


def official_max_len(length: int) -> int:
    """The prompt budget of the official protocol at a context of ``length`` tokens: 120,000 at
    131,072 (``config/model2maxlen.json`` with a 131,072-token server) and beyond; below, the
    same ratio (ours: the official code defines no other length)."""
    if length >= SERVER_MAX_LEN:
        return MAX_LEN
    return length * MAX_LEN // SERVER_MAX_LEN


def sample_items(items: Sequence[dict[str, Any]], n: int | None, seed: int = 0
                 ) -> list[dict[str, Any]]:
    """All items (``n`` None or ≥ their number), else ``n`` drawn at random with ``seed``
    (``random.Random(seed).sample``), kept in file order."""
    items = list(items)
    if n is None or n >= len(items):
        return items
    import random

    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def has_chat_template(tokenizer: Any) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def as_chat(prompt: str, tokenizer: Any) -> str:
    """The prompt as one user message, as vLLM's OpenAI server formats ``pred.py``'s request.
    The template already holds any BOS, so the engine adapter must not add special tokens."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise LongBenchV2Error(
            "LongBench-v2's official prompt is a chat user message, but this tokenizer has no "
            "chat template; use completion=True for a base model")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------- answers and scores

def extract_answer(response: str) -> str | None:
    """pred.py ``extract_answer``, verbatim in behaviour."""
    response = response.replace("*", "")
    match = _ANSWER_PAREN.search(response)
    if match:
        return match.group(1)
    match = _ANSWER_BARE.search(response)
    if match:
        return match.group(1)
    return None


def judge(item: dict[str, Any], response: str) -> dict[str, Any]:
    """The record pred.py writes: the item (context cut to 1,000 characters), the stripped
    response, the extracted prediction and whether it equals the answer."""
    response = response.strip()
    pred = extract_answer(response)
    record = {k: item[k] for k in FIELDS}
    record.update(context=item["context"][:1000], response=response, pred=pred,
                  judge=pred == item["answer"])
    return record


def _acc(hits: float, n: int) -> float | None:
    return round(100 * hits / n, 1) if n else None


def accuracy(records: Iterable[dict[str, Any]], compensated: bool = False) -> dict[str, Any]:
    """result.py: overall, easy, hard, short, medium, long (×100, one decimal; ``None`` for an
    empty bucket) and the item counts behind each."""
    hits = {k: 0.0 for k in ("easy", "hard", "short", "medium", "long")}
    n = {k: 0 for k in hits}
    total = 0
    for r in records:
        acc = float(int(r["judge"]))
        if compensated and r["pred"] is None:
            acc = 0.25
        total += 1
        diff = "easy" if r["difficulty"] == "easy" else "hard"
        length = r["length"] if r["length"] in ("short", "medium") else "long"
        for k in (diff, length):
            n[k] += 1
            hits[k] += acc
    if total == 0:
        raise LongBenchV2Error("no records to score")
    out: dict[str, Any] = {"overall": _acc(hits["easy"] + hits["hard"], total)}
    out.update({k: _acc(hits[k], n[k]) for k in hits})
    out["n"] = {"overall": total, **n}
    return out


# ---------------------------------------------------------------- running

Generate = Callable[..., list[str]]
"""``generate(prompts, *, max_new_tokens, temperature, stop) -> list[str]``: one continuation per
prompt (vLLM ``LLM.generate`` or HF ``generate`` behind a small adapter)."""


def _prepare(prompt: str, tokenizer: Any, max_len: int, completion: bool) -> str:
    if completion:
        # the answer prefix must survive truncation, so it is added after it
        return completion_prompt(truncate_middle(prompt, tokenizer, max_len))
    return as_chat(truncate_middle(prompt, tokenizer, max_len), tokenizer)


def run(items: Sequence[dict[str, Any]], generate: Generate, tokenizer: Any, *,
        cot: bool = False, completion: bool = False, max_len: int = MAX_LEN,
        temperature: float = TEMPERATURE, drop_empty: bool = False) -> list[dict[str, Any]]:
    """Predict every item as pred.py does (0-shot or two-pass CoT) and return its records.

    ``completion=True`` is ours (base models, see the module docstring); the truncation budget
    then applies to the official user text, and the answer prefix is added after truncation.
    ``drop_empty=True``: an item whose output (of either pass) is empty gets no record, as in
    pred.py.
    """
    items = list(items)
    validate_items(items)
    prefix = COMPLETION_ANSWER_PREFIX if completion else ""
    if not cot:
        prompts = [_prepare(fill_template(TEMPLATE_0SHOT, it), tokenizer, max_len, completion)
                   for it in items]
        outs = generate(prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, stop=None)
        return [judge(it, prefix + o) for it, o in zip(items, outs, strict=True)
                if not (drop_empty and o == "")]

    if completion:   # the CoT prompt already ends with "Let’s think step by step:"
        cot_prompts = [truncate_middle(fill_template(TEMPLATE_0SHOT_COT, it), tokenizer, max_len)
                       for it in items]
    else:
        cot_prompts = [as_chat(truncate_middle(fill_template(TEMPLATE_0SHOT_COT, it), tokenizer,
                                               max_len), tokenizer) for it in items]
    raw = generate(cot_prompts, max_new_tokens=MAX_NEW_TOKENS_COT, temperature=temperature,
                   stop=None)
    if drop_empty:
        items, raw = [it for it, o in zip(items, raw) if o != ""], [o for o in raw if o != ""]
    cots = [o.strip() for o in raw]
    ans_prompts = [_prepare(fill_template(TEMPLATE_0SHOT_COT_ANS, it, cot=c), tokenizer, max_len,
                            completion) for it, c in zip(items, cots, strict=True)]
    outs = generate(ans_prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, stop=None)
    records = []
    for it, c, o in zip(items, cots, outs, strict=True):
        if drop_empty and o == "":
            continue
        rec = judge(it, prefix + o)
        rec["response_cot"] = c
        records.append(rec)
    return records
