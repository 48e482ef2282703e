"""PolicyLong (arXiv 2604.07809): on-policy screening, re-run at every stage.

At stage k the current checkpoint θ_k computes the entropy, picks the anchors and verifies
(EntropyLong's primitives and defaults: α = 2.0, w = 16, ε = 0.4). Positives: ``ΔI > ε`` under
θ_k. Hard negatives: candidates retrieved for θ_k's anchors that fail verification
(``ΔI ≤ ε_neg``, default 0.0, ours), most similar first, ``negative_ratio`` per positive (ours;
the paper's ratio is not public). Sample ``[shuffle(positives ∪ hard negatives); D]``. Roots
advance across stages (the core's root stream), so stages do not repeat roots until the corpus
is exhausted. 4 stages of equal budget are the paper's setup [N3]; the stage count is the
spec's ``stages.count``. When a group would exceed the target length, negatives are dropped
before positives (ours).
"""
from __future__ import annotations

import math
from typing import Sequence

from harness.api import RootResult, StageContext, screen_and_verify
from methods._common import (Params, context_items, contexts_then_root, positives,
                             validate_params)


class PolicyLongParams(Params):
    pass


class PolicyLong:
    name = "policylong"
    screening = "current"

    def __init__(self, params: dict | None = None, where: str = "params"):
        self.params = validate_params(PolicyLongParams, params or {}, where)

    def process(self, ctx: StageContext, roots: Sequence[int]) -> list[RootResult]:
        sc, res = ctx.spec.screening, ctx.resources
        out = []
        for rs in screen_and_verify(ctx, list(roots)):
            gain = lambda c: c.verdict.gain(sc.signal)  # noqa: E731
            pos = positives(rs.candidates, sc.signal, sc.epsilon)
            neg = sorted((c for c in rs.candidates if gain(c) <= sc.epsilon_neg),
                         key=lambda c: (-c.similarity, c.chunk_id))
            neg = neg[:math.floor(sc.negative_ratio * len(pos) + 1e-9)]
            # negatives last: they are dropped first when the group would exceed T
            ctxs = (context_items(pos, "positive", res, sc)
                    + context_items(neg, "hard_negative", res, sc))
            g = contexts_then_root(ctxs, res.store.doc_tokens(rs.root), ctx.target_length,
                                   ctx.rng("root", rs.root), res.store.ids[rs.root],
                                   rs.screened.anchors.tolist())
            stats = rs.stats(sc.signal, sc.epsilon)
            stats.update(dI_positive=[gain(c) for c in pos], dI_negative=[gain(c) for c in neg],
                         sim_positive=[c.similarity for c in pos],
                         sim_negative=[c.similarity for c in neg], negatives=len(neg))
            if sc.control == "length":
                stats.update(dI_control_positive=[c.verdict.control_gain(sc.signal) for c in pos],
                             dI_control_negative=[c.verdict.control_gain(sc.signal) for c in neg])
            out.append(RootResult([g] if g else [], stats))
        return out
