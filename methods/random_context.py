"""``random_context``: a control (ours, not from any paper): random contexts, no dependency.

The floor of a comparison (DESIGN §3): EntropyLong's layout ``[C_π(1); …; C_π(m); D]``
(``contexts_then_root`` at the target length), with contexts drawn at random, uniformly, from
the retrieval chunks (``ctx.resources.chunkset()``: the spec's ``retrieval.chunk_unit`` /
``chunk_size``, the chunks EntropyLong retrieves from) of *other* documents: never the root's
own, no chunk twice in a group. The draws are seeded per root and stage
(``ctx.rng("random_context", root)``, from the spec's seed), so a stage is reproducible and
another seed draws other contexts. No screening model, no anchors (so no group is held out for
the frontier loss gap).

"The same token counts" as EntropyLong, here: EntropyLong keeps its contexts, in priority order,
as long as they fit before the root in ``T`` tokens (the first that does not fit ends the
group); this control draws chunks by the same rule until the next one does not fit, so every
group fills ``T`` up to less than one chunk, with chunks of EntropyLong's size. Its groups are
therefore as long as EntropyLong's can be, not as long as a given EntropyLong group is (that
needs EntropyLong's screening); the stage's loss-token budget is the same for every method
(the packer's), so longer groups mean fewer roots per stage. A root that leaves no room for a
chunk (``T`` or more tokens, or nearly) gives no group, as in EntropyLong.

Each context is recorded with ``role: "positive"`` (so the ground-truth report scores it: its
``verify_precision`` is the chance rate of drawing a true profile) and ``source: "random"``.
"""
from __future__ import annotations

from typing import Sequence

from harness.api import RootResult, StageContext
from methods._common import Params, control_result, random_chunks, validate_params

class RandomContextParams(Params):
    pass


class RandomContext:
    name = "random_context"
    screening = "none"

    def __init__(self, params: dict | None = None, where: str = "params"):
        self.params = validate_params(RandomContextParams, params or {}, where)

    @staticmethod
    def draw(cs, root: int, room: int, rng) -> list:
        """(tokens, provenance) of random chunks of documents other than ``root``, in draw
        order, until the next one would not fit in ``room`` tokens."""
        return random_chunks(cs, root, room, rng, "positive")

    def process(self, ctx: StageContext, roots: Sequence[int]) -> list[RootResult]:
        res, T = ctx.resources, ctx.target_length
        cs = res.chunkset()
        out = []
        for r in roots:
            room = T - min(len(res.store.doc_tokens(r)), T)
            contexts = self.draw(cs, r, room, ctx.rng("random_context", r))
            out.append(control_result(ctx, r, contexts))
        return out
