"""The sandbox probe: recall of planted values at controlled distances (ours).

For a held-out probe entity, the input is ``[filler; profile; filler; query]`` where the query
is the reference sentence up to the value (``"<First> <Last> keeps the <attr>"``) and the filler
makes the whole input exactly ``length`` tokens, so the distance between the profile and the
query grows with the length. The filler between profile and query is whole sentences, so the
query starts a sentence as every mention in the world does; the tokens that whole sentences
leave over go before the profile. (Until version 2 of the probe the filler was cut at a token
count, so the query usually continued a cut filler sentence, ``"... stood still in the <First>
<Last> keeps the <attr>"``: models that follow the filler's grammar then bet on the filler's
next word, `` was``, instead of a value; ``docs/sandbox.md``.) The control replaces the profile
by filler of the same token length (an equally long input without the information, DESIGN §3
"Distance controls").

``probe_lookalike`` (ours) is the same probe with a distractor: the entity's look-alike profile
(same first name and attributes, other values; DESIGN §5) stands between the profile and the
query, halfway, in the input and in its control alike. A model that copies what followed the
attribute last time takes the look-alike's value; the true one needs the whole name. With a base
model that copies by content, any long data teaches the plain probe at 4× the base context
(``docs/sandbox.md``), so the plain probe no longer tells data apart; the distractor keeps a
part of the task that only the right data teach.

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


PROBE_VERSION = 2   # 1: the filler before the query was cut at a token count (module doc)


def _filler_ids(tokenizer, rng: random.Random, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer(" " + W.filler(rng, 20), add_special_tokens=False)["input_ids"]
    return ids[:n]


def _whole_sentences(tokenizer, rng: random.Random, n: int) -> list[int]:
    """Filler of whole sentences, at most ``n`` tokens, as close to ``n`` as the next sentence
    allows."""
    ids: list[int] = []
    while True:
        s = tokenizer(" " + W.filler_sentence(rng), add_special_tokens=False)["input_ids"]
        if len(ids) + len(s) > n:
            return ids
        ids += s


def probe_items(tokenizer, probe: list[dict], length: int, n: int, seed: int,
                lookalike: bool = False) -> list[dict]:
    """``n`` probe inputs of exactly ``length`` tokens (with and without the profile), from
    the first ``n`` entities of ``probe`` (one split's entities, module doc); ``seed`` picks
    each entity's asked fact and the filler. ``lookalike``: the entity's look-alike profile
    stands halfway between the profile and the query, in both inputs (``probe_lookalike``);
    ``distractor`` is then the look-alike's value for the asked attribute."""
    rng = random.Random(f"probe-{seed}-{length}" + ("-lookalike" if lookalike else ""))
    items = []
    for p in probe[:n]:
        k = rng.randrange(len(p["facts"]))
        attr, value = p["facts"][k]
        prof = tokenizer(p["profile"], add_special_tokens=False)["input_ids"]
        query = tokenizer(" " + W.fact(attr, p["first"], p["last"], value)[:-len(value) - 2],
                          add_special_tokens=False)["input_ids"]
        target = tokenizer(" " + value, add_special_tokens=False)["input_ids"][0]
        la = tokenizer(" " + p["lookalike_profile"], add_special_tokens=False)["input_ids"] \
            if lookalike else []
        gap = length - len(prof) - len(la) - len(query) - 1
        if gap < 0:
            return []
        first = _whole_sentences(tokenizer, rng, gap // 2) if lookalike else []
        second = _whole_sentences(tokenizer, rng, gap - len(first))
        mid = first + la + second
        head = length - 1 - len(prof) - len(mid) - len(query)   # before the profile
        fill = _filler_ids(tokenizer, rng, head + len(prof))
        with_p = fill[:head] + prof + mid + query + [target]
        control = fill[:head + len(prof)] + mid + query + [target]
        item = {"with": with_p, "control": control, "target": target,
                "distance": len(mid) + len(query)}
        if lookalike:
            a, v = p["lookalike"]["facts"][k]
            assert a == attr, (p["entity"], a, attr)
            item["distractor"] = tokenizer(" " + v, add_special_tokens=False)["input_ids"][0]
        items.append(item)
    return items


@torch.no_grad()
def run_probe(model, tokenizer, probe: list[dict], lengths: list[int], n: int = 64,
              seed: int = 0, batch: int = 8, device: str = "cpu", lookalike: bool = False
              ) -> dict[int, dict]:
    """Scores per length; lengths too short for a profile and a query are left out. With
    ``lookalike``, also ``distractor_acc``: how often the look-alike's value is the argmax."""
    model.eval()
    out: dict[int, dict] = {}
    for L in lengths:
        items = probe_items(tokenizer, probe, L, n, seed, lookalike=lookalike)
        if not items:
            continue
        rec = {"acc": [], "nll": [], "control_nll": []} | (
            {"distractor_acc": []} if lookalike else {})
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
                    if lookalike:
                        dis = torch.tensor([it["distractor"] for it in chunk], device=device)
                        rec["distractor_acc"] += (logp.argmax(-1) == dis).float().tolist()
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
    lookalike = False
    version = PROBE_VERSION     # evaluations of another version are not reused (eval_name)

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
                         n=spec.eval.samples_per_task * 4, seed=seed,
                         lookalike=self.lookalike)


class ProbeLookalike(Probe):
    """The probe with the entity's look-alike profile between the profile and the query
    (module doc). ``distractor_acc`` (the look-alike's value is the argmax) is logged too."""

    name = "probe_lookalike"
    metrics = ("acc", "gain", "nll", "distractor_acc")
    lookalike = True
