"""Stage construction: the shared driver every method plugs into (DESIGN §2).

``Resources`` holds what is built once per corpus and shared by all methods and stages: the
documents, their token store, chunkings and FAISS indexes (embedded once per chunking). A
method turns roots into groups; ``build_stage`` feeds it roots in a fixed, seeded order, packs
the groups to the stage's token budget and writes the stage dataset.

Roots: a seeded permutation of the corpus; stage k starts where stage k-1 stopped, so stages do
not repeat roots. A root is never used twice in a run unless ``stages.allow_root_reuse`` is set:
then an exhausted corpus continues with a fresh permutation (a new epoch; ours) and the manifest
records ``root_epochs`` > 1 and ``roots_repeated``. Budgets are loss-carrying tokens
(``loss_budget``), the same for every method.

Past one machine: when ``torch.distributed`` is initialised (``accelerate launch`` or
``torchrun``), roots are processed in rounds of ``ROUND`` roots cut into batches of
``batch_size``; process p handles batches p, p+P, ... and the results are gathered in root
order. Batches are the same for any number of processes, so the model sees exactly the same
padded inputs and the stage dataset is byte-identical to a one-process run.
"""
from __future__ import annotations

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
from harness.construction.stage_data import Group, write_stage_dataset

ROUND = 64   # roots per round (ours); fixed so results do not depend on the process count


@dataclass
class RootResult:
    groups: list[Group]
    stats: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """What a method plugin provides (3 members, and optionally ``attention``).

    ``attention`` (optional, default ``"group"``): what one attention span is in the packed
    rows: ``"group"`` (each group: contexts + root, or one NExtLong document, isolated from the
    other groups of its row) or ``"row"`` (the whole row, documents attending across each
    other: the ``standard`` baseline). The README states the rule of every method."""
    name: str
    screening: str            # "none" | "base" (θ_0 at every stage) | "current" (θ_k)

    def process(self, ctx: "StageContext", roots: Sequence[int]) -> list[RootResult]:
        """Groups (and per-root statistics) for a batch of root document indices."""


@dataclass
class ChunkSet:
    chunks: list            # harness.data.corpus.Chunk
    index: Any              # harness.data.retrieval.ChunkIndex
    tokens: list[np.ndarray]


class Resources:
    """Corpus, token store, chunkings and indexes, built once and shared."""

    def __init__(self, spec: Spec, docs, store, tokenizer, cache_dir: Path, corpus_fp: str):
        self.spec, self.docs, self.store, self.tokenizer = spec, docs, store, tokenizer
        self.cache_dir, self.corpus_fp = Path(cache_dir), corpus_fp
        self.corpus_path: str | None = None
        self._truth: Any = False
        self._chunksets: dict[tuple[str, int], ChunkSet] = {}
        self._encoder = None
        lengths = store.lengths
        chars = sum(len(d.text) for d in docs)
        self.chars_per_token = chars / max(1, int(lengths.sum()))

    def truth(self):
        """The corpus's ground truth (``harness.data.ground_truth.load_truth``), or None."""
        if self._truth is False:
            from harness.data.ground_truth import load_truth
            self._truth = load_truth(self.corpus_path) if self.corpus_path else None
        return self._truth

    @property
    def encoder(self):
        if self._encoder is None:
            from harness.data.retrieval import load_encoder
            self._encoder = load_encoder(self.spec.retrieval.encoder)
        return self._encoder

    def chunkset(self, unit: str | None = None, size: int | None = None) -> ChunkSet:
        """Chunks of the corpus and their index (the spec's retrieval chunking by default)."""
        from harness.data.corpus import chunk_documents
        from harness.data.retrieval import ChunkIndex

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
    from harness.data.corpus import TokenStore, cache_key, read_corpus

    c = spec.corpus
    docs, report = read_corpus(corpus_path, c.text_field, c.id_field, c.on_error,
                               c.max_doc_chars)
    if report.n_skipped:
        print(f"[corpus] {report.summary()}", file=sys.stderr)
    key = cache_key(report.fingerprint, tokenizer)
    store = _collective(lambda: TokenStore.get_or_build(docs, tokenizer, cache_dir / "tokens",
                                                        key))
    check_budget(spec, corpus_path, len(docs), store.n_tokens)
    res = Resources(spec, docs, store, tokenizer, cache_dir, report.fingerprint)
    res.corpus_path = str(corpus_path)
    return res


MAX_EPOCHS = 50   # with stages.allow_root_reuse, a run may pass over the corpus this often (ours)
FILL = 0.98       # loss budget = FILL x rows x (T - 1): room for packing whole groups (ours)


def loss_budget(spec: Spec) -> tuple[int, int]:
    """``(rows, loss tokens)`` of every stage, the same for every method: ``rows`` =
    ``tokens_per_stage // target_length``; the loss-token budget leaves 2 % of the rows'
    loss capacity as room for packing whole groups (``FILL``, ours)."""
    T = spec.stages.target_length
    rows = max(1, spec.stages.tokens_per_stage // T)
    return rows, int(FILL * rows * (T - 1))


def check_budget(spec: Spec, corpus_path: str, n_docs: int, n_tokens: int) -> None:
    """Refuse, before the index is built, a corpus that cannot fill the run's budget: without
    root reuse, the corpus must hold ``stages.count`` x ``tokens_per_stage`` tokens (what the
    ``standard`` baseline consumes, one root token per trained token)."""
    from harness.data.corpus import CorpusError

    st = spec.stages
    need = st.tokens_per_stage * (1 if st.allow_root_reuse else st.count)
    have = n_tokens * (MAX_EPOCHS if st.allow_root_reuse else 1)
    if n_docs < 2 or have < need:
        what = (f"stages.tokens_per_stage {st.tokens_per_stage:,} (a run revisits the corpus "
                f"at most {MAX_EPOCHS} times with stages.allow_root_reuse)"
                if st.allow_root_reuse else
                f"stages.count {st.count} x stages.tokens_per_stage {st.tokens_per_stage:,} = "
                f"{need:,} tokens without reusing a root (stages.allow_root_reuse: false)")
        raise CorpusError(
            f"{corpus_path}: {n_docs} documents, {n_tokens:,} tokens: too small for {what}; "
            f"retrieval needs at least 2 documents: give a larger corpus, lower the budget, or "
            f"set stages.allow_root_reuse: true")


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


def root_stream(n_docs: int, seed: int, start: int, reuse: bool = False
                ) -> Iterator[tuple[int, int, int]]:
    """``(position, epoch, doc index)`` from ``start`` on: a seeded permutation of the corpus;
    with ``reuse`` a fresh permutation per pass (epoch), else the stream ends with the corpus."""
    pos = start
    while True:
        epoch, off = divmod(pos, n_docs)
        if epoch > 0 and not reuse:
            return
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


def _heldout(ctx: StageContext, g: Group, fraction: float) -> bool:
    """Groups with contexts and anchors are held out from training with probability
    ``fraction``, decided by a generator seeded by (seed, stage, root): out-of-sample frontier
    loss gaps are measured on them (DESIGN §3 "Loss gap")."""
    prov = g.provenance
    if fraction <= 0 or not prov.get("contexts") or not prov.get("anchors"):
        return False
    return ctx.rng("heldout", prov.get("root_id")).random() < fraction


def build_stage(method: Method, ctx: StageContext, out_dir: Path, root_start: int = 0,
                progress: bool = True) -> dict:
    """Build one stage dataset at ``out_dir``; returns its manifest.

    Groups are packed (``stage_data.Packer``) until the stage holds exactly the loss-token
    budget (``loss_budget``): every method trains on the same number of loss-carrying tokens
    in the same number of rows. Roots come from ``root_stream``; without
    ``stages.allow_root_reuse`` a corpus that runs out is an error before anything is written.
    """
    from tqdm.auto import tqdm

    from harness.data.corpus import CorpusError
    from harness.construction.stage_data import Packer

    res, st = ctx.resources, ctx.spec.stages
    T = ctx.target_length
    rows, budget = loss_budget(ctx.spec)
    n_docs = len(res.store)
    stream = root_stream(n_docs, ctx.seed, root_start, reuse=st.allow_root_reuse)
    pad = res.tokenizer.pad_token_id if res.tokenizer.pad_token_id is not None else 0
    packer = Packer(T, rows, budget, pad, attention=getattr(method, "attention", "group"))
    stats: list[dict] = []
    heldout: list[Group] = []
    built: list[dict] = []
    last_pos, epochs, roots_seen, n_groups = root_start, 0, 0, 0
    t0 = time.perf_counter()
    dist = _dist()
    show = progress and (dist is None or dist.get_rank() == 0)
    bar = tqdm(total=budget, unit="tok", unit_scale=True, disable=not show,
               desc=f"{method.name} stage {ctx.stage}", dynamic_ncols=True)
    batch = ctx.spec.screening.batch_size
    while not packer.done:
        chunk = [x for _, x in zip(range(ROUND), stream)]
        if not chunk:
            raise CorpusError(
                f"{method.name} stage {ctx.stage}: the corpus's {n_docs} roots are used up "
                f"({roots_seen} screened this stage, from root {root_start}) with "
                f"{packer.loss:,} of {budget:,} loss tokens filled; roots are not reused "
                f"(stages.allow_root_reuse: false): give a larger corpus or lower the budget")
        if roots_seen > 4 * n_docs and not n_groups:
            raise RuntimeError(f"{method.name}: no groups after {roots_seen} roots; the corpus "
                               f"yields no usable samples with these settings")
        if packer.set_aside > 4 * rows + 1000:
            raise RuntimeError(f"{method.name}: {packer.set_aside} groups did not fit the "
                               f"{rows} rows; the loss budget cannot be packed")
        results = _process_round(method, ctx, [d for _, _, d in chunk], batch)
        faults.point("screening")
        for (pos, epoch, _doc), r in zip(chunk, results):
            roots_seen += 1
            last_pos, epochs = pos + 1, max(epochs, epoch + 1)
            stats.append(r.stats)
            for g in r.groups:
                n_groups += 1
                if _heldout(ctx, g, st.heldout_fraction):
                    heldout.append(g)
                else:
                    packer.add(g)
                built.append(g.provenance)
            if packer.done:
                break
        bar.update(min(packer.loss, budget) - bar.n)
        if roots_seen > MAX_EPOCHS * n_docs:
            raise CorpusError(f"{method.name}: could not fill the stage's loss budget "
                              f"({budget:,} tokens) from the corpus's {n_docs} documents in "
                              f"{MAX_EPOCHS} passes ({roots_seen} roots, {packer.loss:,} "
                              f"tokens): give a larger corpus or lower stages.tokens_per_stage")
    bar.close()
    ids, gidx, placed = packer.arrays()
    summary = summarize(stats)
    quality = _ground_truth(res, built)
    manifest = {
        "method": method.name, "stage": ctx.stage, "seed": ctx.seed,
        "token_budget": ctx.token_budget, "loss_budget": budget, "budget_rows": rows,
        "budget_met": packer.loss == budget,
        "attention": packer.attention,
        "config_hash": stage_config_hash(ctx, method),
        "params": ctx.params, "root_start": root_start, "root_end": last_pos,
        "roots_seen": roots_seen, "root_epochs": epochs,
        "roots_repeated": max(0, last_pos - max(root_start, n_docs)),
        "build_seconds": round(time.perf_counter() - t0, 2),
        **packer.summary(),
        "stats": summary,
    }
    if quality:
        manifest["ground_truth"] = quality
    if dist is None or dist.get_rank() == 0:
        write_stage_dataset(out_dir, ids, gidx, placed, manifest, heldout)
    if dist is not None:
        dist.barrier()
    return json.loads((Path(out_dir) / "manifest.json").read_text())


def _ground_truth(res: "Resources", groups: list[dict]) -> dict | None:
    """Verification quality against the corpus's ground truth (sandbox corpora only; methods
    never read it): see ``harness.data.ground_truth``."""
    truth = res.truth()
    if truth is None:
        return None
    from harness.data.ground_truth import group_quality
    q = group_quality(truth, groups)
    return q if q.get("groups") else None     # methods without contexts: nothing to judge


EXECUTION_ONLY = ("prefix_cache_mb",)
ADDED_WITH_DEFAULT = {"early_stop": False}


def stage_config_hash(ctx: StageContext, method: Method) -> str:
    """Hash of what a stage dataset depends on: method, stage, lengths, budget, seed, the
    method's parameters and the spec's construction settings."""
    d = ctx.spec.model_dump(mode="json")
    for name in EXECUTION_ONLY:           # how fast, not what: the same data either way
        d["screening"].pop(name, None)
    for name, default in ADDED_WITH_DEFAULT.items():    # earlier stage hashes stay valid
        if d["screening"].get(name) == default:
            d["screening"].pop(name)
    key = {"method": method.name, "stage": ctx.stage, "target_length": ctx.target_length,
           "token_budget": ctx.token_budget, "seed": ctx.seed,
           "attention": getattr(method, "attention", "group"),
           "params": json.loads(json.dumps(ctx.params, sort_keys=True, default=str)),
           **{k: d[k] for k in ("corpus", "retrieval", "screening", "stages")}}
    return stable_hash(key)


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
