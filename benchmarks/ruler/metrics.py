"""RULER's metrics (``scripts/eval/synthetic/constants.py``, ``scripts/eval/evaluate.py``) and
the per-length average.

Scores are percentages rounded to 2 decimals, as the reference reports them. Note that lm-eval's
``string_match_part`` differs (it takes a max over samples of the fraction of references found);
we follow NVIDIA's: per sample, 1 if ANY reference is contained.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from benchmarks.ruler.templates import FAMILIES, TASKS

_NON_PRINTABLE = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """Strip, turn control characters into newlines, strip again (evaluate.py)."""
    return _NON_PRINTABLE.sub("\n", prediction.strip()).strip()


def _check(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if not preds or len(preds) != len(refs):
        raise ValueError(f"need as many predictions as references, >0 ({len(preds)} vs "
                         f"{len(refs)})")


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references contained (case-insensitive), x100."""
    _check(preds, refs)
    total = sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs))
    return round(total / len(preds) * 100, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of whether ANY reference is contained (case-insensitive), x100."""
    _check(preds, refs)
    total = sum(max(float(r.lower() in p.lower()) for r in ref) for p, ref in zip(preds, refs))
    return round(total / len(preds) * 100, 2)


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}


def metric_name(task: str) -> str:
    """qa_1/qa_2 use string_match_part; the other 11 tasks string_match_all."""
    return FAMILIES[TASKS[task].family].metric


def score_task(task: str, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Post-process the predictions and apply the task's metric."""
    preds = [postprocess_pred(p) for p in predictions]
    return METRICS[metric_name(task)](preds, references)


@dataclass(frozen=True)
class LengthAverage:
    mean: float          # unweighted mean over the tasks that ran (nan if none)
    num_tasks: int       # how many tasks ran at this length
    not_run: tuple[str, ...]  # tasks given as None / nan (e.g. qa without data): not counted


def average_per_length(scores: Mapping[int, Mapping[str, float | None]]
                       ) -> dict[int, LengthAverage]:
    """``{length: {task: score}}`` -> ``{length: LengthAverage}``. A task whose score is None or
    nan did not run and is left out of the mean (never counted as 0); RULER's paper averages all
    13 tasks, so compare means only between runs with the same task count."""
    out = {}
    for length, per_task in sorted(scores.items()):
        ran = {t: s for t, s in per_task.items() if s is not None and not math.isnan(s)}
        missing = tuple(sorted(t for t in per_task if t not in ran))
        mean = sum(ran.values()) / len(ran) if ran else math.nan
        out[length] = LengthAverage(mean=mean, num_tasks=len(ran), not_run=missing)
    return out
