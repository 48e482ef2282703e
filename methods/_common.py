"""Small helpers the method plugins share (layout only; the pipeline lives in the core)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from harness.api import Group, RootResult
from harness.api import Params, validate_params  # noqa: F401  (kept importable from here)


@dataclass
class Refit:
    """The same group rebuilt to fit fewer tokens: ``contexts_then_root`` with the same
    contexts, root and shuffle at a smaller length, so lower-priority contexts are dropped
    (the rule that fits a group to ``T``). The packer uses it to fill a row's remaining room
    instead of setting a group aside. Plain data, so it crosses processes."""
    contexts: list
    root: np.ndarray
    rng_state: tuple
    root_id: str
    anchors: list

    def __call__(self, max_tokens: int) -> Group | None:
        rng = random.Random()
        rng.setstate(self.rng_state)
        g = contexts_then_root(self.contexts, self.root, max_tokens, rng, self.root_id,
                               self.anchors, refit=False)
        if g is not None and len(self.root) <= max_tokens:
            return g
        return None


def contexts_then_root(contexts: list[tuple[np.ndarray, dict]], root: np.ndarray, T: int,
                       rng, root_id: str, anchors: list[int] | None = None,
                       refit: bool = True) -> Group | None:
    """``[C_π(1); …; C_π(m); D]``: contexts in shuffled order before the root (EntropyLong).

    ``contexts`` come in priority order; the lowest-priority ones are dropped until the group
    fits ``T`` tokens (the kept contexts are a prefix of the list, so a context is never kept
    while a higher-priority one is dropped: PolicyLong's negatives never outnumber their
    ratio to the kept positives). A root longer than ``T`` is cut to ``T`` and takes no context. The
    group carries a ``Refit`` that rebuilds it for fewer tokens by the same rule.
    """
    state = rng.getstate()
    full_root = np.asarray(root)
    root = np.asarray(root[:T])
    budget = T - len(root)
    kept = []
    for toks, prov in contexts:      # a prefix in priority order: the rest is dropped
        if len(toks) > budget:
            break
        kept.append((np.asarray(toks), prov))
        budget -= len(toks)
    if not kept:
        return None
    order = list(range(len(kept)))
    rng.shuffle(order)
    parts, provs, offset = [], [], 0
    for i in order:
        toks, prov = kept[i]
        parts.append(toks)
        provs.append({**prov, "start": offset, "end": offset + len(toks)})
        offset += len(toks)
    parts.append(root)
    tokens = np.concatenate(parts).astype(np.int64).tolist()
    anchors = [int(a) for a in (anchors or [])]
    return Group(tokens, {"root_id": root_id, "root_start": offset,
                          "root_end": offset + len(root), "contexts": provs,
                          "anchors": [a for a in anchors if a < len(root)]},
                 refit=Refit(list(contexts), full_root, state, root_id, anchors)
                 if refit else None)


def positives(candidates, signal: str, epsilon: float) -> list:
    """Candidates with ΔI > ε under ``signal``, highest gain first (ties by chunk id).

    The gain is ``Verdict.gain``: over the anchors that retrieved the candidate
    (``screening.verify_against = retrieving_anchor``, EntropyLong) or over all anchors
    (``all_anchors``), minus the length control's gain when ``screening.control = length``;
    the same decision as ``RootScreening.stats``'s ``accepted``."""
    pos = [c for c in candidates if c.verdict.gain(signal) > epsilon]
    return sorted(pos, key=lambda c: (-c.verdict.gain(signal), c.chunk_id))


def context_items(cands, role: str, resources, screening) -> list[tuple[np.ndarray, dict]]:
    """(tokens, provenance) of candidate chunks, for ``contexts_then_root``; ``screening``:
    the method's own settings (``ctx.spec.screening``, i.e. ``Spec.for_method``)."""
    tokens = resources.chunkset().tokens
    return [(tokens[c.chunk_id], context_provenance(c, role, resources, screening))
            for c in cands]


def context_provenance(cand, role: str, resources, screening) -> dict:
    """``dI_*_max`` / ``dI_*_mean``: over every anchor of the root (recorded whatever decides);
    ``retrieving_anchors``: positions in the root of the anchors whose queries retrieved the
    context; ``dI``: the deciding gain under ``signal`` and ``verify_against`` (the excess over
    the length control when ``control`` is ``length``, whose own gain is ``dI_control``)."""
    chunk = resources.chunkset().chunks[cand.chunk_id]
    v, sc = cand.verdict, screening
    out = {"chunk_id": int(cand.chunk_id), "doc_id": chunk.doc_id, "role": role,
           "similarity": round(float(cand.similarity), 6),
           "dI_entropy_max": round(v.max_entropy, 6), "dI_entropy_mean": round(v.mean_entropy, 6),
           "dI_nll_max": round(v.max_nll, 6), "dI_nll_mean": round(v.mean_nll, 6),
           "verify_against": v.verify_against, "retrieving_anchors": v.retrieving_anchors,
           "signal": sc.signal, "dI": round(v.gain(sc.signal), 6),
           "truncated": bool(v.truncated)}
    if v.has_control:
        out.update(control="length", dI_raw=round(v.raw_gain(sc.signal), 6),
                   dI_control=round(v.control_gain(sc.signal), 6))
    return out


def control_result(ctx, root: int, contexts: list[tuple[np.ndarray, dict]]) -> RootResult:
    """One root of a control method (``oracle``, ``random_context``): EntropyLong's layout
    (``contexts_then_root`` at ``ctx.target_length``, shuffled by ``ctx.rng("root", root)``)
    without anchors; no group when no context fits. Statistics: ``roots``, ``root_tokens``,
    ``contexts`` and ``context_tokens`` (kept in the group), summed over the stage."""
    store = ctx.resources.store
    root_tokens = store.doc_tokens(root)
    g = contexts_then_root(contexts, root_tokens, ctx.target_length, ctx.rng("root", root),
                           store.ids[root])
    kept = g.provenance["contexts"] if g else []
    return RootResult([g] if g else [], {
        "roots": 1, "root_tokens": len(root_tokens), "contexts": len(kept),
        "context_tokens": sum(c["end"] - c["start"] for c in kept)})


MAX_MISSES = 1000   # random draws that hit the root's own document or a chunk already drawn


def random_chunks(cs, root: int, room: int, rng, role: str, source: str = "random") -> list:
    """(tokens, provenance) of retrieval chunks drawn uniformly from documents other than
    ``root``, no chunk twice, in draw order, until the next one would not fit in ``room``
    tokens (``random_context``'s contexts; ``oracle``'s fill)."""
    out, used, misses = [], set(), 0
    while room > 0 and misses < MAX_MISSES:
        cid = rng.randrange(len(cs.chunks))
        chunk = cs.chunks[cid]
        if chunk.doc_index == root or cid in used or not len(cs.tokens[cid]):
            misses += 1
            continue
        if len(cs.tokens[cid]) > room:
            break
        used.add(cid)
        room -= len(cs.tokens[cid])
        out.append((cs.tokens[cid], {"chunk_id": int(cid), "doc_id": chunk.doc_id,
                                     "role": role, "source": source}))
    return out
