"""``oracle``: a control (ours, not from any paper): the true contexts, read from ground truth.

The ceiling of a comparison (DESIGN §3): EntropyLong's layout ``[C_π(1); …; C_π(m); D]``
(``contexts_then_root`` at the target length), but the contexts are not screened, retrieved
or verified: they are the *true profiles* of the entities the root references, read from the
corpus's ground truth (``ctx.resources.truth()``; the sandbox writes it, a user corpus has
none and the method refuses to run). A root is a reference document of entity E; its true
context is E's profile document, whole, from the token store: the rule by which the ground
truth scores a context ``true``. Profile, look-alike and filler roots, and references whose
profile is not in the corpus, have no true context and give no group (as EntropyLong's roots
without a verified context). No screening model, no anchors (so no group is held out for the
frontier loss gap).

Each context is recorded with ``role: "positive"`` (the role the ground-truth report scores,
so ``verify_precision`` is 1 by construction) and ``source: "oracle"``. A world or recipe in
which this control does not beat ``random_context`` cannot tell methods apart.

``fill`` (ours): with ``random`` (the default), the rest of the group is filled with the chunks
``random_context`` would draw for the same root and stage (the same generator, ``role:
"filler"``, not scored by the ground-truth report) until the next one does not fit, and the
true profile is shuffled in among them: the oracle's group is then as long as
``random_context``'s, and the two differ only in whether the true context is there and how
far it sits from the root (anywhere up to the target length). With ``none`` the group is the
profile and the root alone (about 175 tokens in the sandbox): measured in ``docs/controls.md``,
that ceiling taught the dependency only at short distances (probe gain 6.0 nats at 2× the base
context, 0.4 at 4×), because no training row put a profile farther from its reference than
one group.

With ``pairs`` the rest of the group is filled with other entities' (true profile, reference)
pairs, whole documents drawn at random (``ctx.rng("oracle-pairs", root)``) from the corpus's
references whose profile is in it, until the next pair does not fit; the group is laid out
*profiles first, then references* (each half shuffled), the root last: every profile precedes
its reference, and the distances spread from a few tokens to nearly the target length (a
triangular spread). The group then holds about one dependency per 175 tokens (the density of
``none``) at the distances of ``random`` (both measured in ``docs/controls.md``: ``none`` taught
the dependency only near, ``random`` held 11× fewer dependencies for the same loss budget). The
fill pairs carry ``role: "filler"`` (not scored as the root's contexts), ``source:
"oracle-pair"`` and the entity they belong to. This is the best *data* for the dependency
rather than EntropyLong's layout with better contexts; the layout differs in the order only.
"""
from __future__ import annotations

import random
from typing import Literal, Sequence

from harness.api import RootResult, SpecError, StageContext
from methods._common import (Params, contexts_then_root, control_result, random_chunks,
                             validate_params)

MAX_PAIR_MISSES = 1000     # draws of a pair that is the root's own or already in the group


class OracleParams(Params):
    fill: Literal["random", "pairs", "none"] = "random"


class _InOrder(random.Random):
    """A generator whose ``shuffle`` keeps the order (the pairs layout is ordered already)."""

    def shuffle(self, x, *args, **kwargs):
        return None


class Oracle:
    name = "oracle"
    screening = "none"

    def __init__(self, params: dict | None = None, where: str = "params"):
        self.params = validate_params(OracleParams, params or {}, where)

    def truth(self, ctx: StageContext):
        truth = ctx.resources.truth()
        if truth is None:
            raise SpecError(
                f"method '{self.name}' (a control) reads the true contexts from the corpus's "
                f"ground truth, and corpus {ctx.resources.corpus_path} carries none: the "
                f"oracle needs a corpus with ground truth (the sandbox, corpus.path: sandbox); "
                f"remove it from methods for this corpus")
        return truth

    @staticmethod
    def true_profiles(truth, root_id: str) -> list[str]:
        """Doc ids of the true profiles of the entities ``root_id`` references."""
        root = truth.get(root_id)
        if root is None or root.kind != "reference" or root.entity not in truth.profile_of:
            return []
        return [truth.profile_of[root.entity]]

    def _pair_pool(self, ctx: StageContext, truth) -> list[tuple[int, int]]:
        """(profile index, reference index) of every reference in the store whose entity's
        profile is in it, in store order (cached per store; the cache holds the store itself,
        so that another store can never be taken for it)."""
        store = ctx.resources.store
        if getattr(self, "_pool_store", None) is not store:
            pool = []
            for i, d in enumerate(store.ids):
                t = truth.get(d)
                if t is None or t.kind != "reference" or t.entity not in truth.profile_of:
                    continue
                try:
                    pool.append((store.doc_index(truth.profile_of[t.entity]), i))
                except KeyError:
                    continue
            self._pool, self._pool_store = pool, store
        return self._pool

    def pairs(self, ctx: StageContext, truth, root: int, profile: int, room: int
              ) -> list[tuple[list, list]]:
        """Other entities' (profile, reference) pairs that fit in ``room`` tokens, drawn at
        random: [(profile item, reference item), ...] as (tokens, provenance)."""
        store, pool = ctx.resources.store, self._pair_pool(ctx, truth)
        rng = ctx.rng("oracle-pairs", root)
        used, out, misses = {root, profile}, [], 0
        while pool and room > 0 and misses < MAX_PAIR_MISSES:
            p, r = pool[rng.randrange(len(pool))]
            if p in used or r in used:
                misses += 1
                continue
            tp, tr = store.doc_tokens(p), store.doc_tokens(r)
            if len(tp) + len(tr) > room:
                break
            used.update((p, r))
            room -= len(tp) + len(tr)
            entity = truth.get(store.ids[r]).entity
            out.append(((tp, {"doc_id": store.ids[p], "role": "filler", "source": "oracle-pair",
                              "pair": "profile", "entity": entity}),
                        (tr, {"doc_id": store.ids[r], "role": "filler", "source": "oracle-pair",
                              "pair": "reference", "entity": entity})))
        return out

    def _pairs_result(self, ctx: StageContext, truth, r: int, contexts: list) -> RootResult:
        """The pairs layout: [profiles (the root's among them), shuffled; references,
        shuffled; root]."""
        store = ctx.resources.store
        root_tokens = store.doc_tokens(r)
        (ptoks, pprov), = contexts
        room = ctx.target_length - min(len(root_tokens), ctx.target_length) - len(ptoks)
        pairs = self.pairs(ctx, truth, r, store.doc_index(pprov["doc_id"]), room)
        rng = ctx.rng("root", r)
        profiles = [(ptoks, pprov)] + [a for a, _ in pairs]
        references = [b for _, b in pairs]
        rng.shuffle(profiles)
        rng.shuffle(references)
        g = contexts_then_root(profiles + references, root_tokens, ctx.target_length,
                               _InOrder(0), store.ids[r], refit=False)
        kept = g.provenance["contexts"] if g else []
        return RootResult([g] if g else [], {
            "roots": 1, "root_tokens": len(root_tokens), "contexts": len(kept),
            "context_tokens": sum(c["end"] - c["start"] for c in kept),
            "fill_pairs": len(pairs) if g else 0})

    def process(self, ctx: StageContext, roots: Sequence[int]) -> list[RootResult]:
        truth = self.truth(ctx)
        store = ctx.resources.store
        out = []
        for r in roots:
            contexts = []
            for doc_id in self.true_profiles(truth, store.ids[r]):
                try:
                    i = store.doc_index(doc_id)     # the store's reverse map, built once
                except KeyError:                     # skipped by the corpus reader
                    continue
                contexts.append((store.doc_tokens(i), {"doc_id": doc_id, "role": "positive",
                                                       "source": "oracle"}))
            if self.params.fill == "pairs" and contexts:
                out.append(self._pairs_result(ctx, truth, r, contexts))
                continue
            if self.params.fill == "random" and contexts:
                room = ctx.target_length - min(len(store.doc_tokens(r)), ctx.target_length) \
                    - sum(len(t) for t, _ in contexts)
                contexts += random_chunks(ctx.resources.chunkset(), r, room,
                                          ctx.rng("random_context", r), "filler")
            out.append(control_result(ctx, r, contexts))
        return out
