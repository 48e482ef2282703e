"""HELMET (princeton-nlp/HELMET): Recall generated locally, the other categories from a HELMET
data folder.

Reference code read (princeton-nlp/HELMET at commit 4526dfb): ``data.py`` (``load_json_kv``,
``load_ruler``, ``load_qa``, ``load_msmarco_rerank``, ``default_post_process``), ``utils.py``
(``normalize_answer``, the EM / F1 / substring-EM metrics, ``parse_output``, ``parse_rankings``),
``model_utils.py`` (``tokenize``: prompt formatting and context truncation), ``eval.py``
(system-template prepending, ×100 averaging), ``configs/recall.yaml``, ``configs/rag.yaml``,
``configs/rerank.yaml``, ``scripts/generate_configs.py`` (per-length files and generation
lengths), ``scripts/collect_results.py`` (metric per dataset, category averages), and the
``gh-pages`` branch ``data/examples.json`` (what the data files' prompts look like).

Recall, generated here (HELMET reads pre-generated files; it ships no generator):

- **json_kv** (lost-in-the-middle's KV retrieval): HELMET's prompt ``"{context}\\n\\nExtract the
  value corresponding to the specified key in the JSON object below.\\n\\n{demos}Key:
  {question}\\nCorresponding value:"``, demos ``"Key: {key}\\nCorresponding value: {value}"``
  (2 shots, joined by blank lines), metric ``substring_exact_match`` (normalised answer contained
  in the normalised output; max over the raw output and the output parsed after
  "corresponding value:"). The context is ``"JSON data:\\n"`` + the object printed with
  ``json.dumps(indent=4)``; keys and values are UUID4 strings; the demos are other pairs of the
  same object. These three facts are read from ``examples.json``, not from a generator. The gold
  key's position cycles over 6 depths (0, 0.2, …, 1), our reading of the files' ``dep6`` suffix.
  The number of pairs is searched per tokenizer (HELMET's files were sized for Llama-2:
  k = 50…1800 for 4K…128K).
- **ruler_niah_mk_2 / ruler_niah_mk_3 / ruler_niah_mv**: RULER's ``niah.py`` generation
  (NVIDIA/RULER at c3f5e3b) with the settings of RULER's ``niah_multikey_2`` (needle haystack,
  word keys, 7-digit values), ``niah_multikey_3`` (needle haystack, UUID keys and values) and
  ``niah_multivalue`` (essay haystack, word keys, 4 values), kept here as a small generator
  (needle ``"One of the special magic {type_needle_v} for {key} is: {value}."``, random sentence
  indices for the needle haystack, 40 depths at sentence boundaries for the essay, the same
  binary search and per-sample decrement). Records are written in the fields HELMET's
  ``load_ruler`` reads (``context``, ``query``, ``type_needle_v``, ``answer``/``outputs``), with
  ``type_needle_v`` singular for the single-answer tasks (HELMET's template says "A special
  magic number is hidden…"), and scored with HELMET's ``ruler_recall`` (fraction of answers
  contained, case-insensitive). HELMET's pre-generated files (``data/ruler/<task>/
  validation_<L>.jsonl``) are read instead when ``source="files"``. Where our RULER package
  (``benchmarks/ruler/``) has a piece, it is used: the word lists and needle values
  (``ruler.words``, ``ruler.niah.random_needle_part``), the essay reader, sentence splitter and
  needle placement in the essay (``ruler.common.essay_words`` / ``split_sentences``,
  ``ruler.niah.essay_context``), the size search and per-sample shrinking
  (``ruler.common.search_size`` / ``fit_sample``) and ``TooShort`` (``LengthTooSmall``
  subclasses it).

Sizing: HELMET tokenizes the completion prompt with special tokens and cuts the *end* of the
context when ``prompt + generation_max_length`` exceeds the length. We size every generated
sample so that nothing is cut: prompt tokens (counted as HELMET counts them) + a reserve ≤ the
length, the reserve being HELMET's ``generation_max_length`` for json_kv (100) and RULER's
``tokens_to_generate`` (128, ≥ HELMET's 50/100) for the RULER tasks. The size is RULER's
binary search (``search_size``, never below one increment), and a sample that overflows shrinks
by the increment (``fit_sample``); one that still overflows at a size within one increment of
the bottom gets one last, smaller try before ``LengthTooSmall`` (version 1 gave up there).

Deviations (offline, without extra packages, and the same on every machine):

- Word keys: HELMET ships no generator; its ruler_niah files were made with RULER's
  ``niah.py``, which draws adjective-noun keys from the word lists of the installed
  ``wonderwords`` package (version not recorded). Ours always come from wonderwords 3.0.0's
  adjective and noun lists shipped with ``benchmarks.ruler`` (``benchmarks/ruler/data/``),
  whether or not ``wonderwords`` is installed, so the samples are the same on every machine
  (RULER's ``random_word_key``: uniform by index over the adjective × noun product, where RULER
  draws from the de-duplicated 6.2M-key list). Until generator version 2 the keys came from an
  installed ``wonderwords`` when there was one, else from a small list of our own (18,340
  keys), so machines disagreed; version 2 moved the word-key tasks' samples everywhere, and
  on machines without ``wonderwords`` the keys changed source (ours → wonderwords 3.0.0).
  Distractor needles never reuse a real needle's key (RULER does not check; with 6.2M keys a
  clash is rare).
- Essay sentences are split by RULER's regex (``ruler.common.split_sentences``: ``.!?`` plus
  closing quotes or brackets, then whitespace and a capital, digit or opening quote, common
  abbreviations and initials excepted) instead of ``nltk.sent_tokenize`` (punkt needs a data
  download). Version 2 adopted it (version 1 split at any ``.!?`` + whitespace), which moves
  where ruler_niah_mv's needles may go.
- Random streams: one ``random.Random(seed)`` for the size search and one per length for the
  samples (RULER uses the global ``random``), so our files are not byte-identical to RULER's.

Other categories, from a local HELMET data folder (``bash scripts/download_data.sh``, i.e. the
``data/`` folder of princeton-nlp/HELMET on Hugging Face), at HELMET's six lengths (4K…128K):

- **RAG** (kilt_nq, kilt_triviaqa, kilt_hotpotqa, kilt_popqa_3): done. ``load_qa``'s prompt,
  2 demos chosen with HELMET's sha256-seeded shuffle (reproduced with numpy's PCG64, which is what
  ``datasets.Dataset.shuffle`` uses), PopQA's popularity filter (log10 s_pop < 3), the test
  subset sampled as HELMET does (``random.seed(42)``; ``random.sample(sorted(ids), 100)``),
  metric substring EM with ``default_post_process``; stop at newline; 20 new tokens.
- **Re-rank** (msmarco_rerank_psg): done. ``load_msmarco_rerank``'s prompt and demos,
  ``parse_rankings``, NDCG@10 computed here with trec_eval's definition (linear gain,
  log2 discount, ideal order from the qrels; ``pytrec_eval`` is not installed); 200 new tokens.
- **Cite** (ALCE), **LongQA** (NarrativeQA, InfiniteBench QA/MC), **Summ** (InfiniteBench sum,
  Multi-LexSum), **ICL** (TREC coarse/fine, BANKING77, CLINC150, NLU): not implemented; each is
  reported as not run with its reason (data from the Hugging Face hub, Llama-2-tokenizer
  truncation, GPT-4o judges, the T5-XXL NLI model for citations).

Every category without its data is reported as ``not run: data folder absent`` rather than
scored 0.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from benchmarks.ruler import common as ruler_common
from harness.api import hub_offline
from benchmarks.ruler.common import TooShort, fit_sample, search_size
from benchmarks.ruler.niah import essay_context, random_needle_part
from benchmarks.ruler.templates import NEEDLE

HELMET_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)   # generate_configs.lengths_mapping
MAX_TEST_SAMPLES = 100            # configs/*.yaml (ICL: 500)
SEED = 42
GENERATOR_VERSION = "2"           # bumped whenever a change moves generated samples
# 2: word keys from the shipped wonderwords 3.0.0 lists, RULER's sentence splitter
SHOTS = 2                         # recall.yaml / rag.yaml / rerank.yaml
RULER_TOKENS_TO_GENERATE = 128    # RULER synthetic.yaml, niah tasks
STOP_NEW_LINE = ["\n", "\n\n"]    # model_utils.LLM: stop_newline


# ====================================================================== metrics (utils.py)

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD-style normalisation: lower, drop punctuation, articles, extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(prediction: str, ground_truth: str) -> float:
    pred, gold = normalize_answer(prediction), normalize_answer(ground_truth)
    if pred in ("yes", "no", "noanswer") and pred != gold:
        return 0.0
    if gold in ("yes", "no", "noanswer") and pred != gold:
        return 0.0
    p_tok, g_tok = pred.split(), gold.split()
    same = sum((Counter(p_tok) & Counter(g_tok)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p_tok), same / len(g_tok)
    return 2 * precision * recall / (precision + recall)


def _flatten_answers(answers: str | Sequence[Any]) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    if answers and isinstance(answers[0], list):
        return [a for group in answers for a in group]
    return list(answers)


def qa_metrics(prediction: str, answers: str | Sequence[Any]) -> dict[str, float]:
    """``utils.calculate_metrics`` without ROUGE: max over the answers of EM, F1, substring EM."""
    golds = _flatten_answers(answers)
    return {
        "exact_match": float(max(normalize_answer(prediction) == normalize_answer(g)
                                 for g in golds)),
        "f1": max(_f1(prediction, g) for g in golds),
        "substring_exact_match": float(max(normalize_answer(g) in normalize_answer(prediction)
                                           for g in golds)),
    }


def parse_output(output: str, prefix: str = "Answer:") -> str | None:
    """``utils.parse_output``: the text after ``prefix`` on its line, else the first line."""
    def lstrip_string(s: str, sub: str) -> str:
        return re.sub(f"^{re.escape(sub)}", "", s, flags=re.IGNORECASE)

    patterns = [re.compile(f"(?:{prefix})(.*)(?:\n|$)", flags=re.IGNORECASE),
                re.compile(r"(?:^)(.*)(?:\n|$)")]
    for pat in patterns:
        m = pat.search(output)
        if m is not None:
            return lstrip_string(m[1].strip(), prefix).strip()
    return None


def post_process_qa(output: str, answers: Sequence[Any],
                    prefix: str = "Answer:") -> dict[str, float]:
    """``default_post_process`` / json_kv's post_process: metrics of the raw output and of the
    parsed output, the max of each."""
    mets = qa_metrics(output, answers)
    parsed = parse_output(output, prefix)
    if parsed is not None:
        new = qa_metrics(parsed, answers)
        mets = {k: max(v, new[k]) for k, v in mets.items()}
    return mets


def ruler_recall(output: str, answers: Sequence[str]) -> float:
    """``load_ruler.post_process``: fraction of the answers contained, case-insensitive."""
    return sum(a.lower() in output.lower() for a in answers) / len(answers)


def parse_rankings(output: str) -> dict[str, int]:
    """``utils.parse_rankings``: the longest ``id > id > …`` chain, as id → descending score."""
    output = re.sub(r"[\[\]:]", "", output)
    output = output.lower().replace("id", "")
    longest = ""
    for m in re.finditer(r"(\d+)(?:\s*>\s*(\d+))*", output):
        if len(m.group(0)) > len(longest):
            longest = m.group(0)
    if longest:
        rankings = [n.strip() for n in longest.split(">") if n.strip().isdigit()]
    else:
        rankings = [output]
    results: dict[str, int] = {}
    for i, r in enumerate(rankings):
        if r not in results:
            results[r] = len(rankings) - i
    return results


def ndcg_at_k(run: dict[str, float], qrels: dict[str, int], k: int = 10) -> float:
    """trec_eval ``ndcg_cut.k`` for one query: gain = relevance label (documents absent from the
    qrels gain 0), discount log2(rank + 1), run sorted by score (ties: doc id descending),
    normalised by the ideal ordering of the qrels. 0 when no document is relevant."""
    ranked = sorted(run.items(), key=lambda x: (x[1], x[0]), reverse=True)[:k]
    dcg = sum(max(qrels.get(doc, 0), 0) / math.log2(i + 2) for i, (doc, _) in enumerate(ranked))
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


# ====================================================================== tasks

@dataclass(frozen=True)
class HelmetTask:
    """One HELMET dataset: its templates (completion form: user + joiner + system), generation
    length, metric (collect_results.dataset_to_metrics) and whether generation stops at "\\n"."""
    name: str
    category: str
    user_template: str
    system_template: str
    generation_max_length: int
    metric: str
    stop_new_line: bool = False
    parse_prefix: str = "Answer:"

    @property
    def prompt_template(self) -> str:
        return self.user_template + "\n" + self.system_template


_RULER_SINGLE_USER = (
    "A special magic {type_needle_v} is hidden within the following text. Make sure to memorize "
    "it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat is the special "
    "magic {type_needle_v} for {query} mentioned in the provided text?")
_RULER_SINGLE_SYSTEM = ("The special magic {type_needle_v} for {query} mentioned in the provided "
                        "text is")
_RULER_MULTI_USER = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
    "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all "
    "the special magic {type_needle_v} for {query} mentioned in the provided text?")
_RULER_MULTI_SYSTEM = ("The special magic {type_needle_v} for {query} mentioned in the provided "
                       "text are")
_RAG_USER = ("Use the given documents to write a concise and short answer to the question. Write "
             "your answer in the following format:\nAnswer: [answer]\n\n{demos}{context}\n\n"
             "Question: {question}")
_RERANK_USER = (
    "You are provided with a list of documents, each indicated by their ID. Rank each document "
    "based on their relevance to the question in descending order from most relelvant to least "
    "relevant texts. Include all documents in the rankings. Write your answer using the unique "
    "IDs, with the following format:\nRanking: ID3 > ID1 > ID2\n\n{demos}{context}\n\n"
    "Query: {question}")

TASKS: dict[str, HelmetTask] = {t.name: t for t in [
    HelmetTask("json_kv", "recall",
               "{context}\n\nExtract the value corresponding to the specified key in the JSON "
               "object below.\n\n{demos}Key: {question}", "Corresponding value:", 100,
               "substring_exact_match", parse_prefix="corresponding value:"),
    HelmetTask("ruler_niah_mk_2", "recall", _RULER_SINGLE_USER, _RULER_SINGLE_SYSTEM, 50,
               "ruler_recall"),
    HelmetTask("ruler_niah_mk_3", "recall", _RULER_SINGLE_USER, _RULER_SINGLE_SYSTEM, 100,
               "ruler_recall"),
    HelmetTask("ruler_niah_mv", "recall", _RULER_MULTI_USER, _RULER_MULTI_SYSTEM, 50,
               "ruler_recall"),
    *[HelmetTask(name, "rag", _RAG_USER, "Answer:", 20, "substring_exact_match", True)
      for name in ("kilt_nq", "kilt_triviaqa", "kilt_hotpotqa", "kilt_popqa_3")],
    HelmetTask("msmarco_rerank_psg", "rerank", _RERANK_USER, "Ranking:", 200, "NDCG@10", True),
]}

RECALL_TASKS = ("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv")

# collect_results.custom_avgs, in our task names
CATEGORIES: dict[str, tuple[str, ...]] = {
    "recall": RECALL_TASKS,
    "rag": ("kilt_nq", "kilt_triviaqa", "kilt_hotpotqa", "kilt_popqa_3"),
    "rerank": ("msmarco_rerank_psg",),
    "cite": ("alce_asqa", "alce_qampari"),
    "longqa": ("narrativeqa", "infbench_qa_eng", "infbench_choice_eng"),
    "summ": ("infbench_sum_eng", "multi_lexsum"),
    "icl": ("icl_trec_coarse", "icl_trec_fine", "icl_banking77", "icl_clinic150", "icl_nlu"),
}
NOT_IMPLEMENTED = {
    "cite": "ALCE's citation recall/precision need the google/t5_xxl_true_nli_mixture NLI model "
            "(AutoAIS); loader not implemented",
    "longqa": "HELMET loads NarrativeQA and InfiniteBench from the Hugging Face hub, truncates "
              "them with the gated Llama-2 tokenizer and scores NarrativeQA with a GPT-4o judge; "
              "loader not implemented",
    "summ": "HELMET loads InfiniteBench and Multi-LexSum from the Hugging Face hub and scores them "
            "with a GPT-4o judge; loader not implemented",
    "icl": "HELMET loads TREC, BANKING77, CLINC150 and NLU from the Hugging Face hub (not in the "
           "data folder); loader not implemented",
}


def render_prompt(task: HelmetTask, sample: dict[str, Any]) -> str:
    """The completion prompt (``use_chat_template: false``):
    ``prompt_template.format(**sample)``."""
    return task.prompt_template.format(**sample)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens as HELMET counts a completion prompt: ``tokenizer([prompt])`` with special tokens."""
    return len(tokenizer(text)["input_ids"])


def fit_prompt(task: HelmetTask, sample: dict[str, Any], tokenizer: Any,
               max_length: int) -> tuple[str, int, bool]:
    """``model_utils.tokenize`` (fast tokenizers, no chat template): if the prompt plus the
    generation exceeds ``max_length``, cut the end of the context by the excess, located through
    the context's offset mapping. Returns (prompt, prompt tokens, whether it was cut)."""
    prompt = render_prompt(task, sample)
    n = count_tokens(tokenizer, prompt)
    budget = max_length - task.generation_max_length
    if n <= budget:
        return prompt, n, False
    cut = n - budget
    offsets = tokenizer([sample["context"]], return_offsets_mapping=True)["offset_mapping"][0]
    end = offsets[-cut][0] if cut <= len(offsets) else 0
    sample = {**sample, "context": sample["context"][:end]}
    prompt = render_prompt(task, sample)
    return prompt, count_tokens(tokenizer, prompt), True


def score_output(task: HelmetTask, sample: dict[str, Any], output: str) -> dict[str, float]:
    """eval.py + the task's post_process: the system template is prepended to the continuation
    (completion mode), then the task's metrics (0-1; averaged ×100 by ``aggregate``)."""
    output = task.system_template.format(**sample) + output
    if task.metric == "ruler_recall":
        return {"ruler_recall": ruler_recall(output, sample["answer"])}
    if task.metric == "NDCG@10":
        run = parse_rankings(output)
        qrels = {doc: int(label) for doc, label in sample["qrel"]}
        return {"NDCG@10": round(ndcg_at_k(run, qrels, 10), 5), "num_preds": len(run)}
    return post_process_qa(output, sample["answer"], task.parse_prefix)


# ====================================================================== random values (RULER)

def random_value(rng: random.Random, kind: str) -> str:
    """RULER ``generate_random``: 7-digit numbers, adjective-noun words (the shipped wonderwords
    3.0.0 lists, see the module docstring), UUID4 strings."""
    return random_needle_part(kind, rng)


# ====================================================================== json_kv

JSON_KV_DEPTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)   # "dep6" (our reading, see docstring)


def make_json_kv(rng: random.Random, num_kvs: int, depth: float, num_demos: int = SHOTS) -> dict:
    """One json_kv record in HELMET's file fields: context, question, answer, demos, num_kvs."""
    if num_kvs < num_demos + 1:
        raise ValueError(f"json_kv needs at least {num_demos + 1} pairs, got {num_kvs}")
    kv: dict[str, str] = {}
    while len(kv) < num_kvs:
        kv[random_value(rng, "uuids")] = random_value(rng, "uuids")
    pairs = list(kv.items())
    gold = round(depth * (num_kvs - 1))
    others = [i for i in range(num_kvs) if i != gold]
    demos = [list(pairs[i]) for i in rng.sample(others, num_demos)]
    return {"context": "JSON data:\n" + json.dumps(kv, indent=4), "question": pairs[gold][0],
            "answer": [pairs[gold][1]], "demos": demos, "num_kvs": num_kvs, "depth": depth}


def prepare_json_kv(record: dict[str, Any], shots: int = SHOTS) -> dict[str, Any]:
    """``load_json_kv``'s map: demos to text, ``k`` = num_kvs."""
    demo = "Key: {key}\nCorresponding value:{value}"
    demos = "\n\n".join(demo.format(key=k, value=" " + v) for k, v in record["demos"][:shots])
    return {**record, "demos": demos + ("\n\n" if shots > 0 else ""), "k": record["num_kvs"]}


# ====================================================================== RULER niah (minimal)

@dataclass(frozen=True)
class NiahConfig:
    """RULER synthetic.yaml arguments of one NIAH task."""
    type_haystack: str
    type_needle_k: str
    type_needle_v: str
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1


NIAH_CONFIGS = {
    "ruler_niah_mk_2": NiahConfig("needle", "words", "numbers"),
    "ruler_niah_mk_3": NiahConfig("needle", "uuids", "uuids"),
    "ruler_niah_mv": NiahConfig("essay", "words", "numbers", num_needle_v=4),
}
RULER_FOLDERS = {"ruler_niah_mk_2": "niah_multikey_2", "ruler_niah_mk_3": "niah_multikey_3",
                 "ruler_niah_mv": "niah_multivalue"}


def essay_words(path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """RULER's essay haystack as words (``ruler.common.essay_words``: RULER's
    ``PaulGrahamEssays.json``, or online HF ``baber/paul_graham_essays``); offline without a
    path, a FileNotFoundError that says what to pass."""
    if path is None and hub_offline():
        raise FileNotFoundError(
            "ruler_niah_mv needs the Paul Graham essay haystack: pass essay_path (RULER's "
            "PaulGrahamEssays.json); the hub is offline, so baber/paul_graham_essays is "
            "unavailable")
    return ruler_common.essay_words(None if path is None else str(path))


def make_niah(rng: random.Random, cfg: NiahConfig, num_haystack: int,
              essay: Sequence[str] | None = None, shuffle_seed: int = SEED) -> dict[str, Any]:
    """RULER ``generate_input_output`` for one sample, as a HELMET ruler record."""
    keys, values, needles = [], [], []
    for _ in range(max(cfg.num_needle_k, cfg.num_needle_q)):
        keys.append(random_value(rng, cfg.type_needle_k))
        values.append([random_value(rng, cfg.type_needle_v) for _ in range(cfg.num_needle_v)])
        needles += [NEEDLE.format(type_needle_v=cfg.type_needle_v, key=keys[-1], value=v)
                    for v in values[-1]]
    random.Random(shuffle_seed).shuffle(needles)

    if cfg.type_haystack == "essay":
        if essay is None:
            raise ValueError("an essay haystack needs the essay words")
        context = essay_context(essay, num_haystack, needles, rng)
    elif cfg.type_haystack == "needle":
        used = set(keys)
        sentences = []
        for _ in range(num_haystack):
            k = random_value(rng, cfg.type_needle_k)
            while k in used:      # ours: a distractor never repeats a real key
                k = random_value(rng, cfg.type_needle_k)
            sentences.append(NEEDLE.format(type_needle_v=cfg.type_needle_v, key=k,
                                           value=random_value(rng, cfg.type_needle_v)))
        for index, needle in zip(sorted(rng.sample(range(num_haystack), len(needles)),
                                        reverse=True), needles):
            sentences.insert(index, needle)
        context = "\n".join(sentences)
    else:
        raise ValueError(f"haystack {cfg.type_haystack!r} not supported here (needle, essay)")

    picked = rng.sample(range(len(keys)), cfg.num_needle_q)
    queries = [keys[i] for i in picked]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    answers = [a for i in picked for a in values[i]]
    single = cfg.num_needle_q * cfg.num_needle_v == 1
    type_v = cfg.type_needle_v[:-1] if single else cfg.type_needle_v
    return {"context": context, "query": query, "type_needle_v": type_v, "answer": answers,
            "outputs": answers}


def prepare_ruler(record: dict[str, Any]) -> dict[str, Any]:
    """``load_ruler.process_example``: question, example, answer."""
    return {**record,
            "question": record.get("query", record.get("question", "")),
            "example": record["example"] + "\n\n" if record.get("example") else "",
            "answer": record["answer"] if "answer" in record else record["outputs"]}


# ====================================================================== sizing per tokenizer

class LengthTooSmall(TooShort):
    """RULER's ``TooShort`` with the HELMET task, length and reserve in the message."""


def _sized_samples(task: HelmetTask, make: Callable[[random.Random, int, int], dict],
                   prepare: Callable[[dict], dict], tokenizer: Any, length: int, reserve: int,
                   num_samples: int, incremental: int, seed: int) -> list[dict[str, Any]]:
    """RULER's scheme: estimate tokens per unit, binary-search the largest size whose prompt +
    reserve fits (``search_size``, from ``incremental`` up), then make each sample and shrink it
    by ``incremental`` while it overflows (``fit_sample``)."""
    budget = length - reserve

    def n_tokens(record: dict) -> int:
        return count_tokens(tokenizer, render_prompt(task, prepare(record)))

    search_rng = random.Random(seed)
    per_unit = n_tokens(make(search_rng, incremental, 0)) / incremental
    upper = max(int(budget / per_unit * 3), incremental * 2)
    try:
        size = search_size(lambda n: n_tokens(make(search_rng, n, 0)) <= budget, incremental,
                           upper, lowest=incremental)
    except TooShort:
        raise LengthTooSmall(f"{task.name}: length {length} cannot hold even {incremental} units "
                             f"plus {reserve} reserved tokens with this tokenizer") from None
    rng = random.Random(f"{seed}-{task.name}-{length}")
    out = []
    for i in range(num_samples):
        def measured(n: int, i: int = i) -> tuple[int, dict]:
            record = make(rng, n, i)
            return n_tokens(record), record

        try:
            n, record = fit_sample(measured, lambda n: n <= budget, size, incremental,
                                   lowest=incremental)
        except TooShort:
            raise LengthTooSmall(f"{task.name}: sample {i} does not fit {length} tokens") from None
        out.append({**record, "index": i, "length": n + reserve, "max_length": length})
    return out


def generate_json_kv(tokenizer: Any, length: int, num_samples: int = MAX_TEST_SAMPLES,
                     shots: int = SHOTS, seed: int = SEED) -> list[dict[str, Any]]:
    """json_kv records whose prompt + 100 generated tokens fit ``length`` for this tokenizer."""
    task = TASKS["json_kv"]

    def make(rng: random.Random, n: int, i: int) -> dict:
        return make_json_kv(rng, max(n, shots + 1), JSON_KV_DEPTHS[i % len(JSON_KV_DEPTHS)], shots)

    return _sized_samples(task, make, lambda r: prepare_json_kv(r, shots), tokenizer, length,
                          task.generation_max_length, num_samples, max(1, shots + 1) * 2, seed)


def generate_niah(task_name: str, tokenizer: Any, length: int,
                  num_samples: int = MAX_TEST_SAMPLES, essay: Sequence[str] | None = None,
                  seed: int = SEED, reserve: int = RULER_TOKENS_TO_GENERATE) -> list[dict]:
    """RULER-generated records for one HELMET recall task, sized to ``length``."""
    cfg = NIAH_CONFIGS[task_name]
    # RULER: 500 essay words or 25 sentences per step, 5 sentences below 4K; ours: 50 essay
    # words below 4K (RULER keeps 500, which cannot fit a 1K prompt)
    if cfg.type_haystack == "essay":
        incremental = 500 if length >= 4096 else 50
    else:
        incremental = 25 if length >= 4096 else 5

    def make(rng: random.Random, n: int, i: int) -> dict:
        return make_niah(rng, cfg, n, essay, seed)

    return _sized_samples(TASKS[task_name], make, prepare_ruler, tokenizer, length,
                          max(reserve, TASKS[task_name].generation_max_length), num_samples,
                          incremental, seed)


# ====================================================================== loading files

def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def shuffled_indices(n: int, seed: int) -> list[int]:
    """``datasets.Dataset.shuffle(seed)``'s order:
    ``np.random.default_rng(seed).permutation(n)``."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def shuffle_select(records: list[dict], seed: int, n: int | None) -> list[dict]:
    """``data.shuffle(seed=seed).select(range(min(n, len(data))))``."""
    if n is None:
        return records
    return [records[i] for i in shuffled_indices(len(records), seed)[:min(n, len(records))]]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """HELMET's ``data/`` folder, given it or the repository root above it; None if absent."""
    if data_dir is None:
        return None
    d = Path(data_dir)
    if (d / "data").is_dir() and not (d / "kilt").is_dir():
        d = d / "data"
    return d if d.is_dir() else None


_JSON_KV_K = dict(zip(HELMET_LENGTHS, (50, 105, 220, 440, 900, 1800)))


def helmet_recall_file(data_dir: Path, task_name: str, length: int) -> Path:
    """Where HELMET keeps a recall task's file for one length (generate_configs.py)."""
    if task_name == "json_kv":
        return data_dir / "json_kv" / f"test_k{_JSON_KV_K[length]}_dep6.jsonl"
    return data_dir / "ruler" / RULER_FOLDERS[task_name] / f"validation_{length}.jsonl"


# ====================================================================== RAG and re-rank

_KILT_K = dict(zip(HELMET_LENGTHS, (20, 50, 105, 220, 440, 1000)))
_RERANK_K = dict(zip(HELMET_LENGTHS, (14, 50, 130, 285, 600, 1000)))


def _rag_files(name: str, length: int) -> tuple[str, str]:
    k = _KILT_K[length]
    if name == "kilt_popqa_3":
        return f"kilt/popqa_test_1000_k{k}_dep6.jsonl", "kilt/popqa_test_1000_k3_dep6.jsonl"
    base = name.removeprefix("kilt_")
    dep = "dep3" if base == "hotpotqa" else "dep6"
    return (f"kilt/{base}-dev-multikilt_1000_k{k}_{dep}.jsonl",
            f"kilt/{base}-train-multikilt_1000_k3_{dep}.jsonl")


def _sha_seed(value: Any) -> int:
    return int(hashlib.sha256(str(value).encode("utf-8")).hexdigest(), 16) % 2 ** 31


def _first_unique(records: list[dict], order: list[int], key: str, n: int) -> list[dict]:
    """``drop_duplicates(shuffled, key).select(range(n))``."""
    out, seen = [], set()
    for i in order:
        if records[i][key] in seen:
            continue
        seen.add(records[i][key])
        out.append(records[i])
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct demos, {n} needed")
    return out[:n]


def prepare_rag(name: str, data: list[dict], demos: list[dict], shots: int = SHOTS,
                max_test_samples: int | None = MAX_TEST_SAMPLES, seed: int = SEED,
                popularity_threshold: float = 3.0) -> list[dict[str, Any]]:
    """``load_qa`` for the KILT files: sample, demos, passages."""
    if name == "kilt_popqa_3":
        data = [d for d in data if math.log10(d["s_pop"]) < popularity_threshold]
        demos = [d for d in demos if math.log10(d["s_pop"]) < popularity_threshold]
    key = "id" if data and "id" in data[0] else "question"
    if max_test_samples is not None:
        keys = set(random.Random(seed).sample(sorted({d[key] for d in data}),
                                              min(max_test_samples, len({d[key] for d in data}))))
        data = [d for d in data if d[key] in keys]
    passage = "Document (Title: {title}): {text}"
    demo_tpl = "{documents}\n\nQuestion: {question}\nAnswer: {answer}"
    out = []
    for sample in data:
        demo_text = ""
        if shots > 0:
            pool = [d for d in demos if d[key] != sample[key]] if "popqa" in name else demos
            chosen = _first_unique(pool, shuffled_indices(len(pool), _sha_seed(sample[key])),
                                   key, shots)
            demo_text = "\n\n".join(demo_tpl.format(
                **d, documents="\n\n".join(passage.format(**c) for c in d["ctxs"]),
                answer=d["answers"][0]) for d in chosen) + "\n\n"
        context = "\n\n".join(passage.format(**c) for c in sample["ctxs"])
        out.append({**sample, "demos": demo_text, "context": context, "answer": sample["answers"]})
    return out


def prepare_rerank(data: list[dict], demos: list[dict], shots: int = SHOTS,
                   max_test_samples: int | None = MAX_TEST_SAMPLES,
                   seed: int = SEED) -> list[dict[str, Any]]:
    """``load_msmarco_rerank``: sample, demos with gold rankings, qrels."""
    if max_test_samples is not None:
        key = "qid" if data and "qid" in data[0] else "query"
        all_keys = sorted({d[key] for d in data})
        keys = set(random.Random(seed).sample(all_keys, min(max_test_samples, len(all_keys))))
        data = [d for d in data if d[key] in keys]
    demo_filtered = len(demos) > 2 * len(data)
    if demo_filtered:
        qids = {d["qid"] for d in data}
        demos = [d for d in demos if d["qid"] not in qids]

    def ranking(ctxs: list[dict]) -> str:
        return " > ".join(c["id"] for c in sorted(ctxs, key=lambda c: c["label"], reverse=True))

    out = []
    for sample in data:
        passage = ("[ID: {id}] Document (Title: {title}): {text}" if "title" in sample["ctxs"][0]
                   else "[ID: {id}] Document: {text}")
        demo_text = ""
        if shots > 0:
            pool = demos if demo_filtered else [d for d in demos if d["qid"] != sample["qid"]]
            h = abs(_sha_seed(sample["qid"]))
            for d in _first_unique(pool, shuffled_indices(len(pool), h), "qid", shots):
                demo_text += ("\n\n".join(passage.format(**c) for c in d["ctxs"])
                              + f"\n\nQuery: {d['query']}\nRanking: {ranking(d['ctxs'])}\n\n")
        out.append({**{k: v for k, v in sample.items() if k not in ("query", "ctxs")},
                    "context": "\n\n".join(passage.format(**c) for c in sample["ctxs"]),
                    "question": sample["query"], "demos": demo_text,
                    "answer": ranking(sample["ctxs"]),
                    "qrel": [[c["id"], str(c["label"])] for c in sample["ctxs"]]})
    return out


# ====================================================================== categories

@dataclass
class CategoryData:
    """A category's samples per (task, length), or why it was not run."""
    category: str
    samples: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    not_run: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)   # "task@length" -> reason

    @property
    def ran(self) -> bool:
        return self.not_run is None


def load_recall(tokenizer: Any, lengths: Sequence[int], *, source: str = "generate",
                data_dir: str | os.PathLike | None = None,
                essay_path: str | os.PathLike | None = None,
                num_samples: int = MAX_TEST_SAMPLES, shots: int = SHOTS, seed: int = SEED,
                tasks: Sequence[str] = RECALL_TASKS) -> CategoryData:
    """Recall samples: generated per tokenizer (default) or read from HELMET's files."""
    cat = CategoryData("recall")
    if source == "files":
        d = resolve_data_dir(data_dir)
        if d is None:
            return CategoryData("recall", not_run="not run: data folder absent")
    essay = essay_words(essay_path) if "ruler_niah_mv" in tasks and source == "generate" else None
    for name in tasks:
        for length in lengths:
            if source == "generate":
                recs = (generate_json_kv(tokenizer, length, num_samples, shots, seed)
                        if name == "json_kv" else
                        generate_niah(name, tokenizer, length, num_samples, essay, seed))
            elif source == "files":
                if (length not in HELMET_LENGTHS
                        or not helmet_recall_file(d, name, length).is_file()):
                    cat.skipped[f"{name}@{length}"] = "not run: HELMET file absent"
                    continue
                recs = shuffle_select(read_jsonl(helmet_recall_file(d, name, length)), seed,
                                      num_samples)
            else:
                raise ValueError(f"source must be 'generate' or 'files', got {source!r}")
            prep = (lambda r: prepare_json_kv(r, shots)) if name == "json_kv" else prepare_ruler
            cat.samples[(name, length)] = [prep(r) for r in recs]
    return cat


def load_category(category: str, lengths: Sequence[int], *,
                  data_dir: str | os.PathLike | None = None, shots: int = SHOTS,
                  max_test_samples: int | None = MAX_TEST_SAMPLES,
                  seed: int = SEED) -> CategoryData:
    """A file-based category (rag, rerank; cite/longqa/summ/icl report why not) from a HELMET
    data folder; ``not run: data folder absent`` without one. For recall use ``load_recall``."""
    if category not in CATEGORIES or category == "recall":
        raise ValueError(f"unknown file-based HELMET category {category!r} "
                         f"(known: {', '.join(c for c in CATEGORIES if c != 'recall')})")
    d = resolve_data_dir(data_dir)
    if d is None:
        return CategoryData(category, not_run="not run: data folder absent")
    if category in NOT_IMPLEMENTED:
        return CategoryData(category, not_run=f"not run: {NOT_IMPLEMENTED[category]}")
    cat = CategoryData(category)
    for name in CATEGORIES[category]:
        for length in lengths:
            if length not in HELMET_LENGTHS:
                cat.skipped[f"{name}@{length}"] = "not run: HELMET has no file for this length"
                continue
            if category == "rag":
                test, demo = _rag_files(name, length)
            else:
                test = f"msmarco/test_reranking_data_k{_RERANK_K[length]}_dep3.jsonl"
                demo = "msmarco/test_reranking_data_k10_dep3.jsonl"
            missing = [p for p in (test, demo) if not (d / p).is_file()]
            if missing:
                cat.skipped[f"{name}@{length}"] = f"not run: file absent ({', '.join(missing)})"
                continue
            data, demos = read_jsonl(d / test), read_jsonl(d / demo)
            cat.samples[(name, length)] = (
                prepare_rag(name, data, demos, shots, max_test_samples, seed) if category == "rag"
                else prepare_rerank(data, demos, shots, max_test_samples, seed))
    if not cat.samples:
        cat.not_run = "not run: no HELMET files for the requested lengths in the data folder"
    return cat


# ====================================================================== evaluation

Generate = Callable[..., list[str]]
"""``generate(prompts, *, max_new_tokens, temperature, stop) -> list[str]`` (greedy: HELMET runs
``do_sample=False``)."""


def evaluate(categories: Iterable[CategoryData], generate: Generate, tokenizer: Any,
             ) -> dict[str, Any]:
    """Run every prepared sample and aggregate as HELMET does: per task and length the mean of
    its metric ×100; per category and length the mean of its tasks (collect_results.custom_avgs);
    categories not run are reported with their reason, never as 0."""
    per_task: dict[str, dict[str, float]] = {}
    per_category: dict[str, dict[str, float]] = {}
    not_run: dict[str, str] = {}
    details: dict[str, list[dict[str, Any]]] = {}
    for cat in categories:
        if not cat.ran:
            not_run[cat.category] = cat.not_run or "not run"
            continue
        for (name, length), samples in sorted(cat.samples.items()):
            task = TASKS[name]
            fitted = [fit_prompt(task, s, tokenizer, length) for s in samples]
            outs = generate([p for p, _, _ in fitted], max_new_tokens=task.generation_max_length,
                            temperature=0.0, stop=STOP_NEW_LINE if task.stop_new_line else None)
            mets = [score_output(task, s, o) for s, o in zip(samples, outs, strict=True)]
            per_task.setdefault(name, {})[str(length)] = 100 * float(np.mean([m[task.metric]
                                                                              for m in mets]))
            details[f"{name}@{length}"] = [
                {"input_len": n, "truncated": cut, "output": o, **m}
                for (_, n, cut), o, m in zip(fitted, outs, mets)]
        for length in sorted({ln for (_, ln) in cat.samples}):
            scores = [per_task[t][str(length)] for t in CATEGORIES[cat.category]
                      if str(length) in per_task.get(t, {})]
            if len(scores) == len(CATEGORIES[cat.category]):
                per_category.setdefault(cat.category, {})[str(length)] = float(np.mean(scores))
        for key, reason in cat.skipped.items():
            not_run[f"{cat.category}:{key}"] = reason
    return {"per_task": per_task, "per_category": per_category, "not_run": not_run,
            "details": details}
