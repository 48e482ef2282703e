"""``standard``: randomly concatenated documents packed to the target length.

The papers' "Standard" row: no construction at all, so every comparison has a method-free
reference. Each document is its own group (document masking applies); documents longer than
the target length are cut to it.
"""
from __future__ import annotations

from methods._common import Params, validate_params
from harness.construct import RootResult
from harness.stage_data import Group


class StandardParams(Params):
    pass


class Standard:
    name = "standard"
    screening = "none"

    def __init__(self, params: dict | None = None, where: str = "params"):
        self.params = validate_params(StandardParams, params or {}, where)

    def process(self, ctx, roots):
        res, T = ctx.resources, ctx.target_length
        out = []
        for r in roots:
            toks = res.store.doc_tokens(r)[:T].astype("int64").tolist()
            g = Group(toks, {"root_id": res.store.ids[r], "role": "document"})
            out.append(RootResult([g] if toks else [], {"roots": 1, "root_tokens": len(toks)}))
        return out
