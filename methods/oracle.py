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
"""
from __future__ import annotations

from typing import Literal, Sequence

from harness.api import RootResult, SpecError, StageContext
from methods._common import Params, control_result, random_chunks, validate_params


class OracleParams(Params):
    fill: Literal["random", "none"] = "random"


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
            if self.params.fill == "random" and contexts:
                room = ctx.target_length - min(len(store.doc_tokens(r)), ctx.target_length) \
                    - sum(len(t) for t, _ in contexts)
                contexts += random_chunks(ctx.resources.chunkset(), r, room,
                                          ctx.rng("random_context", r), "filler")
            out.append(control_result(ctx, r, contexts))
        return out
