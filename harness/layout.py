"""Every output path of the harness (one owner for naming).

Layout under ``spec.output_dir``::

    cache/tokens/<key>/           token store of the corpus (shared by every method)
    cache/index/<key>/            chunk embeddings + FAISS index per chunking (shared)
                                  (both under ``$POLICYLONG_CACHE_DIR`` instead, when it is set)
    <label>/<key>/stage-<k>/dataset/     stage dataset built for stage k
    <label>/<key>/stage-<k>/checkpoint/  the model after training on stage k
    base/eval/                           evaluation of the untouched base model

``<key>`` hashes every setting the method's stages depend on, the base model's identity and a
local corpus's content (``method_key``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harness.config import Spec, stable_hash


def method_key(spec: Spec, label: str) -> str:
    """Hash of everything a method's stages depend on (not eval, tracking or other methods),
    the base model's identity included, so a changed setting or base model recomputes only
    what depends on it."""
    d = spec.model_dump(mode="json")
    entry = next(m for m in d["methods"] if (m["label"] or m["name"]) == label)
    keep = {k: d[k] for k in ("seed", "sandbox", "model", "corpus", "retrieval", "screening",
                              "stages", "context_extension", "train")}
    corpus = corpus_identity(spec)
    if corpus is not None:        # absent for the sandbox, whose spec is in the key already
        keep["corpus_content"] = corpus
    return stable_hash({**keep, "method": entry, "base_model": model_identity(spec)}, 10)


_CONTENT_HASHES: dict[tuple, str] = {}


def corpus_identity(spec: Spec) -> str | None:
    """What a local corpus holds, beyond its path: sha256 over the content of every file under
    ``corpus.path`` (one file or a folder), so a corpus edited in place gives other stage
    folders instead of reusing datasets built from its old text. Hashed once a process per
    (file, size, mtime). ``None`` for ``sandbox`` (the sandbox spec, in the key, fixes its
    corpus) and for a hub dataset id (read offline, one revision; the id is in the key)."""
    import hashlib

    from harness.fileio import sha256_file

    path = spec.corpus.path
    if path == "sandbox":
        return None
    root = Path(path).expanduser()
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _CONTENT_HASHES:
            _CONTENT_HASHES[memo] = sha256_file(f)
        rel = f.name if f == root else str(f.relative_to(root))
        h.update(f"{rel}:{_CONTENT_HASHES[memo]}\n".encode())
    return h.hexdigest()[:16]


def model_identity(spec: Spec) -> str:
    """What the base model is, beyond its spec entry: for ``model.path: sandbox`` the sandbox
    model's key (its world seed and pre-training recipe, so a new recipe is a new model); for a
    local folder a fingerprint of ``config.json`` and the weight files (names, sizes, their
    first and last MiB: cheap for any size, and a retrained model differs there); for a hub id
    the id itself (the hub is read offline, one revision)."""
    import hashlib

    from harness.registry import MODEL_SOURCES, resolve

    path = spec.model.path
    if path in MODEL_SOURCES:    # a lazy target: the layout sits below the sandbox
        return f"{path}:{resolve('model_source', path)(spec)}"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return str(path)
    h = hashlib.sha256()
    files = [folder / "config.json"] + sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    for f in files:
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def stage_dir(spec: Spec, label: str, stage: int) -> Path:
    return method_dir(spec, label) / f"stage-{stage}"


def dataset_dir(spec: Spec, label: str, stage: int) -> Path:
    return stage_dir(spec, label, stage) / "dataset"


def checkpoint_dir(spec: Spec, label: str, stage: int) -> Path:
    return stage_dir(spec, label, stage) / "checkpoint"


def cache_dir(spec: Spec) -> Path:
    """The token stores and chunk indexes: ``$POLICYLONG_CACHE_DIR`` when set, else
    ``<output_dir>/cache``. Both are keyed by their content (corpus, tokenizer, chunking,
    encoder, index kind), built under a lock and renamed into place whole, so one folder can
    serve every comparison of a corpus at once: it is embedded once, not once per output
    folder (a study's seeds share ``<study output_dir>/cache`` this way)."""
    shared = os.environ.get("POLICYLONG_CACHE_DIR")
    return Path(shared) if shared else Path(spec.output_dir) / "cache"


@contextlib.contextmanager
def shared_cache(folder: str | Path):
    """Within the block, ``cache_dir`` is ``folder`` for every spec, unless
    ``$POLICYLONG_CACHE_DIR`` already names a cache (which is kept)."""
    if os.environ.get("POLICYLONG_CACHE_DIR"):
        yield
        return
    os.environ["POLICYLONG_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("POLICYLONG_CACHE_DIR", None)


def eval_dir(spec: Spec, label: str, stage: int, name: str) -> Path:
    """A method's evaluation after stage ``stage``, cached per evaluation settings
    (``name``: ``harness.evaluation.runner.eval_name``)."""
    return stage_dir(spec, label, stage) / name


def base_eval_dir(spec: Spec, name: str) -> Path:
    """The untouched base model's evaluation (``name`` holds the model's identity)."""
    return Path(spec.output_dir) / "base" / name


def model_eval_dir(spec: Spec, model_path) -> Path:
    """``policylong eval``'s outputs for one model: ``<output_dir>/eval/<model folder name>``."""
    return Path(spec.output_dir) / "eval" / model_name(model_path)


def model_name(model_path) -> str:
    p = Path(model_path)
    return p.resolve().name if p.exists() else str(model_path).rstrip("/").split("/")[-1]


def report_dir(spec: Spec) -> Path:
    return Path(spec.output_dir) / "report"


def method_dir(spec: Spec, label: str) -> Path:
    """Every stage of one method under one ``method_key`` (locked while it runs)."""
    return Path(spec.output_dir) / label / method_key(spec, label)


def optimizer_dir(checkpoint_dir: Path | str) -> Path:
    """Where a stage leaves its optimizer state for the next stage (beside its checkpoint)."""
    p = Path(checkpoint_dir)
    return p.with_name(p.name + ".optim")


def tune_dir(spec: Spec) -> Path:
    """A tuning study's trials (their stages, cached like a comparison's) and best spec."""
    return Path(spec.output_dir) / "tune"


def best_spec_file(spec: Spec, study_name: str) -> Path:
    return tune_dir(spec) / f"{study_name}-best.yaml"


def seed_dir(spec: Spec, seed: int) -> Path:
    """One seed's comparison within a study."""
    return Path(spec.output_dir) / f"seed-{seed}"


def study_times_file(spec: Spec) -> Path:
    return Path(spec.output_dir) / "study-wall-seconds.json"


def study_seed_file(report: str | Path, seed: int) -> Path:
    """One finished seed's results, kept beside the study's report (``docs/study-seeds/seed-0.json``
    for ``docs/study.md``) so that a study's seeds can be run on different machines or days and
    the report built from them without the MLflow store that ran them."""
    report = Path(report)
    return report.parent / f"{report.stem}-seeds" / f"seed-{seed}.json"


def sandbox_root() -> Path:
    """Built sandboxes (``<root>/<key of the SandboxSpec>/``): ``$POLICYLONG_SANDBOX_DIR`` or
    ``runs/sandbox``."""
    return Path(os.environ.get("POLICYLONG_SANDBOX_DIR", "runs/sandbox"))


def sandbox_dir(sandbox, root: str | Path | None = None) -> Path:
    """The folder of the sandbox built for ``sandbox`` (a ``SandboxSpec``), built or not."""
    return Path(root or sandbox_root()) / stable_hash(sandbox.model_dump(mode="json"))
