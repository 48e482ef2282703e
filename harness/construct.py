"""Stage construction: the shared driver every method plugs into (DESIGN §2).

``Resources`` holds what is built once per corpus and shared by all methods and stages: the
documents, their token store, chunkings and FAISS indexes (embedded once per chunking). A
method turns roots into groups; ``build_stage`` feeds it roots in a fixed, seeded order, packs
the groups to the stage's token budget and writes the stage dataset.

Roots: a seeded permutation of the corpus; stage k starts where stage k-1 stopped, so stages do
not repeat roots. When the corpus is exhausted the stream continues with a fresh permutation
(a new epoch; ours) and the manifest records ``root_epochs`` > 1.

Past one machine: when ``torch.distributed`` is initialised (``accelerate launch`` or
``torchrun``), roots are processed in rounds of ``ROUND`` roots cut into batches of
``batch_size``; process p handles batches p, p+P, ... and the results are gathered in root
order. Batches are the same for any number of processes, so the model sees exactly the same
padded inputs and the stage dataset is byte-identical to a one-process run.
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from harness import faults
from harness.config import Spec, stable_hash
from harness.stage_data import Group, pack_groups, write_stage_dataset

ROUND = 64   # roots per round (ours); fixed so results do not depend on the process count


@dataclass
class RootResult:
    groups: list[Group]
    stats: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """What a method plugin provides (3 members)."""
    name: str
    screening: str            # "none" | "base" (θ_0 at every stage) | "current" (θ_k)

    def process(self, ctx: "StageContext", roots: Sequence[int]) -> list[RootResult]:
        """Groups (and per-root statistics) for a batch of root document indices."""


@dataclass
class ChunkSet:
    chunks: list            # harness.corpus.Chunk
    index: Any              # harness.retrieval.ChunkIndex
    tokens: list[np.ndarray]


class Resources:
    """Corpus, token store, chunkings and indexes, built once and shared."""

    def __init__(self, spec: Spec, docs, store, tokenizer, cache_dir: Path, corpus_fp: str):
        self.spec, self.docs, self.store, self.tokenizer = spec, docs, store, tokenizer
        self.cache_dir, self.corpus_fp = Path(cache_dir), corpus_fp
        self._chunksets: dict[tuple[str, int], ChunkSet] = {}
        self._encoder = None
        lengths = store.lengths
        chars = sum(len(d.text) for d in docs)
        self.chars_per_token = chars / max(1, int(lengths.sum()))

    @property
    def encoder(self):
        if self._encoder is None:
            from harness.retrieval import load_encoder
            self._encoder = load_encoder(self.spec.retrieval.encoder)
        return self._encoder

    def chunkset(self, unit: str | None = None, size: int | None = None) -> ChunkSet:
        """Chunks of the corpus and their index (the spec's retrieval chunking by default)."""
        from harness.corpus import chunk_documents
        from harness.retrieval import ChunkIndex

        r = self.spec.retrieval
        unit, size = unit or r.chunk_unit, size or r.chunk_size
        if (unit, size) in self._chunksets:
            return self._chunksets[(unit, size)]
        src = self.store if unit == "tokens" else self.docs
        chunks = chunk_documents(src, unit, size, tokenizer=self.tokenizer)
        if unit == "tokens":
            toks = [np.asarray(self.store.doc_tokens(c.doc_index)[c.start:c.end]) for c in chunks]
        else:
            enc = self.tokenizer([c.text for c in chunks], add_special_tokens=False)["input_ids"]
            toks = [np.asarray(t, dtype=np.int64) for t in enc]
        key = stable_hash({"corpus": self.corpus_fp, "unit": unit, "size": size,
                           "encoder": r.encoder, "index": r.index,
                           "tokenizer": self.store.manifest.get("tokenizer_fingerprint")}, 16)
        index = _collective(lambda: ChunkIndex.build_or_load(
            self.cache_dir / "index", key, [c.text for c in chunks],
            [c.doc_index for c in chunks], r.encoder, r.index, r.batch_size,
            encoder=self.encoder))
        cs = ChunkSet(chunks, index, toks)
        self._chunksets[(unit, size)] = cs
        return cs


def _collective(build):
    """Rank 0 builds (embeds, indexes, writes); the others wait and then load the result."""
    dist = _dist()
    if dist is None:
        return build()
    if dist.get_rank() == 0:
        out = build()
        dist.barrier()
        return out
    dist.barrier()
    return build()


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def prepare_resources(spec: Spec, tokenizer, corpus_path: str, cache_dir: Path) -> Resources:
    from harness.corpus import TokenStore, cache_key, read_corpus

    c = spec.corpus
    docs, report = read_corpus(corpus_path, c.text_field, c.id_field, c.on_error,
                               c.max_doc_chars)
    if report.n_skipped:
        print(f"[corpus] {report.summary()}", file=sys.stderr)
    key = cache_key(report.fingerprint, tokenizer)
    store = _collective(lambda: TokenStore.get_or_build(docs, tokenizer, cache_dir / "tokens",
                                                        key))
    check_budget(spec, corpus_path, len(docs), store.n_tokens)
    return Resources(spec, docs, store, tokenizer, cache_dir, report.fingerprint)


MAX_EPOCHS = 50   # a stage may revisit the corpus's roots at most this many times (ours)


def check_budget(spec: Spec, corpus_path: str, n_docs: int, n_tokens: int) -> None:
    """Refuse, before the index is built, a corpus that cannot fill one stage's budget."""
    from harness.corpus import CorpusError

    need = spec.stages.tokens_per_stage
    if n_docs < 2 or n_tokens * MAX_EPOCHS < need:
        raise CorpusError(
            f"{corpus_path}: {n_docs} documents, {n_tokens:,} tokens: too small for "
            f"stages.tokens_per_stage {need:,} (a stage revisits the corpus at most "
            f"{MAX_EPOCHS} times, and retrieval needs at least 2 documents): give a larger "
            f"corpus or lower stages.tokens_per_stage")


@dataclass
class StageContext:
    spec: Spec
    stage: int
    target_length: int
    token_budget: int
    seed: int
    resources: Resources
    screening_model: Any          # an HF causal LM in eval mode, or None
    params: dict[str, Any]        # the method's validated parameters
    work_dir: Path
    device: str = "cpu"

    def rng(self, *parts) -> random.Random:
        """A generator seeded by (seed, stage, parts): the same for any process count."""
        return random.Random(stable_hash([self.seed, self.stage, *parts], 16))


def root_stream(n_docs: int, seed: int, start: int) -> Iterator[tuple[int, int, int]]:
    """``(position, epoch, doc index)`` from ``start`` on: seeded permutations, one per epoch."""
    pos = start
    while True:
        epoch, off = divmod(pos, n_docs)
        perm = np.random.default_rng([seed, epoch]).permutation(n_docs)
        for i in range(off, n_docs):
            yield pos, epoch, int(perm[i])
            pos += 1


def _process_round(method: Method, ctx: StageContext, roots: list[int], batch: int
                   ) -> list[RootResult]:
    batches = [roots[i:i + batch] for i in range(0, len(roots), batch)]
    dist = _dist()
    if dist is None:
        return [r for b in batches for r in method.process(ctx, b)]
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = {i: method.process(ctx, b) for i, b in enumerate(batches) if i % world == rank}
    gathered: list[dict] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(gathered, mine)
    merged: dict[int, list[RootResult]] = {}
    for part in gathered:
        merged.update(part)
    return [r for i in range(len(batches)) for r in merged[i]]


def build_stage(method: Method, ctx: StageContext, out_dir: Path, root_start: int = 0,
                progress: bool = True) -> dict:
    """Build one stage dataset at ``out_dir``; returns its manifest."""
    from tqdm.auto import tqdm

    res = ctx.resources
    T = ctx.target_length
    rows_wanted = max(1, ctx.token_budget // T)
    n_docs = len(res.store)
    stream = root_stream(n_docs, ctx.seed, root_start)
    groups: list[Group] = []
    stats: list[dict] = []
    filled, last_pos, epochs, roots_seen = 0, root_start, 0, 0
    t0 = time.perf_counter()
    dist = _dist()
    show = progress and (dist is None or dist.get_rank() == 0)
    bar = tqdm(total=rows_wanted * T, unit="tok", unit_scale=True, disable=not show,
               desc=f"{method.name} stage {ctx.stage}", dynamic_ncols=True)
    batch = ctx.spec.screening.batch_size
    while filled < rows_wanted * T:
        chunk = [next(stream) for _ in range(ROUND)]
        if roots_seen > 4 * n_docs and not groups:
            raise RuntimeError(f"{method.name}: no groups after {roots_seen} roots; the corpus "
                               f"yields no usable samples with these settings")
        results = _process_round(method, ctx, [d for _, _, d in chunk], batch)
        faults.point("screening")
        for (pos, epoch, _doc), r in zip(chunk, results):
            roots_seen += 1
            last_pos, epochs = pos + 1, max(epochs, epoch + 1)
            stats.append(r.stats)
            for g in r.groups:
                groups.append(g)
                filled += len(g.tokens)
            if filled >= rows_wanted * T * 1.02 + T:   # enough to fill rows exactly
                break
        bar.update(min(filled, rows_wanted * T) - bar.n)
        if filled >= rows_wanted * T * 1.02 + T:
            break
        if roots_seen > MAX_EPOCHS * n_docs:
            from harness.corpus import CorpusError
            raise CorpusError(f"{method.name}: could not fill stages.tokens_per_stage "
                              f"({rows_wanted * T:,} tokens) from the corpus's {n_docs} "
                              f"documents in {MAX_EPOCHS} passes ({roots_seen} roots, "
                              f"{filled:,} tokens): give a larger corpus or lower "
                              f"stages.tokens_per_stage")
    bar.close()
    pad = res.tokenizer.pad_token_id if res.tokenizer.pad_token_id is not None else 0
    ids, gidx, placed = pack_groups(groups, T, pad, rows_wanted * T)
    if len(ids) < rows_wanted:  # pack_groups stops at the budget; top up is not possible
        raise RuntimeError(f"{method.name}: filled {len(ids)} of {rows_wanted} rows")
    manifest = {
        "method": method.name, "stage": ctx.stage, "seed": ctx.seed,
        "token_budget": ctx.token_budget, "budget_rows": rows_wanted,
        "budget_met": int(ids.size) == rows_wanted * T,
        "config_hash": stable_hash(dataclasses.asdict(_StageKey(ctx, method))),
        "params": ctx.params, "root_start": root_start, "root_end": last_pos,
        "roots_seen": roots_seen, "root_epochs": epochs,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "stats": summarize(stats),
    }
    if dist is None or dist.get_rank() == 0:
        write_stage_dataset(out_dir, ids, gidx, placed, manifest)
    if dist is not None:
        dist.barrier()
    return json.loads((Path(out_dir) / "manifest.json").read_text())


@dataclass
class _StageKey:
    def __init__(self, ctx: StageContext, method: Method):
        self.method = method.name
        self.stage = ctx.stage
        self.target_length = ctx.target_length
        self.token_budget = ctx.token_budget
        self.seed = ctx.seed
        self.params = json.loads(json.dumps(ctx.params, sort_keys=True, default=str))


def summarize(stats: list[dict]) -> dict:
    """Sum count-like statistics and pool list-valued ones into mean / quantiles."""
    out: dict[str, Any] = {}
    keys = sorted({k for s in stats for k in s})
    for k in keys:
        vals = [s[k] for s in stats if k in s]
        if all(isinstance(v, (int, float)) for v in vals):
            out[k] = float(sum(vals))
        elif all(isinstance(v, list) for v in vals):
            pooled = np.asarray([x for v in vals for x in v], dtype=np.float64)
            out[k] = {"n": int(pooled.size)}
            if pooled.size:
                out[k].update(mean=float(pooled.mean()), median=float(np.median(pooled)),
                              p10=float(np.quantile(pooled, 0.1)),
                              p90=float(np.quantile(pooled, 0.9)))
    return out
