"""``standard``: randomly concatenated documents packed into long rows (the papers' baseline).

The papers' "Standard" row is no construction at all: documents in random order, concatenated
(each followed by the end-of-text token) and cut into rows of the target length, with attention
across documents within a row, as in ordinary pre-training. So the baseline does see long
inputs, only without planned dependencies. ``document_masking: true`` (ours, an ablation) makes
each document its own attention span instead, so the baseline never attends beyond one
document. Roots are the core's seeded root stream, so the order is random and reproducible.
"""
from __future__ import annotations

from typing import Sequence

from harness.api import Group, RootResult, StageContext
from methods._common import Params, validate_params


class StandardParams(Params):
    document_masking: bool = False


class Standard:
    name = "standard"
    screening = "none"

    def __init__(self, params: dict | None = None, where: str = "params"):
        self.params = validate_params(StandardParams, params or {}, where)

    @property
    def attention(self) -> str:
        """``row``: one attention span per packed row; ``group``: one per document."""
        return "group" if self.params.document_masking else "row"

    def process(self, ctx: StageContext, roots: Sequence[int]) -> list[RootResult]:
        res, T = ctx.resources, ctx.target_length
        eos = res.tokenizer.eos_token_id
        out = []
        for r in roots:
            toks = res.store.doc_tokens(r).astype("int64").tolist()
            if self.attention == "row" and eos is not None and toks:
                toks = toks + [int(eos)]
            toks = toks[:T]
            g = Group(toks, {"root_id": res.store.ids[r], "role": "document"})
            out.append(RootResult([g] if toks else [], {"roots": 1, "root_tokens": len(toks)}))
        return out
