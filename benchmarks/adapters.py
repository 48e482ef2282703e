"""Evaluation adapters (``harness.evaluation.runner.Benchmark``) for RULER, LongBench-v2 and HELMET
Recall, registered in ``harness.registry.BENCHMARKS``. Each is built from the spec's
``BenchmarkEntry`` (``name``, ``tasks``, ``params``); an unknown task or param is an error.

Data files, in this order: the entry's ``params``; an environment variable (a location);
the staged copy in ``../shared/data`` next to the repository (``$POLICYLONG_SHARED_DATA``
names another folder; an empty one simulates a fresh clone) if present; else the online route
(Hugging Face hub); when the corpus is the sandbox, ``ruler`` and ``longbench_v2`` then fall
back on substitutes generated from the sandbox world (below), labelled as such in their
provenance (``substitutes``) and in the reports; otherwise the task is reported as not run
with the reason.

- ``ruler``: tasks = the entry's or all 13. params: ``essay_path`` (RULER's
  ``PaulGrahamEssays.json``; env ``POLICYLONG_ESSAYS``), ``squad_path`` (qa_1, SQuAD v2 dev),
  ``hotpotqa_path`` (qa_2, HotpotQA distractor dev), ``seed`` (42). qa_1/qa_2 without their
  file, and a length too short for a task (RULER's ``TooShort``), are not run.
  ``sandbox_dir`` (the built sandbox; set by the runner when the spec's corpus is the
  sandbox): without the essays, the essay tasks use the sandbox's filler as the haystack
  (``harness.api.world.haystack``, in the essays file's schema).
- ``longbench_v2``: one task, ``overall``, with ``easy/hard/short/medium/long`` logged beside it.
  params: ``path`` (official schema; env ``POLICYLONG_LONGBENCH_V2``), ``prompt``
  (``completion``, the default, for base models: the official text + "The correct answer is";
  or ``chat``: the official user message in the tokenizer's chat template), ``reserve``
  (tokens kept free for the answer: the prompt is middle-truncated to ``length - reserve``
  tokens, so prompt + generation fit ``length``, as for the other benchmarks; default 160).
  ``samples_per_task`` takes the file's first items. ``sandbox_dir`` (set by the runner for
  the sandbox): without a data file, multiple-choice items generated from the sandbox's
  test-split probe entities (``harness.api.world.mc_items``) in LongBench-v2's schema.
- ``helmet_recall``: json_kv, ruler_niah_mk_2, ruler_niah_mk_3, ruler_niah_mv, generated per
  tokenizer (``preset: official`` with ``data_dir``: HELMET's released files). params:
  ``essay_path`` (for ruler_niah_mv; env ``POLICYLONG_ESSAYS``), ``seed`` (42), ``shots`` (2),
  ``data_dir``.
- ``helmet``: the above plus RAG and re-rank from a HELMET data folder (``data_dir``, env
  ``POLICYLONG_HELMET_DATA``); the categories without a loader are reported as not run.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Sequence

from harness.api import PROBE_SPLITS, BenchmarkEntry, NotRun, Sample, TaskScore

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data() -> Path:
    """The folder of staged reference data: ``$POLICYLONG_SHARED_DATA`` or ``../shared/data``
    beside the repository."""
    return Path(os.environ.get("POLICYLONG_SHARED_DATA") or SHARED_DATA)


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
    """A data file from ``params[key]``, else ``$env``, else ``<shared_data()>/<staged>`` if
    present, else None (the online route). A file named explicitly must exist."""
    for given, where in ((params.get(key), f"params.{key}"),
                         (os.environ.get(env) if env else None, env)):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{bench}: {where}: file not found: {path}")
            return str(path)
    if staged and (shared_data() / staged).is_file():
        return str(shared_data() / staged)
    return None


def sandbox_folder(params: dict) -> Path | None:
    """``params.sandbox_dir``: the built sandbox whose world stands in for absent data (the
    runner sets it when the spec's corpus is the sandbox), or None."""
    given = params.get("sandbox_dir")
    return Path(given).expanduser() if given else None


def substitute_text(what: str, for_what: str, detail: str) -> str:
    """How a substitution is labelled in provenance and reports."""
    return f"{what} (substitute for {for_what}): {detail}"


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_record(path: str | os.PathLike | None) -> dict | None:
    """``{"path", "sha256", "bytes"}`` of a data file (hashed once per size and mtime)."""
    if not path:
        return None
    import hashlib

    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return {"path": str(p), "sha256": _SHA_CACHE[key], "bytes": st.st_size}


def _flag(bench: str, params: dict, key: str, default: bool = False) -> bool:
    v = params.get(key, default)
    if isinstance(v, str) and v.lower() in ("true", "false"):
        v = v.lower() == "true"
    if not isinstance(v, bool):
        raise ValueError(f"{bench}: params.{key} must be true or false, got {v!r}")
    return v


def _int_param(bench: str, params: dict, key: str, default: int, minimum: int = 0) -> int:
    """An integer parameter (``seed``, ``reserve``, ``cot_tokens``, ``shots``) of at least
    ``minimum``; a float, a bool or a string is refused by name rather than cast."""
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{bench}: params.{key} must be {what}, got {v!r}")
    return v


def _samples_param(bench: str, params: dict, default: str | int | None) -> str | int | None:
    """``params.samples``: "all", or a positive count (a seeded random sample)."""
    v = params.get("samples", default)
    if v is None or v == "all":
        return v
    try:
        n = int(v)
    except (TypeError, ValueError):
        n = 0
    if n <= 0 or isinstance(v, bool):
        raise ValueError(f"{bench}: params.samples must be 'all' or a positive count, got {v!r}")
    return n


class Ruler:
    name = "ruler"
    # sandbox_split is accepted for the runner's sake and unused: the haystack has no entities
    PARAMS = ("essay_path", "squad_path", "hotpotqa_path", "seed", "sandbox_dir",
              "sandbox_split", "samples")
    OFFICIAL_SAMPLES = 500       # RULER's num_samples (scripts/config_tasks.sh)
    uses_sandbox = True     # the runner passes params.sandbox_dir for a sandbox corpus

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
        self.seed = _int_param(self.name, p, "seed", DEFAULT_SEED)
        self.sandbox_dir = sandbox_folder(p)
        self._substitute: tuple[tuple[str, ...], dict] | None = None  # (words, record)
        self._hub_failed: str | None = None
        self.preset = entry.preset
        self.official = self.preset == "official"
        self.n_samples = _samples_param(self.name, p, self.OFFICIAL_SAMPLES if self.official
                                        else None)
        if self.n_samples == "all":
            raise ValueError(f"{self.name}: params.samples must be a positive count (RULER "
                             f"generates its samples), got 'all'")
        self._chat: dict[int, Any] = {}
        if self.official:
            if entry.tasks is not None and set(self._tasks) != set(TASKS):
                missing = sorted(set(TASKS) - set(self._tasks))
                raise ValueError(f"{self.name}: preset official runs RULER's 13 tasks; the "
                                 f"entry leaves out {', '.join(missing)} (drop `tasks`, or use "
                                 f"preset harness)")
            from benchmarks.ruler.common import nltk_sentences

            nltk_sentences("Checked before any work. Punkt is installed.")   # clear error now

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def reference_tasks(self) -> list[str]:
        from benchmarks.ruler import TASKS

        return list(TASKS)          # RULER's average is over its 13 tasks

    def provenance(self) -> dict:
        from benchmarks.ruler import GENERATOR_VERSION
        from benchmarks.ruler.templates import TASKS

        essay = file_record(self.essay) or (
            "hub baber/paul_graham_essays" if any(
                TASKS[t].args.get("type_haystack") == "essay" for t in self._tasks) else None)
        subs = {}
        if self._substitute is not None:
            essay = self._substitute[1]
            subs["essay"] = substitute_text(
                "sandbox filler", "PaulGrahamEssays",
                f"the world's filler sentences (harness.sandbox.world.haystack "
                f"v{essay['version']}), because no essays file was found and the hub route "
                f"failed")
        return {"preset": self.preset,
                "data": {"generated": True, "generator": "benchmarks.ruler",
                         "version": GENERATOR_VERSION, "seed": self.seed,
                         "essay": essay,
                         "squad": file_record(self.qa["qa_1"]),
                         "hotpotqa": file_record(self.qa["qa_2"])},
                **({"substitutes": subs} if subs else {}),
                "template": self._template_record(),
                "sentence_split": "nltk.sent_tokenize (punkt_tab, English; RULER's)"
                if self.official else "regex (benchmarks.ruler.common.split_sentences)",
                "decoding": {"temperature": 0.0, "max_new_tokens": "per task (RULER's "
                             "tokens_to_generate: niah 128, vt 30, cwe 120, fwe 50, qa 32)"},
                "samples": {"selection": (f"{self.n_samples} generated per task and length "
                                          f"(params.samples)") if self.n_samples
                            else "eval.samples_per_task generated per task and length"}}

    def _template_record(self) -> str:
        if not self.official:
            return "RULER task templates + answer prefix, model template 'base'"
        chat = [c for c in self._chat.values() if c is not None]
        if chat:
            return ("RULER task templates in the model's chat template (user turn), answer "
                    "prefix after the generation prompt")
        return ("RULER task templates + answer prefix, model template 'base' (the tokenizer "
                "has no chat template)")

    def model_template(self, tokenizer: Any):
        """Under preset official, the tokenizer's chat template around the task (RULER's
        chat model templates), when it has one; else None (RULER's ``base``)."""
        if not self.official:
            return None
        key = id(tokenizer)
        if key not in self._chat:
            from benchmarks.ruler.templates import chat_model_template

            self._chat[key] = chat_model_template(tokenizer)
        return self._chat[key]

    def sandbox_haystack(self) -> tuple[str, ...] | None:
        """The sandbox's filler haystack, when the corpus is the sandbox and the essays are
        absent (no file, and the hub route failed once); else None."""
        from benchmarks.ruler.common import essay_words, text_words

        if self.essay is not None or self.sandbox_dir is None:
            return None
        if self._substitute is None and self._hub_failed is None:
            try:
                essay_words(None)
            except Exception as exc:  # noqa: BLE001 - offline, or the hub route failed
                self._hub_failed = f"{type(exc).__name__}: {exc}"
        if self._hub_failed is not None and self._substitute is None:
            import hashlib

            from harness.api import world

            text = world.haystack()["text"]
            self._substitute = (text_words(text), {
                "generated": True, "generator": "harness.sandbox.world.haystack",
                "version": world.HAYSTACK_VERSION, "seed": 0,
                "sentences": world.HAYSTACK_SENTENCES,
                "sha256": hashlib.sha256(text.encode()).hexdigest(),
                "hub_error": self._hub_failed[:300]})
        return self._substitute[0] if self._substitute else None

    def samples(self, task: str, length: int, tokenizer: Any, n: int) -> list[Sample]:
        from benchmarks import ruler
        from benchmarks.ruler.templates import TASKS

        essay = self.sandbox_haystack() if TASKS[task].args.get("type_haystack") == "essay" \
            else None
        template = self.model_template(tokenizer)
        n = self.n_samples or n
        try:
            recs = ruler.generate(task, tokenizer, length, n, seed=self.seed,
                                  essay_path=self.essay, qa_path=self.qa.get(task),
                                  essay=essay, model_template=template,
                                  sentence_split="nltk" if self.official else "regex")
        except ruler.NotRun as exc:
            reason = exc.reason
            if task in self.qa and self.qa[task] is None:
                key = "squad_path" if task == "qa_1" else "hotpotqa_path"
                reason = reason.replace("pass qa_path", f"set params.{key}")
            raise NotRun(reason) from None
        except ruler.TooShort as exc:
            raise NotRun(f"length {length} is too short for {task} ({exc})") from None
        # a chat template's text holds its own special tokens (BOS, if any)
        return [Sample(ruler.full_prompt(r), r["max_new_tokens"], list(r["outputs"]),
                       add_special_tokens=template is None)
                for r in recs]

    def score(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]
              ) -> TaskScore:
        from benchmarks.ruler.metrics import METRICS, metric_name, postprocess_pred, score_task

        refs = [s.references for s in samples]
        metric = METRICS[metric_name(task)]
        per = [metric([postprocess_pred(p)], [r]) for p, r in zip(predictions, refs, strict=True)]
        return TaskScore(score_task(task, predictions, refs), per)


class LongBenchV2:
    """LongBench-v2 in one of two presets (``entry.preset``; README, "Evaluation presets"):

    - ``harness`` (default): base-model completion prompt (or ``prompt: open``, the same
      without the answer prefix, or ``prompt: chat``), the prompt
      middle-truncated to ``length - reserve`` tokens, greedy, the file's first
      ``samples_per_task`` items, an empty output scored wrong.
    - ``official``: THUDM's ``pred.py``: the 0-shot (or CoT) user message through the model's
      chat template (a tokenizer without one is reported as not run), middle-truncated to
      120,000 tokens at 131,072 (``official_max_len``), temperature 0.1 (seeded per item),
      128 new tokens (1,024 for the CoT pass), every item (``samples: N`` for a seeded random
      sample of N), an item with an empty output dropped and counted (``dropped``).

    ``cot: true`` runs the two-pass CoT in either preset (the answer pass is a follow-up pass
    of the evaluation core). ``cot_tokens`` (preset harness; ours) caps the CoT pass's new
    tokens below pred.py's 1,024, for a model whose context cannot hold them (the sandbox's
    512-token base model writes a one-sentence CoT); the default reserve is then
    ``max(cot_tokens, 128) + 32``.
    """

    name = "longbench_v2"
    PARAMS = ("path", "prompt", "reserve", "cot", "cot_tokens", "samples", "seed",
              "sandbox_dir", "sandbox_split")
    uses_sandbox = True     # the runner passes params.sandbox_dir for a sandbox corpus
    BREAKDOWN = ("easy", "hard", "short", "medium", "long")

    def __init__(self, entry: BenchmarkEntry):
        from benchmarks import longbench_v2 as lb

        p = entry.params
        check_params(self.name, p, self.PARAMS)
        check_tasks(self.name, entry.tasks, ["overall"])
        self.preset = entry.preset
        self.official = self.preset == "official"
        self.path = data_file(self.name, p, "path", "POLICYLONG_LONGBENCH_V2",
                              "longbench_v2_sample.json")
        self.sandbox_dir = sandbox_folder(p)
        self.sandbox_split = str(p.get("sandbox_split", "test"))
        if self.sandbox_split not in PROBE_SPLITS:
            raise ValueError(f"{self.name}: params.sandbox_split must be one of "
                             f"{', '.join(PROBE_SPLITS)}, got {self.sandbox_split!r}")
        self.substitute: dict | None = None      # the substitute's data record
        prompt = p.get("prompt", "chat" if self.official else "completion")
        if prompt not in ("completion", "open", "chat"):
            raise ValueError(f"{self.name}: params.prompt must be 'completion', 'open' or "
                             f"'chat', got {prompt!r}")
        if self.official and prompt != "chat":
            raise ValueError(f"{self.name}: preset official sends the chat prompt (pred.py); "
                             f"params.prompt: {prompt} is for preset harness")
        if self.official and "reserve" in p:
            raise ValueError(f"{self.name}: preset official truncates to the official budget "
                             f"(120,000 tokens at 131,072); params.reserve is for preset harness")
        # completion and open (ours): a base model continues the official text; completion
        # ends it with the answer prefix, open with the separator alone, so that the model
        # writes the whole response (the official answer line included) and the official
        # regexes read it as written
        self.completion = prompt != "chat"
        # the line a completion prompt ends with, which an answer continues ("" otherwise)
        self.answer_prefix = lb.COMPLETION_ANSWER_PREFIX if prompt == "completion" else ""
        # the official answer line's opening words, which the official regexes look for
        self.answer_line = lb.COMPLETION_ANSWER_PREFIX
        self.cot = _flag(self.name, p, "cot")
        if "cot_tokens" in p and (not self.cot or self.official):
            raise ValueError(f"{self.name}: params.cot_tokens caps the CoT pass of preset harness "
                             f"(it needs cot: true and is not the official protocol)")
        self.cot_tokens = _int_param(self.name, p, "cot_tokens", lb.MAX_NEW_TOKENS_COT, 1)
        default_reserve = (max(self.cot_tokens, lb.MAX_NEW_TOKENS) if self.cot
                           else lb.MAX_NEW_TOKENS) + 32
        self.reserve = _int_param(self.name, p, "reserve", default_reserve, 1)
        self.samples_param = _samples_param(self.name, p, "all" if self.official else None)
        self.seed = _int_param(self.name, p, "seed", 0)
        self.temperature = lb.TEMPERATURE if self.official else 0.0
        self.drop_empty = self.official
        self.chat_template_sha256: str | None = None
        self._items: list[dict] | None = None
        if self.path is not None:    # a given file is read and checked now, before any run
            self.items()

    def tasks(self) -> list[str]:
        return ["overall"]

    def reference_tasks(self) -> list[str]:
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
                    why = (f"no LongBench-v2 file (params.path, POLICYLONG_LONGBENCH_V2 or "
                           f"{shared_data() / 'longbench_v2_sample.json'}) and the hub route "
                           f"failed: {type(exc).__name__}: {exc}")
                    if self.sandbox_dir is None:
                        raise NotRun(why) from None
                    self._items = self.sandbox_items(why)
                    self.substitute["hub_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return self._items

    def sandbox_items(self, why: str) -> list[dict]:
        """The sandbox's substitute: one multiple-choice item per probe entity of the split
        evaluated (``params.sandbox_split``: ``test`` in a comparison or ``policylong eval``,
        never the entities tuning scores; ``validation`` in tuning), none in the corpus or in
        pre-training (``harness.api.world.mc_items``), in LongBench-v2's schema."""
        import json

        from benchmarks import longbench_v2 as lb
        from harness.api import probe_split, world

        probe_file = self.sandbox_dir / "probe.jsonl"
        if not probe_file.is_file():
            raise NotRun(f"{why}; the sandbox substitute needs the built sandbox, and "
                         f"{probe_file} is missing (policylong sandbox build)")
        probe = [json.loads(line) for line in probe_file.read_text().splitlines()]
        items = world.mc_items(probe_split(probe, self.sandbox_split), seed=self.seed)
        lb.validate_items(items, f"sandbox multiple-choice from {probe_file}")
        start, end = PROBE_SPLITS[self.sandbox_split]
        self.substitute = {"generated": True, "generator": "harness.sandbox.world.mc_items",
                           "version": world.MC_VERSION, "seed": self.seed,
                           "entities": f"{self.sandbox_split} split of the probe entities "
                                       f"({start}-{end - 1})",
                           "probe": file_record(probe_file)}
        return items

    def select(self, n: int) -> list[dict]:
        """``samples: all`` → every item; ``samples: N`` → a seeded random N; else (preset
        harness) the first ``n`` (``eval.samples_per_task``)."""
        from benchmarks import longbench_v2 as lb

        items = self.items()
        if self.samples_param == "all":
            return list(items)
        if self.samples_param is not None:
            return lb.sample_items(items, self.samples_param, self.seed)
        return list(items[:n])

    def selection_text(self, n: int | None = None) -> str:
        total = len(self._items) if self._items is not None else None
        of = f" of {total}" if total is not None else ""
        if self.samples_param == "all":
            return f"all items{of}"
        if self.samples_param is not None:
            return (f"seeded random sample of {self.samples_param}{of} "
                    f"(random.Random({self.seed}).sample)")
        return f"the first eval.samples_per_task items{of}"

    def _budget(self, length: int) -> int:
        from benchmarks import longbench_v2 as lb

        if self.official:
            return lb.official_max_len(length)
        budget = length - self.reserve
        if budget <= 0:
            raise NotRun(f"length {length} is too short: {self.reserve} tokens are reserved "
                         f"for the answer (params.reserve)")
        return budget

    def _seed(self, item: dict, step: int) -> int | None:
        if not self.temperature:
            return None
        import zlib

        return zlib.crc32(f"{self.seed}:{item['_id']}:{step}".encode())

    def _format(self, text: str, tokenizer: Any, answer_pass: bool) -> str:
        from benchmarks import longbench_v2 as lb

        if self.completion:   # the CoT prompt already ends with "Let’s think step by step:"
            if not answer_pass:
                return text
            return (lb.completion_prompt(text) if self.answer_prefix
                    else text + lb.COMPLETION_SEPARATOR)
        return lb.as_chat(text, tokenizer)

    def samples(self, task: str, length: int, tokenizer: Any, n: int) -> list[Sample]:
        import hashlib

        from benchmarks import longbench_v2 as lb

        if not self.completion:
            if not lb.has_chat_template(tokenizer):
                raise NotRun(
                    f"the {'official preset' if self.official else 'chat prompt'} sends "
                    f"LongBench-v2's user message through the model's chat template, and this "
                    f"tokenizer has none (a base model): use preset harness (the completion "
                    f"prompt), or evaluate the instruction-tuned model")
            self.chat_template_sha256 = hashlib.sha256(
                str(tokenizer.chat_template).encode()).hexdigest()
        budget = self._budget(length)
        template = lb.TEMPLATE_0SHOT_COT if self.cot else lb.TEMPLATE_0SHOT
        max_new = self.cot_tokens if self.cot else lb.MAX_NEW_TOKENS
        out = []
        for item in self.select(n):
            text = lb.truncate_middle(lb.fill_template(template, item), tokenizer, budget)
            prompt = self._format(text, tokenizer, answer_pass=not self.cot)
            out.append(Sample(prompt, max_new, [item["answer"]],
                              add_special_tokens=self.completion, temperature=self.temperature,
                              seed=self._seed(item, 0), meta={"item": item, "budget": budget}))
        if self.official and length < lb.SERVER_MAX_LEN:
            for s in out:   # the ratio budget may leave too little room at short lengths
                used = len(tokenizer(s.prompt, add_special_tokens=False)["input_ids"])
                if used + max_new > length:
                    raise NotRun(f"length {length} is too short for the official budget "
                                 f"({budget} prompt tokens + chat template + {max_new} new "
                                 f"tokens)")
        return out

    def followup(self, task: str, samples: Sequence[Sample], predictions: Sequence[str],
                 tokenizer: Any, step: int = 1) -> list[Sample | None] | None:
        """CoT's answer pass (``0shot_cot_ans.txt`` with the stripped CoT); an empty CoT
        ends the item under the official preset (pred.py drops it)."""
        from benchmarks import longbench_v2 as lb

        if not self.cot or step > 1:
            return None
        out: list[Sample | None] = []
        for s, p in zip(samples, predictions, strict=True):
            cot = p.strip()
            s.meta["write"] = {"response_cot": cot}
            if self.drop_empty and p == "":
                out.append(None)
                continue
            item = s.meta["item"]
            text = lb.truncate_middle(lb.fill_template(lb.TEMPLATE_0SHOT_COT_ANS, item, cot=cot),
                                      tokenizer, s.meta["budget"])
            out.append(Sample(self._format(text, tokenizer, answer_pass=True),
                              lb.MAX_NEW_TOKENS, s.references,
                              add_special_tokens=self.completion,
                              temperature=self.temperature, seed=self._seed(item, 1),
                              meta={"item": item}))
        return out

    def score(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]
              ) -> TaskScore:
        from benchmarks import longbench_v2 as lb

        prefix = self.answer_prefix
        records, per, dropped = [], [], 0
        for s, p in zip(samples, predictions, strict=True):
            if self.drop_empty and p == "":
                dropped += 1
                per.append(float("nan"))
                s.meta.setdefault("write", {})["dropped"] = "empty output (pred.py drops it)"
                continue
            r = lb.judge(s.meta["item"], prefix + p)
            records.append(r)
            per.append(100.0 * r["judge"])
        breakdown: dict[str, float | None] = {k: None for k in self.BREAKDOWN}
        value = float("nan")
        if records:
            acc = lb.accuracy(records)
            value = acc["overall"]
            breakdown = {k: acc[k] for k in self.BREAKDOWN}
        if self.drop_empty:
            breakdown["dropped"] = float(dropped)
        return TaskScore(value, per, breakdown)

    def provenance(self) -> dict:
        from benchmarks import longbench_v2 as lb

        data = file_record(self.path) if self.path else {
            "source": f"hub {lb.HF_DATASET} (split {lb.HF_SPLIT})"}
        subs = {}
        if self.substitute is not None:
            data = self.substitute
            subs["data"] = substitute_text(
                "sandbox multiple-choice", "LongBench-v2",
                f"questions on planted facts of the {data['entities']} "
                f"(harness.sandbox.world.mc_items v{data['version']}, seed {data['seed']}), "
                f"because no LongBench-v2 file was found and the hub route failed")
        if self.completion and self.answer_prefix:
            fmt = (f"completion (ours, base models): the official text + "
                   f"{lb.COMPLETION_SEPARATOR!r} + {lb.COMPLETION_ANSWER_PREFIX!r}")
        elif self.completion:
            fmt = (f"open completion (ours, base models): the official text + "
                   f"{lb.COMPLETION_SEPARATOR!r}, the response read as written")
        else:
            fmt = "one user message through the model's chat template" + (
                f" (sha256 {self.chat_template_sha256})" if self.chat_template_sha256 else "")
        return {
            "preset": self.preset, "data": data,
            "template": ("prompts/0shot_cot.txt + prompts/0shot_cot_ans.txt (two passes)"
                         if self.cot else "prompts/0shot.txt") + f"; {fmt}",
            "truncation": ("middle, to 120,000 tokens at 131,072 (the same ratio below)"
                           if self.official else
                           f"middle, to length - {self.reserve} tokens (params.reserve)"),
            "decoding": {"temperature": self.temperature, "top_p": 1.0,
                         "max_new_tokens": lb.MAX_NEW_TOKENS,
                         **({"max_new_tokens_cot": self.cot_tokens} if self.cot else {}),
                         **({"seed": f"crc32('{self.seed}:<_id>:<pass>')"}
                            if self.temperature else {})},
            "empty_outputs": "dropped and counted (pred.py)" if self.drop_empty
            else "scored wrong",
            "samples": {"selection": self.selection_text()},
            **({"substitutes": subs} if subs else {}),
        }


class HelmetRecall:
    """HELMET's Recall category. ``preset: harness`` generates its samples per tokenizer;
    ``preset: official`` reads HELMET's released files (``data/json_kv/...``,
    ``data/ruler/<task>/validation_<L>.jsonl``) from ``params.data_dir`` (env
    ``POLICYLONG_HELMET_DATA``) when given, shuffled and cut to the sample count with HELMET's
    seed as HELMET does; a length HELMET has no file for is not run, saying so. Without a data
    folder the official preset generates as the harness one does (HELMET ships no generator),
    and its provenance says so."""
    name = "helmet_recall"
    PARAMS = ("essay_path", "seed", "shots", "data_dir")

    def __init__(self, entry: BenchmarkEntry):
        from benchmarks import helmet_recall as hr

        p = entry.params
        check_params(self.name, p, self.PARAMS)
        self._tasks = check_tasks(self.name, entry.tasks, list(hr.RECALL_TASKS))
        self.essay_path = data_file(self.name, p, "essay_path", "POLICYLONG_ESSAYS",
                                    "PaulGrahamEssays.json")
        self.seed = _int_param(self.name, p, "seed", hr.SEED)
        self.shots = _int_param(self.name, p, "shots", hr.SHOTS)
        self._essay: list[str] | None = None
        self.preset = entry.preset
        self.files = None
        given = p.get("data_dir") or os.environ.get("POLICYLONG_HELMET_DATA")
        if self.preset == "official" and given:
            self.files = hr.resolve_data_dir(given)
            if self.files is None:
                raise FileNotFoundError(f"{self.name}: HELMET data folder not found: {given}")

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def reference_tasks(self) -> list[str]:
        from benchmarks import helmet_recall as hr

        return list(hr.RECALL_TASKS)   # HELMET's Recall category

    def provenance(self) -> dict:
        from benchmarks import helmet_recall as hr

        if self.files is not None:
            data = {"generated": False, "data_dir": str(self.files),
                    "files": {f"{t}@{L}": file_record(hr.helmet_recall_file(self.files, t, L))
                              for t in self._tasks for L in hr.HELMET_LENGTHS
                              if hr.helmet_recall_file(self.files, t, L).is_file()},
                    "selection_seed": self.seed}
        else:
            data = {"generated": True, "generator": "benchmarks.helmet_recall",
                    "version": hr.GENERATOR_VERSION, "seed": self.seed,
                    "essay": file_record(self.essay_path) or (
                        "hub baber/paul_graham_essays"
                        if "ruler_niah_mv" in self._tasks else None),
                    **({"note": "preset official without HELMET's data folder: generated "
                                "(HELMET ships no generator)"}
                       if self.preset == "official" else {})}
        return {"preset": self.preset, "data": data,
                "template": f"HELMET recall templates, {self.shots}-shot (json_kv), no chat "
                            f"template (use_chat_template false for recall)",
                "decoding": {"temperature": 0.0, "max_new_tokens": "per task (HELMET's "
                             "generation_max_length)", "stop": "newline where HELMET stops"},
                "samples": {"selection": "eval.samples_per_task generated per task and length"}}

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
        if self.files is not None:      # HELMET's released file for this task and length
            f = hr.helmet_recall_file(self.files, task, length) \
                if length in hr.HELMET_LENGTHS else None
            if f is None or not f.is_file():
                raise NotRun(f"HELMET has no released file for {task} at {length}"
                             + (f" ({f} absent)" if f is not None else
                                f" (its lengths: {', '.join(map(str, hr.HELMET_LENGTHS))})"))
            recs = hr.shuffle_select(hr.read_jsonl(f), self.seed, n)
            recs = [hr.prepare_json_kv(r, self.shots) if task == "json_kv"
                    else hr.prepare_ruler(r) for r in recs]
            stop = hr.STOP_NEW_LINE if t.stop_new_line else None
            return [Sample(hr.fit_prompt(t, r, tokenizer, length)[0], t.generation_max_length,
                           list(r["answer"]), stop=stop, meta={"record": r}) for r in recs]
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
    # ``preset: official``: Recall from HELMET's released files when data_dir is given
    # (``HelmetRecall``), and the per-length average is HELMET's: the mean over categories of
    # each category's mean over its tasks (collect_results.custom_avgs), not a pooled mean

    def __init__(self, entry: BenchmarkEntry):
        from benchmarks import helmet_recall as hr

        p = entry.params
        check_params(self.name, p, self.PARAMS)
        known = [t for tasks in hr.CATEGORIES.values() for t in tasks]
        self._tasks = check_tasks(self.name, entry.tasks, known)
        self.recall = HelmetRecall(BenchmarkEntry(
            name="helmet_recall", tasks=[t for t in self._tasks if t in hr.RECALL_TASKS],
            preset=entry.preset,
            params={k: v for k, v in p.items() if k in HelmetRecall.PARAMS}))
        given = p.get("data_dir") or os.environ.get("POLICYLONG_HELMET_DATA")
        self.data_dir = hr.resolve_data_dir(given)
        if given and self.data_dir is None:
            raise FileNotFoundError(f"{self.name}: HELMET data folder not found: {given}")
        self.shots, self.seed = self.recall.shots, self.recall.seed
        self._loaded: dict[tuple[str, int, int], Any] = {}
        self.preset = entry.preset

    def average(self, scores: dict[str, float]) -> float | None:
        """The per-length average of the tasks that ran (``scores``: task → score): pooled
        under the harness preset; HELMET's under official, each category's mean over its
        tasks, then the mean over the categories."""
        from benchmarks import helmet_recall as hr

        if not scores:
            return None
        if self.preset != "official":
            return sum(scores.values()) / len(scores)
        cats = [[scores[t] for t in tasks if t in scores] for tasks in hr.CATEGORIES.values()]
        means = [sum(c) / len(c) for c in cats if c]
        return sum(means) / len(means)

    def tasks(self) -> list[str]:
        return list(self._tasks)

    def reference_tasks(self) -> list[str]:
        from benchmarks import helmet_recall as hr

        return [t for tasks in hr.CATEGORIES.values() for t in tasks]

    def provenance(self) -> dict:
        rec = self.recall.provenance()
        rec["data"] = {"recall": rec["data"], "data_dir": str(self.data_dir)
                       if self.data_dir else None}
        rec["template"] = "HELMET templates per category (" + rec["template"] + ")"
        rec["average"] = ("per category (the mean of its tasks that ran), then the mean over "
                          "the categories (HELMET's collect_results)" if self.preset == "official"
                          else "mean over the tasks that ran, pooled across categories (HELMET's "
                          "own tables average per category)")
        return rec

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
