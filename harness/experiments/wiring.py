"""Wiring a spec to concrete inputs: model and corpus paths (building the sandbox when asked),
checks before any expensive work, methods, and the construction of one stage dataset. Output
paths come from ``harness.layout``.

"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from harness.config import Spec
from harness.layout import cache_dir, checkpoint_dir, dataset_dir
from harness.training.model_io import load_eval_model


def resolve_inputs(spec: Spec) -> tuple[Path | str, str]:
    """(base model path, corpus path); ``sandbox`` builds or finds the sandbox."""
    sandbox = None
    if spec.model.path == "sandbox" or spec.corpus.path == "sandbox":
        from harness.sandbox.build import build_sandbox
        sandbox = build_sandbox(spec.sandbox)
    model = sandbox / "model" if spec.model.path == "sandbox" else spec.model.path
    corpus = str(sandbox / "corpus.jsonl") if spec.corpus.path == "sandbox" else spec.corpus.path
    text = str(model)
    # a hub id is "name" or "org/name"; anything else is a local folder, checked as one
    if isinstance(model, Path) or Path(text).exists() or text.startswith(("/", ".", "~")) \
            or text.count("/") > 1:
        check_model_folder(Path(text).expanduser())
    return model, corpus


def check_model_folder(path: Path) -> None:
    """Before any work: an HF folder with safetensors weights. Pickle checkpoints
    (``pytorch_model.bin``, ``*.pt``) can run code when loaded and are refused; every load in
    the harness passes ``use_safetensors=True`` and never ``trust_remote_code``."""
    if not path.exists():
        raise FileNotFoundError(f"model.path {path}: no such folder (expected an HF model "
                                f"folder with config.json, or a hub id such as org/name)")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model.path {path}: no config.json (expected an HF model "
                                f"folder or a hub id)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        raise ValueError(f"model.path {path}: no *.safetensors weights"
                         + (f" (only pickle files: {', '.join(pickles)}, which can run code "
                            f"when loaded; convert them with `save_pretrained(..., "
                            f"safe_serialization=True)` in a trusted environment)"
                            if pickles else ""))


def preflight(spec: Spec) -> None:
    """Checks that need the model, before any expensive work: a training length past the
    model's positions needs a RoPE change in ``context_extension``."""
    from transformers import AutoConfig

    from harness.config import SpecError

    base, _ = resolve_inputs(spec)
    cfg = AutoConfig.from_pretrained(str(base))
    check_causal_lm(cfg, base)
    limit = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    ext = spec.context_extension
    T = spec.stages.target_length
    if limit and T > limit and ext.rope_theta is None and ext.rope_scaling == "none":
        raise SpecError(f"stages.target_length {T} exceeds the model's "
                        f"max_position_embeddings {limit} ({base}) and context_extension "
                        f"changes no RoPE setting: set context_extension.rope_theta or "
                        f"context_extension.rope_scaling (linear/yarn with scaling_factor)")
    from harness.training.memory import check_training_fits
    if spec.methods:
        check_training_fits(cfg, T, spec.train.micro_batch, spec.train.loss_block,
                            spec.train.gradient_checkpointing)
    check_writable(Path(spec.output_dir), "output_dir")


def check_causal_lm(cfg, base) -> None:
    """The model must be a causal LM whose tokenizer fits its embedding table."""
    from transformers import AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from harness.config import SpecError

    archs = list(cfg.architectures or [])
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
            archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        raise SpecError(f"model.path {base}: model_type '{cfg.model_type}' "
                        f"({', '.join(cfg.architectures or [])}) is not a causal LM (expected "
                        f"a model that AutoModelForCausalLM loads, e.g. qwen2 or llama)")
    try:
        tok = AutoTokenizer.from_pretrained(str(base))
    except (OSError, ValueError) as exc:
        raise SpecError(f"model.path {base}: no usable tokenizer ({exc})") from None
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    if vocab and len(tok) > vocab:
        raise SpecError(f"model.path {base}: the tokenizer has {len(tok):,} tokens but the "
                        f"model's vocab_size is {vocab:,}: they do not belong together (ids "
                        f"past {vocab - 1} would index outside the embedding table)")


def check_writable(path: Path, key: str) -> None:
    """A folder that cannot be written is reported before any work, not after hours of it."""
    from harness.config import SpecError

    probe_dir = path
    try:
        while not probe_dir.exists():   # the nearest existing ancestor must accept a new entry
            probe_dir = probe_dir.parent
    except OSError as exc:
        raise SpecError(f"{key} {path}: cannot access {probe_dir} ({exc.strerror}); choose "
                        f"a folder you can write, e.g. -o {key}=/tmp/out") from None
    if not probe_dir.is_dir():
        raise SpecError(f"{key} {path}: {probe_dir} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise SpecError(f"{key} {path}: cannot write in {probe_dir} ({exc.strerror}); choose "
                        f"a writable folder, e.g. -o {key}=/tmp/out") from None


def make_method(spec: Spec, label: str):
    from harness.registry import resolve

    for i, m in enumerate(spec.methods):
        if (m.label or m.name) == label:
            cls = resolve("method", m.name)
            return cls(m.params, where=f"methods.{i}.params")
    known = [m.label or m.name for m in spec.methods]
    raise KeyError(f"method '{label}' is not in the spec (methods: {', '.join(known)})")


def screening_checkpoint(spec: Spec, method, label: str, stage: int, base) -> Path | str | None:
    """θ_0 for 'base', θ_k (the checkpoint after stage k-1) for 'current', None for 'none'."""
    if method.screening == "none":
        return None
    if method.screening == "base" or stage == 0:
        return base
    ckpt = checkpoint_dir(spec, label, stage - 1)
    if not (ckpt / "stage_done.json").exists():
        raise FileNotFoundError(f"{label} stage {stage} screens with the checkpoint of stage "
                                f"{stage - 1}, which is not trained yet ({ckpt})")
    return ckpt


def root_start(spec: Spec, label: str, stage: int) -> int:
    if stage == 0:
        return 0
    prev = dataset_dir(spec, label, stage - 1) / "manifest.json"
    if not prev.exists():
        raise FileNotFoundError(f"{label} stage {stage} continues the root stream of stage "
                                f"{stage - 1}, whose dataset is not built ({prev.parent})")
    return json.loads(prev.read_text())["root_end"]


def construct(spec: Spec, label: str, stage: int, resources=None, progress: bool = True,
              device: str = "cpu") -> Path:
    """Build (or find built) one stage dataset of one method; returns its folder."""
    from transformers import AutoTokenizer

    from harness.construction.driver import StageContext, build_stage, prepare_resources

    if not 0 <= stage < spec.stages.count:
        raise ValueError(f"stage {stage} is outside 0..{spec.stages.count - 1} (stages.count)")
    method = make_method(spec, label)
    out = dataset_dir(spec, label, stage)
    if (out / "manifest.json").exists():
        return out
    base, corpus = resolve_inputs(spec)
    if resources is None:
        tok = AutoTokenizer.from_pretrained(str(base))
        resources = prepare_resources(spec, tok, corpus, cache_dir(spec))
    ckpt = screening_checkpoint(spec, method, label, stage, base)
    model = load_eval_model(ckpt, device) if ckpt is not None else None
    ctx = StageContext(spec=spec.for_method(label), stage=stage,
                       target_length=spec.stages.target_length,
                       token_budget=spec.stages.tokens_per_stage,
                       seed=spec.seed, resources=resources, screening_model=model,
                       params=method.params.model_dump(mode="json"), work_dir=out.parent,
                       device=device)
    m = build_stage(method, ctx, out, root_start(spec, label, stage), progress=progress)
    m_short = {k: m.get(k) for k in ("method", "stage", "rows", "groups", "loss_tokens",
                                     "pad_tokens", "heldout_groups", "dataset_sha256")}
    print(f"[construct] {json.dumps(m_short)}", file=sys.stderr)
    return out
