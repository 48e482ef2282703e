"""EntropyLong (ICLR 2026, arXiv 2510.02330): verified long-range dependencies, off-policy.

The base model θ_0 screens every stage's roots (the off-policy baseline): per-document adaptive
threshold ``τ_H = μ_H + α·σ_H`` (α = 2.0, §3.1), queries of ±w = 16 tokens around each anchor,
top-K retrieval (K is not published; ours, ``retrieval.top_k``), verification ``ΔI > ε``
(ε = 0.4) at an anchor whose query retrieved the context (``screening.verify_against``).
Sample ``[C_π(1); …; C_π(m); D]``: verified contexts in shuffled order before the root
("Shuffle" beat "Sequence"). Roots without a verified context
give no sample (ours: the paper does not say). Groups are packed to the target length.
All thresholds live in the spec's ``screening`` section.
"""
from __future__ import annotations

from typing import Sequence

from harness.api import RootResult, StageContext, screen_and_verify
from methods._common import (Params, context_items, contexts_then_root, positives,
                             validate_params)


class EntropyLongParams(Params):
    pass


class EntropyLong:
    name = "entropylong"
    screening = "base"

    def __init__(self, params: dict | None = None, where: str = "params"):
        self.params = validate_params(EntropyLongParams, params or {}, where)

    def process(self, ctx: StageContext, roots: Sequence[int]) -> list[RootResult]:
        sc, res = ctx.spec.screening, ctx.resources
        out = []
        for rs in screen_and_verify(ctx, list(roots)):
            pos = positives(rs.candidates, sc.signal, sc.epsilon)
            g = contexts_then_root(context_items(pos, "positive", res, sc),
                                   res.store.doc_tokens(rs.root), ctx.target_length,
                                   ctx.rng("root", rs.root), res.store.ids[rs.root],
                                   rs.screened.anchors.tolist())
            stats = rs.stats(sc.signal, sc.epsilon)
            stats["dI_positive"] = [c.verdict.gain(sc.signal) for c in pos]
            if sc.control == "length":
                stats["dI_control_positive"] = [c.verdict.control_gain(sc.signal) for c in pos]
            out.append(RootResult([g] if g else [], stats))
        return out
