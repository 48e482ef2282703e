"""The sandbox probe: recall of planted values at controlled distances (ours).

For a held-out probe entity, the input is ``[profile; filler; query]`` where the query is the
reference sentence up to the value (``"<First> <Last> keeps the <attr>"``) and the filler makes
the whole input exactly ``length`` tokens, so the distance between the profile and the query
grows with the length. The control replaces the profile by filler of the same token length
(an equally long input without the information, DESIGN §3 "Distance controls").

Per length: ``acc`` (the value is the argmax next token), ``nll`` of the value's first token
with the profile, ``control_nll`` without it, and ``gain = control_nll - nll``. Scoring runs in
torch with the anchor-only head (no generation), so it is cheap enough for tuning.

Which entities and which seed: the caller passes ONE split of the sandbox's probe entities
(``harness.api.PROBE_SPLITS``; ``harness.api.probe_set`` returns a split's entities only)
and that split's seed (``harness.api.split_seed``): the final evaluation gives the ``test``
entities with ``spec.seed``, tuning the ``validation`` entities with
``spec.seed + VALIDATION_SEED_OFFSET``. ``probe_items`` takes the first ``n`` entities of what
it is given, so it never reaches past the split.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from harness.api import probe_set, world as W


def _filler_ids(tokenizer, rng: random.Random, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer(" " + W.filler(rng, 20), add_special_tokens=False)["input_ids"]
    return ids[:n]


def probe_items(tokenizer, probe: list[dict], length: int, n: int, seed: int) -> list[dict]:
    """``n`` probe inputs of exactly ``length`` tokens (with and without the profile), from
    the first ``n`` entities of ``probe`` (one split's entities, module doc); ``seed`` picks
    each entity's asked fact and the filler."""
    rng = random.Random(f"probe-{seed}-{length}")
    items = []
    for p in probe[:n]:
        attr, value = p["facts"][rng.randrange(len(p["facts"]))]
        prof = tokenizer(p["profile"], add_special_tokens=False)["input_ids"]
        query = tokenizer(" " + W.fact(attr, p["first"], p["last"], value)[:-len(value) - 2],
                          add_special_tokens=False)["input_ids"]
        target = tokenizer(" " + value, add_special_tokens=False)["input_ids"][0]
        gap = length - len(prof) - len(query) - 1
        if gap < 0:
            return []
        fill = _filler_ids(tokenizer, rng, gap + len(prof))
        with_p = prof + fill[:gap] + query + [target]
        control = fill[:gap + len(prof)] + query + [target]
        items.append({"with": with_p, "control": control, "target": target,
                      "distance": gap + len(query)})
    return items


@torch.no_grad()
def run_probe(model, tokenizer, probe: list[dict], lengths: list[int], n: int = 64,
              seed: int = 0, batch: int = 8, device: str = "cpu") -> dict[int, dict]:
    """Scores per length; lengths too short for a profile and a query are left out."""
    model.eval()
    out: dict[int, dict] = {}
    for L in lengths:
        items = probe_items(tokenizer, probe, L, n, seed)
        if not items:
            continue
        rec = {"acc": [], "nll": [], "control_nll": []}
        for i in range(0, len(items), batch):
            chunk = items[i:i + batch]
            for key in ("with", "control"):
                ids = torch.tensor([it[key] for it in chunk], device=device)
                head = model.get_output_embeddings()
                hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
                logits = head(hidden[:, L - 2])
                logp = torch.log_softmax(logits.float(), -1)
                tgt = torch.tensor([it["target"] for it in chunk], device=device)
                nll = -logp.gather(-1, tgt[:, None]).squeeze(-1)
                if key == "with":
                    rec["nll"] += nll.tolist()
                    rec["acc"] += (logp.argmax(-1) == tgt).float().tolist()
                else:
                    rec["control_nll"] += nll.tolist()
        r = {k: float(np.mean(v)) for k, v in rec.items()}
        r["gain"] = r["control_nll"] - r["nll"]
        r["n"] = len(items)
        r["distance_mean"] = float(np.mean([it["distance"] for it in items]))
        out[L] = r
    return out


class Probe:
    """The probe as a benchmark scored by loss (``harness.api.LossBenchmark``): built from the
    spec's entry like any benchmark, run by ``harness.evaluation.runner.evaluate_checkpoint``
    on one split of the sandbox's probe entities. ``acc`` is its headline
    (``eval/probe/avg/<L>``); ``gain`` and ``nll`` are logged as ``eval/probe/<metric>/<L>``."""

    name = "probe"
    scored_by = "loss"
    headline = "acc"
    metrics = ("acc", "gain", "nll")

    def __init__(self, entry=None):
        self.entry = entry

    def not_run(self, spec) -> str | None:
        if spec.corpus.path != "sandbox":
            return "the probe needs the sandbox corpus (corpus.path: sandbox)"
        return None

    def score(self, model, tokenizer, spec, lengths: list[int], split: str, seed: int
              ) -> dict[int, dict]:
        _, entities = probe_set(spec, tokenizer, split)
        return run_probe(model, tokenizer, entities, lengths,
                         n=spec.eval.samples_per_task * 4, seed=seed)
