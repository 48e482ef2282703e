"""Evaluation adapters (``harness.evaluate.Benchmark``) for RULER, LongBench-v2 and HELMET
Recall, registered in ``harness.registry.BENCHMARKS``. Each is built from the spec's
``BenchmarkEntry`` (``name``, ``tasks``, ``params``); an unknown task or param is an error.

Data files, in this order: the entry's ``params``; an environment variable (a location);
the staged copy in ``../shared/data`` next to the repository if present; else the online route
(Hugging Face hub), and when that fails too the task is reported as not run with the reason.

- ``ruler``: tasks = the entry's or all 13. params: ``essay_path`` (RULER's
  ``PaulGrahamEssays.json``; env ``POLICYLONG_ESSAYS``), ``squad_path`` (qa_1, SQuAD v2 dev),
  ``hotpotqa_path`` (qa_2, HotpotQA distractor dev), ``seed`` (42). qa_1/qa_2 without their
  file, and a length too short for a task (RULER's ``TooShort``), are not run.
- ``longbench_v2``: one task, ``overall``, with ``easy/hard/short/medium/long`` logged beside it.
  params: ``path`` (official schema; env ``POLICYLONG_LONGBENCH_V2``), ``prompt``
  (``completion``, the default, for base models: the official text + "The correct answer is";
  or ``chat``: the official user message in the tokenizer's chat template), ``reserve``
  (tokens kept free for the answer: the prompt is middle-truncated to ``length - reserve``
  tokens, so prompt + generation fit ``length``, as for the other benchmarks; default 160).
  ``samples_per_task`` takes the file's first items.
- ``helmet_recall``: json_kv, ruler_niah_mk_2, ruler_niah_mk_3, ruler_niah_mv, generated per
  tokenizer. params: ``essay_path`` (for ruler_niah_mv; env ``POLICYLONG_ESSAYS``), ``seed``
  (42), ``shots`` (2).
- ``helmet``: the above plus RAG and re-rank from a HELMET data folder (``data_dir``, env
  ``POLICYLONG_HELMET_DATA``); the categories without a loader are reported as not run.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Sequence

from harness.config import BenchmarkEntry
from harness.evaluate import NotRun, Sample, TaskScore

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def check_params(bench: str, params: dict[str, Any], allowed: Sequence[str]) -> None:
    for key in params:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            raise ValueError(f"{bench}: unknown param '{key}'" + (
                f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(allowed)})"))


def check_tasks(bench: str, tasks: Sequence[str] | None, known: Sequence[str]) -> list[str]:
    if tasks is None:
        return list(known)
    for t in tasks:
        if t not in known:
            hint = difflib.get_close_matches(t, known, n=1)
            raise ValueError(f"{bench}: unknown task '{t}'" + (
                f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"))
    return list(dict.fromkeys(tasks))


def data_file(bench: str, params: dict, key: str, env: str | None = None,
              staged: str | None = None) -> str | None:
    """A data file from ``params[key]``, else ``$env``, else ``../shared/data/<staged>`` if
    present, else None (the online route). A file named explicitly must exist."""
    for given, where in ((params.get(key), f"params.{key}"),
                         (os.environ.get(env) if env else None, env)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{bench}: {where}: file not found: {path}")
            return str(path)
    if staged and (SHARED_DATA / staged).is_file():
        return str(SHARED_DATA / staged)
    return None


class Ruler:
    name = "ruler"
    PARAMS = ("essay_path", "squad_path", "hotpotqa_path", "seed")

    def __init__(self, entry: BenchmarkEntry):
        from benchmarks.ruler import TASKS
        from benchmarks.ruler.templates import DEFAULT_SEED

        p = entry.params
        check_params(self.name, p, self.PARAMS)
        self._tasks = check_tasks(self.name, entry.tasks, list(TASKS))
        self.essay = data_file(self.name, p, "essay_path", "POLICYLONG_ESSAYS",
                               "PaulGrahamEssays.json")
        self.qa = {"qa_1": data_file(self.name, p, "squad_path"),
                   "qa_2": data_file(self.name, p, "hotpotqa_path")}
        self.seed = int(p.get("seed", DEFAULT_SEED))

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def samples(self, task: str, length: int, tokenizer: Any, n: int) -> list[Sample]:
        from benchmarks import ruler

        try:
            recs = ruler.generate(task, tokenizer, length, n, seed=self.seed,
                                  essay_path=self.essay, qa_path=self.qa.get(task))
        except ruler.NotRun as exc:
            reason = exc.reason
            if task in self.qa and self.qa[task] is None:
                key = "squad_path" if task == "qa_1" else "hotpotqa_path"
                reason = reason.replace("pass qa_path", f"set params.{key}")
            raise NotRun(reason) from None
        except ruler.TooShort as exc:
            raise NotRun(f"length {length} is too short for {task} ({exc})") from None
        return [Sample(ruler.full_prompt(r), r["max_new_tokens"], list(r["outputs"]))
                for r in recs]

    def score(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]
              ) -> TaskScore:
        from benchmarks.ruler.metrics import METRICS, metric_name, postprocess_pred, score_task

        refs = [s.references for s in samples]
        metric = METRICS[metric_name(task)]
        per = [metric([postprocess_pred(p)], [r]) for p, r in zip(predictions, refs, strict=True)]
        return TaskScore(score_task(task, predictions, refs), per)


class LongBenchV2:
    name = "longbench_v2"
    PARAMS = ("path", "prompt", "reserve")
    BREAKDOWN = ("easy", "hard", "short", "medium", "long")

    def __init__(self, entry: BenchmarkEntry):
        from benchmarks import longbench_v2 as lb

        p = entry.params
        check_params(self.name, p, self.PARAMS)
        check_tasks(self.name, entry.tasks, ["overall"])
        self.path = data_file(self.name, p, "path", "POLICYLONG_LONGBENCH_V2",
                              "longbench_v2_sample.json")
        self.completion = p.get("prompt", "completion") == "completion"
        if p.get("prompt", "completion") not in ("completion", "chat"):
            raise ValueError(f"{self.name}: params.prompt must be 'completion' or 'chat', "
                             f"got {p['prompt']!r}")
        self.reserve = int(p.get("reserve", lb.MAX_NEW_TOKENS + 32))
        self._items: list[dict] | None = None
        if self.path is not None:    # a given file is read and checked now, before any run
            self.items()

    def tasks(self) -> list[str]:
        return ["overall"]

    def items(self) -> list[dict]:
        from benchmarks import longbench_v2 as lb

        if self._items is None:
            if self.path is not None:
                self._items = lb.load_items(self.path)
            else:
                try:  # the online route; offline (or failing) the benchmark is not run
                    self._items = lb.load_items(None)
                except Exception as exc:  # noqa: BLE001 - any failure of the hub route
                    raise NotRun(f"no LongBench-v2 file (params.path, POLICYLONG_LONGBENCH_V2"
                                 f" or {SHARED_DATA / 'longbench_v2_sample.json'}) and the hub "
                                 f"route failed: {type(exc).__name__}: {exc}") from None
        return self._items

    def samples(self, task: str, length: int, tokenizer: Any, n: int) -> list[Sample]:
        from benchmarks import longbench_v2 as lb

        budget = length - self.reserve
        if budget <= 0:
            raise NotRun(f"length {length} is too short: {self.reserve} tokens are reserved "
                         f"for the answer (params.reserve)")
        out = []
        for item in self.items()[:n]:
            text = lb.truncate_middle(lb.fill_template(lb.TEMPLATE_0SHOT, item), tokenizer,
                                      budget)
            prompt = lb.completion_prompt(text) if self.completion else lb.as_chat(text,
                                                                                   tokenizer)
            out.append(Sample(prompt, lb.MAX_NEW_TOKENS, [item["answer"]],
                              add_special_tokens=self.completion, meta={"item": item}))
        return out

    def score(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]
              ) -> TaskScore:
        from benchmarks import longbench_v2 as lb

        prefix = lb.COMPLETION_ANSWER_PREFIX if self.completion else ""
        records = [lb.judge(s.meta["item"], prefix + p)
                   for s, p in zip(samples, predictions, strict=True)]
        acc = lb.accuracy(records)
        return TaskScore(acc["overall"], [100.0 * r["judge"] for r in records],
                         {k: acc[k] for k in self.BREAKDOWN})


class HelmetRecall:
    name = "helmet_recall"
    PARAMS = ("essay_path", "seed", "shots")

    def __init__(self, entry: BenchmarkEntry):
        from benchmarks import helmet_recall as hr

        p = entry.params
        check_params(self.name, p, self.PARAMS)
        self._tasks = check_tasks(self.name, entry.tasks, list(hr.RECALL_TASKS))
        self.essay_path = data_file(self.name, p, "essay_path", "POLICYLONG_ESSAYS",
                                    "PaulGrahamEssays.json")
        self.seed, self.shots = int(p.get("seed", hr.SEED)), int(p.get("shots", hr.SHOTS))
        self._essay: list[str] | None = None

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def essay(self) -> list[str]:
        from benchmarks import helmet_recall as hr

        if self._essay is None:
            try:
                self._essay = hr.essay_words(self.essay_path)
            except Exception as exc:  # noqa: BLE001 - offline, or the hub route failed
                raise NotRun(f"essay haystack unavailable: {type(exc).__name__}: {exc}") from None
        return self._essay

    def samples(self, task: str, length: int, tokenizer: Any, n: int) -> list[Sample]:
        from benchmarks import helmet_recall as hr

        t = hr.TASKS[task]
        try:
            if task == "json_kv":
                recs = [hr.prepare_json_kv(r, self.shots) for r in
                        hr.generate_json_kv(tokenizer, length, n, self.shots, self.seed)]
            else:
                essay = self.essay() if hr.NIAH_CONFIGS[task].type_haystack == "essay" else None
                recs = [hr.prepare_ruler(r) for r in
                        hr.generate_niah(task, tokenizer, length, n, essay, self.seed)]
        except hr.LengthTooSmall as exc:
            raise NotRun(f"length {length} is too short for {task} ({exc})") from None
        stop = hr.STOP_NEW_LINE if t.stop_new_line else None
        return [Sample(hr.render_prompt(t, r), t.generation_max_length, list(r["answer"]),
                       stop=stop, meta={"record": r}) for r in recs]

    def score(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]
              ) -> TaskScore:
        from benchmarks import helmet_recall as hr

        t = hr.TASKS[task]
        per = [100.0 * hr.score_output(t, s.meta["record"], p)[t.metric]
               for s, p in zip(samples, predictions, strict=True)]
        return TaskScore(sum(per) / len(per), per)


class Helmet:
    """HELMET: Recall generated here (as ``helmet_recall``); RAG (kilt_*) and re-rank
    (msmarco_rerank_psg) from a HELMET data folder at HELMET's lengths (4K-128K); cite, longqa,
    summ and icl are reported as not run with their reason (``helmet_recall.NOT_IMPLEMENTED``).
    params: ``data_dir`` (env ``POLICYLONG_HELMET_DATA``), ``essay_path``, ``seed``, ``shots``.
    The per-length average is the mean over the tasks that ran (HELMET's own tables average
    per category)."""

    name = "helmet"
    PARAMS = ("data_dir", "essay_path", "seed", "shots")

    def __init__(self, entry: BenchmarkEntry):
        from benchmarks import helmet_recall as hr

        p = entry.params
        check_params(self.name, p, self.PARAMS)
        known = [t for tasks in hr.CATEGORIES.values() for t in tasks]
        self._tasks = check_tasks(self.name, entry.tasks, known)
        self.recall = HelmetRecall(BenchmarkEntry(
            name="helmet_recall", tasks=[t for t in self._tasks if t in hr.RECALL_TASKS],
            params={k: v for k, v in p.items() if k in HelmetRecall.PARAMS}))
        given = p.get("data_dir") or os.environ.get("POLICYLONG_HELMET_DATA")
        self.data_dir = hr.resolve_data_dir(given)
        if given and self.data_dir is None:
            raise FileNotFoundError(f"{self.name}: HELMET data folder not found: {given}")
        self.shots, self.seed = self.recall.shots, self.recall.seed
        self._loaded: dict[tuple[str, int, int], Any] = {}

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def _category_data(self, task: str, length: int, n: int):
        from benchmarks import helmet_recall as hr

        category = next(c for c, tasks in hr.CATEGORIES.items() if task in tasks)
        key = (category, length, n)
        if key not in self._loaded:
            self._loaded[key] = hr.load_category(category, [length], data_dir=self.data_dir,
                                                 shots=self.shots, max_test_samples=n,
                                                 seed=self.seed)
        return self._loaded[key]

    def samples(self, task: str, length: int, tokenizer: Any, n: int) -> list[Sample]:
        from benchmarks import helmet_recall as hr

        if task in hr.RECALL_TASKS:
            return self.recall.samples(task, length, tokenizer, n)
        cat = self._category_data(task, length, n)
        reason = cat.skipped.get(f"{task}@{length}") or cat.not_run
        if reason:
            raise NotRun(reason.removeprefix("not run: "))
        t = hr.TASKS[task]
        out = []
        for rec in cat.samples[(task, length)][:n]:
            prompt = hr.fit_prompt(t, rec, tokenizer, length)[0]
            refs = [rec["answer"]] if isinstance(rec["answer"], str) else list(rec["answer"])
            out.append(Sample(prompt, t.generation_max_length, refs,
                              stop=hr.STOP_NEW_LINE if t.stop_new_line else None,
                              meta={"record": rec}))
        return out

    def score(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]
              ) -> TaskScore:
        return self.recall.score(task, samples, predictions)
