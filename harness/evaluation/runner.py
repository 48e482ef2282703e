"""Evaluation: benchmarks × lengths through one greedy backend, scores to MLflow (DESIGN §4-§6).

    policylong eval runs/smoke.yaml --model PATH [--bench ruler ...] [--lengths 512 1024]
                                    [--backend vllm|hf] [-o key=value ...]
    evaluate_checkpoint(spec, model_path, out_dir, tracker=...)   # what compare, eval, tune call

``evaluate_checkpoint`` is the one evaluation of a checkpoint: the benchmarks scored by loss
(``LossBenchmark``: the sandbox probe) and those scored by generation (``evaluate``, below), the
short-context check, one MLflow key per metric (README "MLflow keys"), cached in ``eval.json``.

A benchmark is an adapter with four members (``Benchmark``), registered in
``harness.registry.BENCHMARKS`` as a lazy ``"module:Class"`` and built as ``Class(entry)`` from
the spec's ``BenchmarkEntry`` (an unknown param is an error there). The core does the rest, the
same way for every benchmark:

1. ``prepare``: ``samples_per_task`` samples per task and length, tokenized once. A task that
   cannot run at a length (missing data file, length too short for it) raises ``NotRun``; it is
   reported as not run with its reason and left out of the averages, never scored 0.
2. ``check_fits``: every prompt plus its generation budget must fit the model's maximum length,
   else ``PromptTooLong`` names the length and the limit, before anything is generated.
3. ``generate_all``: decoding through one backend (``harness.evaluation.backends``): one vLLM engine
   built at the largest length, or transformers ``generate``; greedy unless a sample asks for a
   temperature (LongBench-v2's official 0.1, seeded per sample). A benchmark with a
   ``followup`` member gets a second pass (LongBench-v2's CoT answer pass).
4. ``summarize``: the score per task and length, and per length the mean over the tasks that
   ran, with their count, the benchmark's reference task count and the missing tasks with
   their reasons. An average over fewer tasks than the reference's is labelled with its count
   (``avg11`` for 11 of RULER's 13), in the tables and in its MLflow key. ``log_results`` logs
   ``eval/<bench>/<task>/<length>`` and ``eval/<bench>/<avg label>/<length>`` (step 0) through
   ``harness.tracking``, and each benchmark's provenance (preset, data file and sha256 or
   generator, template, decoding, sample counts) as ``provenance.<bench>.*`` params;
   ``write_outputs`` writes ``<bench>.samples.jsonl`` (prompt tokens, prediction, references,
   score per sample) and ``results.json`` (with the provenance), logged as artifacts.

``evaluate_checkpoint`` also runs the short-context check
(``eval.short_context``: lm-eval stock tasks in a child process, ``run_short_context``); a
task whose dataset cannot be had is reported "not run: no data (...)", never scored.

Every sample of every benchmark fits its length: prompt tokens + the tokens it may generate
≤ length (RULER and HELMET size their haystacks so; LongBench-v2 truncates to the length minus
a reserve for the answer).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from harness import faults
from harness.config import BenchmarkEntry, Spec, spec_hash
from harness.tracking import NULL_TRACKER, Tracker, eval_key


class NotRun(Exception):
    """This task cannot run at this length here; ``reason`` says why (reported, never 0)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PromptTooLong(ValueError):
    """A prompt plus its generation does not fit the model's maximum length."""


@dataclass
class Sample:
    prompt: str                      # exactly what the model is given (text)
    max_new_tokens: int
    references: list[str]
    add_special_tokens: bool = True  # False when the prompt already holds them (chat template)
    stop: list[str] | None = None    # the prediction is cut at the first of these strings
    temperature: float = 0.0         # 0: greedy; else sampled (top-p 1, no top-k) with ``seed``
    seed: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # what ``score`` needs; not written out


@dataclass
class TaskScore:
    value: float                     # the task's score (0-100); averaged per length
    per_sample: list[float]          # 0-100 each, written with the samples
    breakdown: dict[str, float | None] = field(default_factory=dict)  # logged, not averaged


class Benchmark(Protocol):
    """What an evaluation benchmark implements; built as ``Class(entry: BenchmarkEntry)``."""

    name: str

    def tasks(self) -> list[str]:
        """The tasks to run: the entry's ``tasks`` or the benchmark's default list."""

    def samples(self, task: str, length: int, tokenizer: Any, n: int) -> list[Sample]:
        """``n`` samples (fewer if the data has fewer) whose prompt + ``max_new_tokens`` fit
        ``length`` tokens; raise ``NotRun`` when the task cannot run at this length."""

    def score(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]
              ) -> TaskScore:
        """Score the predictions (greedy continuations, cut at ``stop``) of ``samples``.
        A per-sample score of NaN marks a sample left out of the score (written as null)."""

    # Optional members (looked up with getattr):
    #   reference_tasks() -> list[str]: the reference's task list; an average over fewer is
    #       labelled ``avg<N>`` (default: ``tasks()``).
    #   provenance() -> dict: preset, data (path + sha256, or generator + seed + version),
    #       template, decoding; the core adds the sample counts.
    #   followup(task, samples, predictions, tokenizer, step) -> list[Sample | None] | None:
    #       generation pass ``step + 1`` from the last pass's predictions (None: no more); a
    #       None entry ends that sample with the prediction "".
    #   uses_sandbox = True (a class attribute): when the spec's corpus is the sandbox,
    #       ``load_benchmarks`` passes the sandbox's folder as ``params.sandbox_dir`` (unless
    #       the entry sets it) and the probe split being evaluated as
    #       ``params.sandbox_split`` (``test``; tuning: ``validation``), for substitutes of
    #       absent data drawn from that split's entities only; the benchmark names each
    #       substitution in ``provenance()["substitutes"]`` ({what: label}), which the tables
    #       and the comparison report show.


class LossBenchmark(Protocol):
    """A benchmark scored by loss on the model itself, no generation (the sandbox probe);
    built as ``Class(entry)`` like a ``Benchmark``."""

    name: str
    scored_by: str            # "loss"
    headline: str             # the metric logged as eval/<bench>/avg/<L>
    metrics: Sequence[str]    # every metric; the others are logged as eval/<bench>/<m>/<L>

    def score(self, model: Any, tokenizer: Any, spec: Spec, lengths: list[int], split: str,
              seed: int) -> dict[int, dict[str, float]]:
        """``{length: {metric: value}}`` on entity split ``split`` with ``seed``; lengths it
        cannot reach are left out; ``NotRun`` when it cannot run at all."""

    # Optional: not_run(spec) -> str | None: why it cannot run with this spec, checked
    # before the model is loaded.


@dataclass
class Unit:
    """One task of one benchmark at one length, from samples to score."""
    bench: str
    task: str
    length: int
    samples: list[Sample] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)     # int32 arrays: 4 bytes a token at 128K
    not_run: str | None = None
    predictions: list[str] = field(default_factory=list)
    new_tokens: int = 0
    seconds: float = 0.0
    score: TaskScore | None = None


# ---------------------------------------------------------------- benchmarks and the model

def benchmark_entries(spec: Spec, names: Sequence[str] | None = None) -> list[BenchmarkEntry]:
    """The spec's benchmarks, or those ``names`` (the spec's entry where it lists the name,
    else a default entry)."""
    listed = {e.name: e for e in spec.eval.benchmarks}
    if len(listed) != len(spec.eval.benchmarks):
        raise ValueError("eval.benchmarks: each benchmark may be listed once (its metrics are "
                         "keyed by its name)")
    if names is not None:
        return [listed.get(n) or BenchmarkEntry(name=n) for n in dict.fromkeys(names)]
    if not listed:
        raise ValueError("no benchmarks to run: list them under eval.benchmarks in the spec "
                         "or pass --bench NAME")
    return list(spec.eval.benchmarks)


def load_benchmarks(spec: Spec, names: Sequence[str] | None = None, split: str = "test"
                    ) -> list[Benchmark]:
    return [load_benchmark(with_sandbox(spec, e, split))
            for e in benchmark_entries(spec, names)]


def with_sandbox(spec: Spec, entry: BenchmarkEntry, split: str = "test") -> BenchmarkEntry:
    """``entry`` with ``params.sandbox_dir`` (the folder of the spec's sandbox, built or not)
    and ``params.sandbox_split`` (the probe split evaluated: ``test``, or ``validation`` in
    tuning) when the spec's corpus is the sandbox and the benchmark declares
    ``uses_sandbox``; the benchmark then substitutes the sandbox's own material for data
    that is absent, and says so in its provenance."""
    from harness.layout import sandbox_dir
    from harness.registry import resolve

    if spec.corpus.path != "sandbox" or \
            not getattr(resolve("benchmark", entry.name), "uses_sandbox", False):
        return entry
    given = {"sandbox_dir": str(sandbox_dir(spec.sandbox)), "sandbox_split": split}
    return entry.model_copy(update={"params": {**given, **entry.params}})


def load_benchmark(entry: BenchmarkEntry) -> Benchmark:
    """The registered adapter class for ``entry.name``, built from the entry."""
    from harness.registry import entries, resolve

    target = resolve("benchmark", entry.name)
    if not isinstance(target, type) or not all(
            callable(getattr(target, m, None)) for m in ("tasks", "samples", "score")):
        raise ValueError(f"benchmark '{entry.name}' ({entries('benchmark')[entry.name][0]}) is "
                         f"not an evaluation benchmark: its target must be a class with "
                         f"tasks(), samples() and score() (harness.evaluation.runner.Benchmark)")
    return target(entry)


def model_limit(model_path: str | Path) -> tuple[int, str]:
    """The longest sequence the model takes, and how it was derived (as vLLM derives it:
    ``max_position_embeddings``, times the RoPE factor for linear/dynamic scaling)."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(model_path))
    except OSError as exc:
        raise FileNotFoundError(f"model {model_path}: not a model folder (config.json) nor a "
                                f"reachable hub id ({exc})") from None
    mpe = int(cfg.max_position_embeddings)
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if rope.get("rope_type") in ("linear", "dynamic") and rope.get("factor"):
        return int(mpe * rope["factor"]), (f"max_position_embeddings {mpe} × {rope['rope_type']} "
                                           f"RoPE factor {rope['factor']}")
    return mpe, f"max_position_embeddings {mpe}"


def check_lengths(lengths: Sequence[int], limit: int, how: str, model_path) -> None:
    """Fail before any sample is built when a length exceeds the model's limit."""
    over = [n for n in lengths if n > limit]
    if over:
        raise PromptTooLong(f"length {over[0]} exceeds the model's maximum length {limit} "
                            f"({how}, {model_path}); evaluate at lengths ≤ {limit} or extend "
                            f"the model's context")


# ---------------------------------------------------------------- samples

def prepare_unit(bench: Benchmark, task: str, length: int, tokenizer, n: int) -> Unit:
    unit = Unit(bench.name, task, length)
    try:
        unit.samples = bench.samples(task, length, tokenizer, n)
    except NotRun as exc:
        unit.not_run = exc.reason
        return unit
    if not unit.samples:
        unit.not_run = "no samples"
    unit.ids = [np.asarray(tokenizer(s.prompt, add_special_tokens=s.add_special_tokens)
                           ["input_ids"], dtype=np.int32) for s in unit.samples]
    return unit


def prepare(benches: Sequence[Benchmark], tokenizer, lengths: Sequence[int], n: int
            ) -> list[Unit]:
    """Samples for every benchmark × task × length (no generation yet)."""
    return [prepare_unit(b, task, length, tokenizer, n)
            for b in benches for task in b.tasks() for length in lengths]


def check_fits(units: Sequence[Unit], limit: int, how: str, model_path) -> int:
    """The longest prompt + generation; ``PromptTooLong`` if one exceeds ``limit``."""
    longest = 0
    for u in units:
        for s, ids in zip(u.samples, u.ids):
            need = len(ids) + s.max_new_tokens
            if need > limit:
                raise PromptTooLong(
                    f"{u.bench}/{u.task} at length {u.length}: a prompt of {len(ids)} tokens "
                    f"+ {s.max_new_tokens} to generate exceeds the model's maximum length "
                    f"{limit} ({how}, {model_path})")
            longest = max(longest, need)
    return longest


# ---------------------------------------------------------------- generation and scores

def decode(tokenizer, ids: Sequence[int], stop: Sequence[str] | None) -> str:
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    for s in stop or ():
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    return text


def _generate(backend, tokenizer, stop_ids, samples: Sequence[Sample], ids, progress
              ) -> tuple[list[str], int]:
    """Predictions for ``samples`` (their token ``ids``) and the number of new tokens."""
    from harness.evaluation.backends import cut_at_stop

    kw = {}
    if any(s.temperature for s in samples):   # greedy-only backends keep their old signature
        kw = {"temperatures": [s.temperature for s in samples],
              "seeds": [s.seed for s in samples]}
    raw = backend.generate([x.tolist() if hasattr(x, "tolist") else list(x) for x in ids],
                           [s.max_new_tokens for s in samples], progress, **kw)
    preds = [decode(tokenizer, cut_at_stop(r, stop_ids), s.stop)
             for r, s in zip(raw, samples, strict=True)]
    return preds, sum(len(r) for r in raw)


def run_followups(bench: Benchmark, u: Unit, backend, tokenizer, stop_ids,
                  limit: int | None = None) -> None:
    """Further passes (``bench.followup``) until it returns None; the last pass's outputs are
    the unit's predictions."""
    follow = getattr(bench, "followup", None)
    step = 0
    while follow is not None:
        step += 1
        nxt = follow(u.task, u.samples, u.predictions, tokenizer, step)
        if nxt is None:
            return
        todo = [i for i, s in enumerate(nxt) if s is not None]
        samples = [nxt[i] for i in todo]
        ids = [tokenizer(s.prompt, add_special_tokens=s.add_special_tokens)["input_ids"]
               for s in samples]
        for s, x in zip(samples, ids):
            if limit is not None and len(x) + s.max_new_tokens > limit:
                raise PromptTooLong(f"{u.bench}/{u.task} at length {u.length}: a follow-up "
                                    f"prompt of {len(x)} tokens + {s.max_new_tokens} to "
                                    f"generate exceeds the model's maximum length {limit}")
        t0 = time.perf_counter()
        preds, new = _generate(backend, tokenizer, stop_ids, samples, ids, None) if samples \
            else ([], 0)
        u.seconds += time.perf_counter() - t0
        u.new_tokens += new
        out = [""] * len(nxt)
        for i, p in zip(todo, preds):
            out[i] = p
        u.predictions = out


def generate_all(units: Sequence[Unit], backend, tokenizer, stop_ids: Sequence[int],
                 benches: Sequence[Benchmark] = (), limit: int | None = None) -> None:
    """Predictions for every unit that runs (greedy unless a sample sets a temperature), with
    a progress bar per benchmark, then the benchmark's follow-up passes if it has any."""
    from tqdm.auto import tqdm

    by_name = {b.name: b for b in benches}
    for bench in dict.fromkeys(u.bench for u in units):
        todo = [u for u in units if u.bench == bench and u.not_run is None]
        with tqdm(total=sum(len(u.samples) for u in todo), desc=f"eval {bench}",
                  unit="sample", disable=None) as bar:
            for u in todo:
                t0 = time.perf_counter()
                u.predictions, u.new_tokens = _generate(backend, tokenizer, stop_ids, u.samples,
                                                        u.ids, bar.update)
                u.seconds = time.perf_counter() - t0
                if bench in by_name:
                    run_followups(by_name[bench], u, backend, tokenizer, stop_ids, limit)


def score_all(benches: Sequence[Benchmark], units: Sequence[Unit]) -> None:
    by_name = {b.name: b for b in benches}
    for u in units:
        if u.not_run is None:
            u.score = by_name[u.bench].score(u.task, u.samples, u.predictions)


def average_label(num_tasks: int, reference_tasks: int | None) -> str:
    """``avg`` for a mean over all of the reference's tasks, else ``avg<N>`` (N tasks ran)."""
    if reference_tasks is None or num_tasks >= reference_tasks:
        return "avg"
    return f"avg{num_tasks}"


def reference_tasks(bench: Benchmark) -> list[str]:
    ref = getattr(bench, "reference_tasks", None)
    return list(ref()) if callable(ref) else list(bench.tasks())


def summarize(units: Sequence[Unit], benches: Sequence[Benchmark] = ()) -> dict[str, dict]:
    """Per benchmark: scores per task and length, the extra breakdowns, the mean per length
    over the tasks that ran (with their count and names, its label, the reference's task
    count and the missing tasks with why), what did not run and why, the generation
    throughput, and (with ``benches``) the provenance with the sample counts."""
    out: dict[str, dict] = {}
    refs = {b.name: reference_tasks(b) for b in benches}
    for u in units:
        b = out.setdefault(u.bench, {"tasks": {}, "breakdown": {}, "average": {}, "not_run": {},
                                     "generation": {"samples": 0, "prompt_tokens": 0,
                                                    "new_tokens": 0, "seconds": 0.0}})
        length = str(u.length)
        if u.not_run is not None:
            b["tasks"].setdefault(u.task, {})[length] = None
            b["not_run"].setdefault(u.task, {})[length] = u.not_run
            continue
        b["tasks"].setdefault(u.task, {})[length] = u.score.value
        for key, value in u.score.breakdown.items():
            b["breakdown"].setdefault(key, {})[length] = value
        g = b["generation"]
        g["samples"] += len(u.samples)
        g["prompt_tokens"] += sum(len(x) for x in u.ids)
        g["new_tokens"] += u.new_tokens
        g["seconds"] += u.seconds
    by_name = {bn.name: bn for bn in benches}
    for name, b in out.items():
        # a benchmark may define its own average over the tasks that ran (HELMET's official
        # preset: per category, then across categories); else the plain mean
        own = getattr(by_name.get(name), "average", None)
        lengths = sorted({ln for per in b["tasks"].values() for ln in per}, key=int)
        for ln in lengths:
            ran = {t: per[ln] for t, per in b["tasks"].items()
                   if per.get(ln) is not None and not math.isnan(per[ln])}
            mean = own(ran) if callable(own) else (sum(ran.values()) / len(ran) if ran else None)
            b["average"][ln] = {"mean": mean, "num_tasks": len(ran), "tasks": sorted(ran)}
        g = b["generation"]
        g["new_tokens_per_s"] = g["new_tokens"] / g["seconds"] if g["seconds"] else None
    for name, b in out.items():
        ref = refs.get(name) or list(b["tasks"])
        for ln, a in b["average"].items():
            a["reference_tasks"] = len(ref)
            a["label"] = average_label(a["num_tasks"], len(ref)) if a["num_tasks"] else "avg"
            a["missing"] = {t: b["not_run"].get(t, {}).get(ln) or (
                "no score" if t in b["tasks"] else "not selected in the entry's tasks")
                for t in ref if t not in a["tasks"]}
    for name, b in out.items():
        if name in by_name:
            b["provenance"] = provenance(by_name[name], [u for u in units if u.bench == name])
    return out


def provenance(bench: Benchmark, units: Sequence[Unit]) -> dict:
    """The benchmark's own record (``provenance()``: preset, data, template, decoding) and
    the number of samples scored per task and length."""
    own = getattr(bench, "provenance", None)
    rec = dict(own()) if callable(own) else {"preset": "harness", "data": "unknown"}
    counts: dict[str, dict[str, int]] = {}
    for u in units:
        if u.not_run is None:
            counts.setdefault(u.task, {})[str(u.length)] = len(u.samples)
    rec["samples"] = {"total": sum(n for per in counts.values() for n in per.values()),
                      "per_task_length": counts, **rec.get("samples", {})}
    return rec


# ---------------------------------------------------------------- results

def _label(a: dict) -> str:
    return a.get("label", "avg")     # results written before labels: the plain average


def metrics(summary: dict[str, dict]) -> dict[str, float]:
    """``eval/<bench>/<task>/<length>`` for every score (breakdowns included) and
    ``eval/<bench>/<avg label>/<length>`` where at least one task ran (``avg`` over all of the
    reference's tasks, ``avg11`` over 11 of them). Not-run tasks have no key."""
    out: dict[str, float] = {}
    for bench, b in summary.items():
        for per in (b["tasks"], b["breakdown"]):
            for task, by_len in per.items():
                out.update({eval_key(bench, task, ln): v for ln, v in by_len.items()
                            if v is not None and not math.isnan(v)})
        out.update({eval_key(bench, _label(a), ln): a["mean"]
                    for ln, a in b["average"].items() if a["num_tasks"]})
    return out


def provenance_params(summary: dict[str, dict]) -> dict[str, str]:
    """``provenance.<bench>.<field>`` for the MLflow run (values as compact JSON)."""
    out = {}
    for bench, b in summary.items():
        for key, value in (b.get("provenance") or {}).items():
            out[f"provenance.{bench}.{key}"] = value if isinstance(value, str) else \
                json.dumps(value, sort_keys=True, separators=(",", ":"))
    return out


def samples_file(out_dir: Path, bench: str) -> Path:
    return Path(out_dir) / f"{bench}.samples.jsonl"


def results_file(out_dir: Path) -> Path:
    return Path(out_dir) / "results.json"


def _write_atomic(path: Path, lines: Sequence[str]) -> Path:
    from harness.fileio import atomic_write_lines
    return atomic_write_lines(path, lines)


def write_outputs(out_dir: Path, units: Sequence[Unit], results: dict) -> list[Path]:
    """Per benchmark a samples jsonl (one line per sample), then ``results.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for bench in dict.fromkeys(u.bench for u in units):
        lines = []
        for u in (u for u in units if u.bench == bench and u.score is not None):
            for i, (s, ids, pred, sc) in enumerate(zip(u.samples, u.ids, u.predictions,
                                                       u.score.per_sample, strict=True)):
                row = {"task": u.task, "length": u.length, "index": i,
                       "prompt_tokens": len(ids), "prediction": pred,
                       "references": s.references,
                       "score": None if sc is None or math.isnan(sc) else sc}
                row.update(s.meta.get("write", {}))   # e.g. the CoT, or why it was dropped
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(_write_atomic(samples_file(out_dir, bench), lines))
    paths.append(_write_atomic(results_file(out_dir), [json.dumps(results, indent=2) + "\n"]))
    return paths


def log_results(tracker: Tracker, results: dict, paths: Sequence[Path]) -> None:
    tracker.log_metrics(metrics(results["benchmarks"]), step=0)
    tracker.log_params(provenance_params(results["benchmarks"]))
    for bench, b in results["benchmarks"].items():
        if b["not_run"]:
            tracker.set_tags({f"eval/{bench}/not_run": "; ".join(
                f"{t}@{ln}: {r}" for t, per in b["not_run"].items() for ln, r in per.items())})
    for p in paths:
        tracker.log_artifact(p, "eval")


def _cell(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def group_missing(missing: dict[str, str]) -> str:
    """``{task: reason}`` as ``"a, b: reason; c: other reason"`` (tasks grouped by reason)."""
    by: dict[str, list[str]] = {}
    for task, reason in missing.items():
        by.setdefault(reason, []).append(task)
    return "; ".join(f"{', '.join(ts)}: {r}" for r, ts in by.items())


def average_notes(bench: str, average: dict) -> list[str]:
    """One line per partial-average label: what it averages and what it leaves out, why."""
    notes, seen = [], set()
    for a in average.values():
        if _label(a) == "avg" or _label(a) in seen:
            continue
        seen.add(_label(a))
        missing = group_missing(a.get("missing") or {})
        notes.append(f"{bench} {_label(a)}: mean of {a['num_tasks']} of the reference's "
                     f"{a.get('reference_tasks', '?')} tasks, not comparable with a published "
                     f"{a.get('reference_tasks', '?')}-task average" + (
                         f"; missing: {missing}" if missing else ""))
    return notes


def format_table(results: dict) -> str:
    """A short table: one row per task (and breakdown), one column per length, then the
    average row labelled with its task count (``avg11 (11/13)``) when it covers fewer tasks
    than the reference, then what did not run and what each partial average leaves out."""
    lengths = [str(n) for n in results["lengths"]]
    rows = [["benchmark", "task", *lengths]]
    notes = []
    for bench, b in results["benchmarks"].items():
        for task, per in {**b["tasks"], **b["breakdown"]}.items():
            rows.append([bench, task, *(_cell(per.get(ln)) for ln in lengths)])
        avg = b["average"]
        labels = sorted({_label(a) for a in avg.values()}) or ["avg"]
        rows.append([bench, "/".join(labels) + " (tasks)", *(
            f"{_cell(avg[ln]['mean'])} ({avg[ln]['num_tasks']}"
            + (f"/{avg[ln]['reference_tasks']})" if _label(avg[ln]) != "avg" else ")")
            if ln in avg else "-" for ln in lengths)])
        for task, per in b["not_run"].items():
            reasons = sorted(set(per.values()))
            where = "all lengths" if len(per) == len(lengths) else ", ".join(per)
            notes.append(f"not run: {bench}/{task} ({where}): {'; '.join(reasons)}")
        notes += average_notes(bench, avg)
        prov = b.get("provenance")
        if prov:
            notes.append(f"provenance: {bench}: preset {prov.get('preset')}; "
                         f"{_data_text(prov.get('data'))}")
            notes += [f"substitute: {bench} {what}: {text}"
                      for what, text in (prov.get("substitutes") or {}).items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths))) for r in rows]
    return "\n".join(text + notes)


def _data_text(data) -> str:
    if isinstance(data, dict):
        if data.get("path"):
            return f"data {data['path']} (sha256 {str(data.get('sha256'))[:12]}…)"
        if data.get("generated"):
            return (f"generated by {data.get('generator')} v{data.get('version')} "
                    f"(seed {data.get('seed')})")
        return "data " + ", ".join(f"{k} {v}" for k, v in data.items())
    return f"data {data}"


# ---------------------------------------------------------------- the whole evaluation

def eval_dir(spec: Spec, model_path: str | Path) -> Path:
    """Where ``policylong eval`` puts one model's outputs (``harness.layout.model_eval_dir``)."""
    from harness.layout import model_eval_dir
    return model_eval_dir(spec, model_path)


def run_name(model_path: str | Path) -> str:
    from harness.layout import model_name
    return f"eval-{model_name(model_path)}"


def evaluate(spec: Spec, model_path: str | Path, out_dir: str | Path | None = None,
             tracker: Tracker = NULL_TRACKER, bench_names: Sequence[str] | None = None,
             benches: Sequence[Benchmark] | None = None, split: str = "test") -> dict:
    """Run ``spec.eval`` on the model at ``model_path`` (the spec's benchmarks, those named,
    or ``benches`` already built); return (and write, and log) the results. Everything that
    can fail on bad input fails before the backend starts. ``split``: the sandbox's probe
    split that substitutes may draw entities from (``with_sandbox``)."""
    from transformers import AutoTokenizer

    from harness.evaluation.backends import make_backend, stop_token_ids

    ev = spec.eval
    benches = list(benches) if benches is not None else load_benchmarks(spec, bench_names,
                                                                        split)
    limit, how = model_limit(model_path)
    check_lengths(ev.lengths, limit, how, model_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    units = prepare(benches, tokenizer, ev.lengths, ev.samples_per_task)
    longest = check_fits(units, limit, how, model_path)
    stops = stop_token_ids(model_path, tokenizer)
    if any(u.not_run is None for u in units):
        backend = make_backend(ev.backend, model_path, max(max(ev.lengths), longest), stops,
                               spec.model.dtype, spec.seed, ev.tensor_parallel_size,
                               ev.data_parallel_size)
        try:
            generate_all(units, backend, tokenizer, stops, benches, limit)
        finally:
            if hasattr(backend, "close"):
                backend.close()
    score_all(benches, units)
    results = {"model": str(model_path), "backend": ev.backend, "lengths": list(ev.lengths),
               "samples_per_task": ev.samples_per_task, "config_hash": spec_hash(spec),
               "benchmarks": summarize(units, benches)}
    paths = write_outputs(Path(out_dir) if out_dir else eval_dir(spec, model_path), units,
                          results)
    log_results(tracker, results, paths)
    return results


def format_loss(name: str, res: dict) -> str:
    """A loss-scored benchmark's table (``loss_benchmarks.json``), one row per length."""
    if res.get("not_run") and not res["lengths"]:
        return f"not run: {name}: {res['not_run']}"
    ms = res["metrics"]
    rows = [f"{name}  {'length':>7} " + " ".join(f"{m:>8}" for m in ms) + f" {'n':>4}"]
    for L, v in res["lengths"].items():
        rows.append(f"{name}  {L:>7} " + " ".join(f"{v[m]:8.3f}" for m in ms)
                    + f" {int(v.get('n', 0)):4d}")
    if res.get("not_run"):
        rows.append(f"not run: {name}: {res['not_run']}")
    return "\n".join(rows)


def format_outputs(out: str | Path) -> str:
    """The tables of an ``evaluate_checkpoint`` folder: generation results, then loss
    benchmarks."""
    out = Path(out)
    parts = []
    if results_file(out).exists():
        parts.append(format_table(json.loads(results_file(out).read_text())))
    loss = out / "loss_benchmarks.json"
    if loss.exists():
        parts += [format_loss(n, r) for n, r in json.loads(loss.read_text()).items()]
    return "\n".join(parts)


def eval_name(spec: Spec) -> str:
    """Evaluations are cached per evaluation settings, seed, model settings and the base
    model's identity (``harness.layout.model_identity``: a new sandbox recipe or retrained
    weights in the same folder is another model)."""
    from harness.config import stable_hash
    from harness.layout import model_identity
    from harness.registry import resolve

    key = {"eval": spec.eval.model_dump(mode="json"), "seed": spec.seed,
           "model": spec.model.model_dump(mode="json"), "base_model": model_identity(spec)}
    # a benchmark whose items changed declares a ``version``; an older one's scores are not
    # reused (benchmarks without it keep their keys)
    versions = {e.name: v for e in spec.eval.benchmarks
                if (v := getattr(resolve("benchmark", e.name), "version", None)) is not None}
    if versions:
        key["benchmark_versions"] = versions
    return "eval-" + stable_hash(key, 10)


def scored_by_loss(entry: BenchmarkEntry) -> bool:
    """Whether the registered benchmark is scored by loss on the model (``scored_by =
    "loss"``: the sandbox probe) rather than by generation."""
    from harness.registry import resolve

    return getattr(resolve("benchmark", entry.name), "scored_by", "generation") == "loss"


def run_loss_benchmarks(spec: Spec, entries: Sequence[BenchmarkEntry], model_path, tokenizer,
                        split: str, seed: int) -> dict[str, dict]:
    """Each loss-scored benchmark's ``{"lengths": {L: {metric: value}}, "not_run": reason,
    "headline", "metrics"}`` (``LossBenchmark``)."""
    from harness.registry import resolve
    from harness.training.model_io import load_eval_model

    out: dict[str, dict] = {}
    model = None
    for e in entries:
        bench = resolve("benchmark", e.name)(e)
        res: dict = {"lengths": {}, "not_run": None, "headline": bench.headline,
                     "metrics": list(bench.metrics)}
        try:
            reason = getattr(bench, "not_run", lambda spec: None)(spec)
            if reason:
                raise NotRun(reason)
            model = model if model is not None else load_eval_model(model_path)
            r = bench.score(model, tokenizer, spec, list(spec.eval.lengths), split, seed)
            res["lengths"] = {str(L): v for L, v in r.items()}
            short = [L for L in spec.eval.lengths if L not in r]
            if short:
                res["not_run"] = f"lengths {short}: too short for the benchmark's inputs"
        except NotRun as exc:
            res["not_run"] = str(exc)
        out[e.name] = res
    return out


def loss_averages(loss: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{"<bench>": {L: headline}, "<bench>/<metric>": {L: value}}`` of loss benchmarks."""
    out: dict[str, dict[str, float]] = {}
    for bench, res in loss.items():
        for L, v in res["lengths"].items():
            for m in res["metrics"]:
                key = bench if m == res["headline"] else f"{bench}/{m}"
                out.setdefault(key, {})[L] = v[m]
    return out


LEGACY_ENTRIES = {"probe_gain": "probe/gain"}   # eval.json files written before 0.2


def evaluate_checkpoint(spec: Spec, model_path: str | Path, out: str | Path, *,
                        tracker: Tracker = NULL_TRACKER, split: str = "test",
                        seed: int | None = None, cache: bool = True, tokenizer=None) -> dict:
    """The one evaluation of a checkpoint (``compare``, ``eval`` and ``tune`` call it): every
    benchmark of ``spec.eval``, those scored by loss (the sandbox probe, on entity split
    ``split`` with ``seed``) and those scored by generation (at the lengths the model
    reaches; others are skipped with a message), plus the short-context check when
    ``eval.short_context`` lists tasks. Writes ``out/results.json`` (generation results with
    provenance), ``out/loss_benchmarks.json`` and ``out/eval.json`` (the averages below, which
    is also the cache: with ``cache`` a finished evaluation is read back, not rerun), and logs
    every metric through ``tracker`` under one key each (README "MLflow keys").

    Returns ``{entry: {length: score}}``: ``<bench>`` or ``<bench>/avg<N>`` (generation; see
    ``compare_averages``), ``<bench>`` and ``<bench>/<metric>`` (loss benchmarks), and
    ``short_context/<task>``."""
    from transformers import AutoTokenizer

    from harness.fileio import atomic_write_text, locked

    out = Path(out)
    seed = spec.seed if seed is None else seed
    with locked(out, f"the evaluation {out}"):
        cached = out / "eval.json"
        if cache and cached.exists():
            ev = {LEGACY_ENTRIES.get(k, k): v for k, v in json.loads(cached.read_text()).items()}
            log_averages(tracker, ev)
            return ev
        entries = list(spec.eval.benchmarks)
        by_loss = [e for e in entries if scored_by_loss(e)]
        generated = [e.name for e in entries if not scored_by_loss(e)]
        ev: dict = {}
        tok = tokenizer or AutoTokenizer.from_pretrained(str(model_path))
        if by_loss:
            loss = run_loss_benchmarks(spec, by_loss, model_path, tok, split, seed)
            ev.update(loss_averages(loss))
            ev.update(loss_not_run(loss, spec.eval.lengths))
            out.mkdir(parents=True, exist_ok=True)
            path = _write_atomic(out / "loss_benchmarks.json", [json.dumps(loss, indent=2)])
            tracker.log_artifact(path, "eval")
        if generated:
            limit, how = model_limit(model_path)
            lengths = [L for L in spec.eval.lengths if L <= limit]
            if lengths:
                sub = spec.model_copy(update={"seed": seed, "eval": spec.eval.model_copy(
                    update={"lengths": lengths})})
                ev.update(compare_averages(evaluate(sub, model_path, out, tracker=tracker,
                                                   bench_names=generated, split=split)))
            skipped = [L for L in spec.eval.lengths if L > limit]
            if skipped:
                print(f"[eval] {model_path}: lengths {skipped} exceed its context ({limit}); "
                      f"generation benchmarks not run there", file=sys.stderr, flush=True)
                why = f"length past the model's context ({limit} tokens: {how})"
                for name in generated:
                    ev[not_run_entry(name, ALL_TASKS, why)] = {str(L): None for L in skipped}
        if spec.eval.short_context:
            ev.update(short_context_scores(run_short_context(spec, model_path, out)))
        faults.point("eval")
        log_averages(tracker, ev)
        atomic_write_text(cached, json.dumps(ev, indent=2))
        return ev


def log_averages(tracker: Tracker, ev: dict[str, dict]) -> None:
    """Each entry of ``evaluate_checkpoint``'s result per length, as
    ``eval/<bench>/<avg label or metric>/<length>`` (entries that record a not-run reason
    are not metrics)."""
    from harness.tracking import eval_avg_key

    metrics = {}
    for entry, per_len in ev.items():
        if f"/{NOT_RUN_KEY}/" in entry or f"/{SUBSTITUTE_KEY}/" in entry:
            continue
        for L, v in per_len.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                metrics[eval_avg_key(entry, L)] = v
    tracker.log_metrics(metrics, 0)


# ---------------------------------------------------------------- the short-context check

SHORT_CONTEXT = "short_context"
_SHORT_DATA: dict[str, str | None] = {}     # task -> why its data cannot be had (None: it can)


def _lm_eval_task_dir(task: str) -> Path | None:
    """The folder of a stock lm-eval task (indexing only it takes a second; the whole task
    tree takes about half a minute)."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    folder = {"arc_challenge": "arc", "arc_easy": "arc", "lambada_openai": "lambada",
              "lambada_standard": "lambada", "winogrande": "winogrande"}.get(task, task)
    return root / folder if (root / folder).is_dir() else None


def short_context_data(task: str) -> str | None:
    """None when the task and its dataset can be loaded here, else why not (cached)."""
    if task not in _SHORT_DATA:
        try:
            from lm_eval.tasks import TaskManager

            folder = _lm_eval_task_dir(task)
            tm = TaskManager(include_path=str(folder), include_defaults=False) if folder \
                else TaskManager()
            if task not in tm.all_tasks:
                _SHORT_DATA[task] = f"lm-eval has no task '{task}'"
                return _SHORT_DATA[task]
            tm.load_task_or_group([task])
            _SHORT_DATA[task] = None
        except Exception as exc:  # noqa: BLE001 - offline hub, missing dataset
            _SHORT_DATA[task] = f"no data ({type(exc).__name__}: {str(exc)[:200]})"
    return _SHORT_DATA[task]


def _short_metric(task_results: dict) -> tuple[str | None, float | None]:
    for name in ("acc_norm,none", "acc,none"):
        if task_results.get(name) is not None:
            return name.split(",")[0], 100.0 * float(task_results[name])
    return None, None


def run_short_context(spec: Spec, model_path: str | Path, out_dir: str | Path) -> dict:
    """lm-eval's stock tasks (``eval.short_context``, 0-shot, ``acc_norm`` where the task
    reports it, else ``acc``; ×100) on the model through the spec's backend (lm-eval's
    ``vllm`` or ``hf``). A task whose dataset cannot be had is "not run: no data (...)". Written
    to ``<out_dir>/short_context.json``: ``{task: {"score", "metric", "not_run"}}``."""
    tasks = list(dict.fromkeys(spec.eval.short_context))
    out: dict[str, dict] = {t: {"score": None, "metric": None,
                                "not_run": short_context_data(t)} for t in tasks}
    ready = [t for t in tasks if out[t]["not_run"] is None]
    if ready:
        try:
            res = _lm_eval_run(spec, model_path, ready)
            for t in ready:
                metric, score = _short_metric(res.get(t, {}))
                out[t].update(score=score, metric=metric,
                              not_run=None if score is not None else "no acc metric reported")
        except Exception as exc:  # noqa: BLE001 - reported per task, never scored 0
            for t in ready:
                out[t]["not_run"] = f"lm-eval failed ({type(exc).__name__}: {str(exc)[:200]})"
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    _write_atomic(d / "short_context.json", [json.dumps(out, indent=2) + "\n"])
    return out


def _lm_eval_run(spec: Spec, model_path: str | Path, tasks: list[str],
                 include_path: str | Path | None = None) -> dict:
    """lm-eval's command line in a child process (``harness.evaluation.lm_eval_adapter``: vLLM's workers
    and memory end with it, so it never competes with the evaluation engine)."""
    import subprocess
    import sys
    import tempfile

    args = f"pretrained={model_path},dtype={spec.model.dtype}"
    if spec.eval.backend == "vllm":
        args += f",seed={spec.seed}"
        # lm-eval's vllm model takes both (its data parallel runs through ray)
        for key in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(spec.eval, key) > 1:
                args += f",{key}={getattr(spec.eval, key)}"
    with tempfile.TemporaryDirectory(prefix="short_context_") as tmp:
        cmd = [sys.executable, "-m", "harness.evaluation.lm_eval_adapter", "--model", spec.eval.backend,
               "--model_args", args, "--tasks", ",".join(tasks), "--batch_size", "1",
               "--seed", str(spec.seed), "--output_path", tmp]
        if spec.eval.short_context_limit:
            cmd += ["--limit", str(spec.eval.short_context_limit)]
        if include_path:
            cmd += ["--include_path", str(include_path)]
        r = subprocess.run(cmd, capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1])
        if r.returncode != 0:
            raise RuntimeError(f"lm-eval exited {r.returncode}: {r.stderr[-500:]}")
        files = sorted(Path(tmp).rglob("results_*.json"))
        if not files:
            raise RuntimeError("lm-eval wrote no results file")
        return json.loads(files[-1].read_text()).get("results", {})


def short_context_scores(short: dict) -> dict[str, dict[str, float | None]]:
    """For compare: ``short_context/<task>`` -> ``{"0": score}`` (logged as
    ``eval/short_context/<task>/0``) and ``short_context/not_run/<task>: <reason>`` ->
    ``{"0": None}`` (a footnote in the report's short-context table)."""
    out: dict[str, dict[str, float | None]] = {}
    for task, r in short.items():
        if r["score"] is not None:
            out[f"{SHORT_CONTEXT}/{task}"] = {"0": r["score"]}
        else:
            out[f"{SHORT_CONTEXT}/{NOT_RUN_KEY}/{task}: not run: {r['not_run']}"] = {"0": None}
    return out


NOT_RUN_KEY = "not_run"
SUBSTITUTE_KEY = "substitute"
ALL_TASKS = "all tasks"


def not_run_entry(bench: str, task: str, reason: str) -> str:
    """``<bench>/not_run/<task>: <reason>``: an entry of ``evaluate_checkpoint``'s result
    with ``None`` at the lengths where ``task`` did not run (``ALL_TASKS``: none ran); the
    report turns it into a footnote."""
    return f"{bench}/{NOT_RUN_KEY}/{task}: {reason}"


def loss_not_run(loss: dict[str, dict], lengths: Sequence[int]) -> dict[str, dict]:
    """``not_run_entry`` for each loss-scored benchmark at the lengths it has no score."""
    out = {}
    for bench, res in loss.items():
        missing = {str(L): None for L in lengths if str(L) not in res["lengths"]}
        if res.get("not_run") and missing:
            out[not_run_entry(bench, bench, res["not_run"])] = missing
    return out


def compare_averages(results: dict) -> dict[str, dict[str, float | None]]:
    """Per benchmark the average per length, keyed ``<bench>`` where it covers all of the
    reference's tasks and ``<bench>/avg<N>`` where it covers N of them (so that
    ``eval_avg_key`` makes ``eval/<bench>/avg<N>/<length>``); a length where no task ran has
    ``None`` under ``<bench>``. Each task not in an average adds
    ``<bench>/not_run/<task>: <reason>`` with ``None`` at those lengths, and each
    substitution of the benchmark's data (``provenance()["substitutes"]``)
    ``<bench>/substitute/<what>: <label>`` with ``None`` at every length (neither is logged as
    a metric; the report turns them into footnotes)."""
    out: dict[str, dict[str, float | None]] = {}
    for bench, b in results["benchmarks"].items():
        for ln, a in b["average"].items():
            label = _label(a) if a["num_tasks"] else "avg"
            key = bench if label == "avg" else f"{bench}/{label}"
            out.setdefault(key, {})[ln] = a["mean"]
            for task, reason in (a.get("missing") or {}).items():
                out.setdefault(not_run_entry(bench, task, reason), {})[ln] = None
        subs = (b.get("provenance") or {}).get("substitutes") or {}
        for what, text in subs.items():
            out[f"{bench}/{SUBSTITUTE_KEY}/{what}: {text}"] = {ln: None for ln in b["average"]}
    return out
