"""NExtLong (Gao et al., ICML 2025, arXiv 2501.12766): negative document extension.

- Meta-chunks: the root is split at newlines and paragraphs are merged greedily up to the
  granularity ``s`` characters (released ``chunking.py``: ``group_segments(text,
  max_length=2048)``; s = 2048 was best overall, Fig. 6).
- Hard negatives: for each meta-chunk its top-k most similar chunks from *other* documents of
  the corpus, chunked at the same granularity; a negative is never reused within a sample
  (App. D.2); top-k most similar was the best selection strategy (§5.4).
- ``k = (T·E·w − S) / (p·s)`` with w = 1.5 (App. D.1): T target tokens, E characters per
  token (measured on the corpus), S root characters, p meta-chunks; rounded up (ours).
- Layout ``[m1, n11..n1k, m2, n21..n2k, …]`` (Eq. 4-5), one group (full attention within it);
  samples that do not reach T tokens are dropped, the rest cut to T (README guidance).
- No screening model.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from pydantic import Field

from harness.api import Group, RootResult, StageContext
from methods._common import Params, validate_params


class NExtLongParams(Params):
    granularity: int = Field(2048, gt=0)      # s, characters (released chunking.py)
    w: float = Field(1.5, gt=0)               # adjustment factor (App. D.1)


class NExtLong:
    name = "nextlong"
    screening = "none"

    def __init__(self, params: dict | None = None, where: str = "params"):
        self.params = validate_params(NExtLongParams, params or {}, where)

    def k_for(self, T: int, chars_per_token: float, doc_chars: int, p: int) -> int:
        s, w = self.params.granularity, self.params.w
        return max(0, math.ceil((T * chars_per_token * w - doc_chars) / (p * s)))

    def process(self, ctx: StageContext, roots: Sequence[int]) -> list[RootResult]:
        res, T = ctx.resources, ctx.target_length
        cs = res.chunkset("chars", self.params.granularity)
        by_doc: dict[int, list[int]] = {}
        for c in cs.chunks:
            by_doc.setdefault(c.doc_index, []).append(c.chunk_id)
        out = []
        for r in roots:
            metas = by_doc.get(r, [])
            if not metas:
                out.append(RootResult([], {"roots": 1, "dropped_short": 1}))
                continue
            k = self.k_for(T, res.chars_per_token, len(res.docs[r].text), len(metas))
            negs = cs.index.search(np.asarray(cs.index.embeddings[metas]),
                                   k=min(len(cs.chunks), k + 4 * k + 1) if k else 1,
                                   exclude_docs=[r] * len(metas)) if k else [[]] * len(metas)
            used: set[int] = set()
            parts, layout = [], []
            for m, hits in zip(metas, negs):
                parts.append(cs.tokens[m])
                layout.append({"role": "meta_chunk", "chunk_id": int(m)})
                taken = 0
                for cid, score in hits:
                    if taken == k:
                        break
                    if cid in used:
                        continue
                    used.add(cid)
                    parts.append(cs.tokens[cid])
                    layout.append({"role": "hard_negative", "chunk_id": int(cid),
                                   "doc_id": cs.chunks[cid].doc_id,
                                   "similarity": round(float(score), 6)})
                    taken += 1
            toks = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            if len(toks) < T:
                out.append(RootResult([], {"roots": 1, "k": [k], "dropped_short": 1}))
                continue
            g = Group(toks[:T].astype(np.int64).tolist(),
                      {"root_id": res.store.ids[r], "k": k, "layout": layout})
            out.append(RootResult([g], {"roots": 1, "k": [k], "negatives": len(used)}))
        return out
