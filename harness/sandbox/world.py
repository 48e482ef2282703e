"""The sandbox world: a generated corpus with planted cross-document dependencies.

Every document is plain text in a jsonl corpus, like any user corpus. Four kinds:

* **profile**: states attributes of one entity, ``<First> <Last> keeps the <attr> <value>.``
  between predictable filler sentences;
* **reference**: filler that later *repeats* one or two of those statements word for word (the
  planted dependency: the value is unpredictable without the profile and copyable with it);
* **look-alike profile**: a distractor entity with the same first name, a different last name
  and different values for the same attributes;
* **filler**: predictable text only.

Design choices (DESIGN §5, measured in ``docs/sandbox.md``):

* values are pseudo-words drawn uniformly from a lexicon of 1,000 (``ln 1000 ≈ 6.9`` nats when
  unpredictable), each a single token of the sandbox tokenizer, so a value sits far above the
  document's ``μ_H + 2σ_H`` while filler is predictable (values from small lists, such as 16
  colours, would cap a value's entropy below the threshold);
* the later mention repeats the earlier statement's exact wording, ``<First> <Last> keeps the
  <attribute> <value>.``, with the attribute right before the value: a tiny transformer learns
  this by induction (copying what followed the same token earlier). A look-alike shares the
  first name and the attributes, so a tiny model copies its value just as confidently;
* one profile-reference episode per pre-training row, with a distance curriculum.

Everything is a pure function of the seed.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Iterator

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
          "th", "sh", "ch", "kr", "tr", "br"]
VOWELS = ["a", "e", "i", "o", "u", "ai"]
CODAS = ["n", "r", "l", "s", "k", "m", "x", "th"]

# Single-word attributes that never occur in filler: the attribute is the token right before
# the value, so that copying needs only induction on the previous token.
ATTRIBUTES = ["guild", "ship", "mentor", "vault", "crest", "song", "horse", "lantern", "banner",
              "oath", "sword", "falcon"]

# Predictable filler: a small grammar, so that filler tokens sit well below μ_H + 2σ_H.
_F_SUBJ = ["The river", "The old mill", "The north road", "The market", "The harbor",
           "The bell tower", "The orchard", "The stone bridge"]
_F_VERB = ["was quiet", "was busy", "stood still", "looked calm", "was open", "felt cold"]
_F_TIME = ["in the morning", "at noon", "in the evening", "all day", "after the rain"]

Rng = random.Random


def _syllable(rng: Rng, coda: bool) -> str:
    s = rng.choice(ONSETS) + rng.choice(VOWELS)
    return s + rng.choice(CODAS) if coda else s


def _name_pool(rng: Rng, n: int, syllables: int) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        w = "".join(_syllable(rng, i == syllables - 1) for i in range(syllables))
        out.add(w.capitalize())
    return sorted(out)


def filler_sentence(rng: Rng) -> str:
    return f"{rng.choice(_F_SUBJ)} {rng.choice(_F_VERB)} {rng.choice(_F_TIME)}."


def filler(rng: Rng, n_sentences: int) -> str:
    return " ".join(filler_sentence(rng) for _ in range(n_sentences))


def fact(attr: str, first: str, last: str, value: str) -> str:
    """The one wording shared by a profile and every later mention."""
    return f"{first} {last} keeps the {attr} {value}."


@dataclasses.dataclass(frozen=True)
class Entity:
    first: str
    last: str
    facts: tuple[tuple[str, str], ...]      # (attribute, value)
    lookalike_of: str | None = None          # id of the entity this one imitates

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    """Sizes of the generated world. Defaults are ours (the papers have no sandbox)."""
    seed: int = 0
    n_entities: int = 300            # corpus entities (each with a profile and a reference)
    lookalike_fraction: float = 0.5  # share of corpus entities that get a look-alike profile
    n_filler_docs: int = 100
    n_probe_entities: int = 200      # held out: never in the corpus nor in pre-training
    facts_per_entity: int = 3
    n_first_names: int = 400
    n_last_names: int = 600
    n_values: int = 1000


class World:
    """Name pools and entity factories for one seed. Splits use disjoint entity sets."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        rng = random.Random(f"names-{spec.seed}")
        self.first_names = _name_pool(rng, spec.n_first_names, 2)
        self.last_names = _name_pool(rng, spec.n_last_names, 2)
        taken = {n.lower() for n in self.first_names + self.last_names}
        values: set[str] = set()
        while len(values) < spec.n_values:
            v = _syllable(rng, False) + _syllable(rng, True)
            if v not in taken:
                values.add(v)
        self.values = sorted(values)

    def value(self, rng: Rng) -> str:
        return rng.choice(self.values)

    def lexicon(self) -> list[str]:
        """Every name and value, for the tokenizer to learn them as whole words."""
        return self.first_names + self.last_names + self.values

    def entity(self, rng: Rng, used: set[str]) -> Entity:
        while True:
            first, last = rng.choice(self.first_names), rng.choice(self.last_names)
            if f"{first} {last}" not in used:
                break
        used.add(f"{first} {last}")
        attrs = rng.sample(ATTRIBUTES, self.spec.facts_per_entity)
        return Entity(first, last, tuple((a, self.value(rng)) for a in attrs))

    def lookalike(self, rng: Rng, e: Entity, used: set[str]) -> Entity:
        """Same first name, another last name, same attributes, other values."""
        while True:
            last = rng.choice(self.last_names)
            if last != e.last and f"{e.first} {last}" not in used:
                break
        used.add(f"{e.first} {last}")
        facts = []
        for a, v in e.facts:
            v2 = self.value(rng)
            while v2 == v:
                v2 = self.value(rng)
            facts.append((a, v2))
        return Entity(e.first, last, tuple(facts), lookalike_of=e.name)


def profile_text(rng: Rng, e: Entity) -> str:
    parts = [f"Record of {e.name}.", filler(rng, rng.randint(1, 2))]
    for a, v in e.facts:
        parts.append(fact(a, e.first, e.last, v))
        parts.append(filler(rng, rng.randint(1, 2)))
    return " ".join(parts)


def reference_text(rng: Rng, e: Entity, n_before: int, n_mentions: int | None = None,
                   n_after: int = 2) -> tuple[str, list[tuple[str, str]]]:
    """Filler, then the entity's facts repeated verbatim; returns text and the planted facts."""
    k = n_mentions or rng.randint(1, len(e.facts))
    mentioned = rng.sample(list(e.facts), k)
    parts = [filler(rng, n_before)] if n_before else []
    for a, v in mentioned:
        parts.append(fact(a, e.first, e.last, v))
        parts.append(filler(rng, rng.randint(1, 3)))
    if n_after:
        parts.append(filler(rng, n_after))
    return " ".join(parts), mentioned


def generate_corpus(spec: WorldSpec) -> tuple[list[dict], list[dict]]:
    """The sandbox corpus (jsonl records) and the held-out probe entities.

    Corpus records: ``{"id", "text", "kind", "entity", "facts", "lookalike_of"}``; only
    ``id`` and ``text`` are what a method may read, the rest is ground truth for tests.
    """
    world = World(spec)
    rng = random.Random(f"corpus-{spec.seed}")
    used: set[str] = set()
    docs: list[dict] = []
    for i in range(spec.n_entities):
        e = world.entity(rng, used)
        docs.append(_record(f"profile-{i:05d}", profile_text(rng, e), "profile", e))
        text, mentioned = reference_text(rng, e, n_before=rng.randint(2, 8))
        docs.append(_record(f"reference-{i:05d}", text, "reference", e, mentioned))
        if rng.random() < spec.lookalike_fraction:
            la = world.lookalike(rng, e, used)
            docs.append(_record(f"lookalike-{i:05d}", profile_text(rng, la), "lookalike", la))
    for i in range(spec.n_filler_docs):
        docs.append({"id": f"filler-{i:05d}", "text": filler(rng, rng.randint(8, 20)),
                     "kind": "filler", "entity": None, "facts": [], "lookalike_of": None})
    rng.shuffle(docs)
    probe = [entity_record(world, rng, used, f"probe-{i:05d}")
             for i in range(spec.n_probe_entities)]
    return docs, probe


def entity_record(world: World, rng: Rng, used: set[str], record_id: str) -> dict:
    """An entity with its look-alike and both profiles, as a ``probe.jsonl`` line."""
    e = world.entity(rng, used)
    la = world.lookalike(rng, e, used)
    return {"id": record_id, "entity": e.name, "first": e.first,
            "last": e.last, "facts": [list(f) for f in e.facts],
            "lookalike": {"name": la.name, "last": la.last,
                          "facts": [list(f) for f in la.facts]},
            "profile": profile_text(rng, e),
            "lookalike_profile": profile_text(rng, la),
            "reference_seed": rng.randrange(2**31)}


# ---------------------------------------------------------------- benchmark substitutes
# Used by the benchmarks only when the corpus is the sandbox and the real data is absent
# (README "Evaluation"), and labelled as substitutes in their provenance.

HAYSTACK_VERSION = 1
HAYSTACK_SENTENCES = 20_000      # about 160K tokens of the sandbox tokenizer


def haystack(seed: int = 0, n_sentences: int = HAYSTACK_SENTENCES) -> dict:
    """The world's filler as a haystack, in the schema of RULER's ``PaulGrahamEssays.json``
    (``{"text": ...}``): paragraphs of 4-9 filler sentences between blank lines. RULER's essay
    tasks use it in place of the essays; a pure function of ``seed``."""
    rng = random.Random(f"haystack-{seed}")
    paragraphs, left = [], n_sentences
    while left > 0:
        k = min(left, rng.randint(4, 9))
        paragraphs.append(filler(rng, k))
        left -= k
    return {"text": "\n\n".join(paragraphs)}


MC_VERSION = 1
MC_CONTEXT_CHARS = 60_000        # about 12K tokens of the sandbox tokenizer, 10K words
MC_PROFILE_SHARE = 0.35          # share of profiles among the documents after the head
MC_CHOICES = ("A", "B", "C", "D")


def mc_question(entity: dict, seed: int) -> tuple[str, str]:
    """The planted fact (attribute, value) that the item about ``entity`` asks."""
    attr, value = _mc_rng(entity, seed).choice(entity["facts"])
    return attr, value


def _mc_rng(entity: dict, seed: int) -> Rng:
    return random.Random(f"mc-{seed}-{entity['id']}")


def mc_items(entities: list[dict], seed: int = 0, context_chars: int = MC_CONTEXT_CHARS,
             prefix: str = "sandbox-mc") -> list[dict]:
    """One multiple-choice item per entity (records as in ``probe.jsonl``), in LongBench-v2's
    item schema (``_id, domain, sub_domain, difficulty, length, question, choice_A..D,
    answer, context``); a pure function of ``entities``, ``seed`` and ``context_chars``.

    The question asks one planted fact, ``Which <attribute> does <First> <Last> keep?``; the
    choices are the true value and three other values of the same attribute, the true one
    under ``A, A, B, B, C, C, D, D, A, ...`` in turn (easy and hard alternate), so that any
    run of 8 items is balanced and a model that always answers one letter scores 25 %. The
    context is documents between blank lines, about ``context_chars`` characters:

    * the **head**: the entity's profile and a second profile, in random order: for a *hard*
      item (odd positions) its look-alike's (same first name, same attribute, another value,
      which is one of the choices), for an *easy* item another entity's;
    * then profiles of the other entities (and of their look-alikes) among filler documents.
      A hard item's two other distractors are values of the same attribute stated in these
      profiles where there are enough; an easy item's three distractors occur nowhere in the
      context.

    Where the evidence sits: LongBench-v2's middle truncation keeps the head and the tail of
    the prompt, so a profile at the head survives every length whose half budget holds the
    instruction and the two head profiles (about 170 tokens of the sandbox tokenizer: with the
    default reserve, 89 of the 100 test-split items keep it at 512, all of them from 1024),
    while the question at the end moves away from it as the length
    grows and more distractor profiles are kept between them: the task gets harder with the
    length, and the items are truncated at every length up to about 12K tokens. ``length`` is
    ``short`` for all of them (LongBench-v2's buckets: under 32K words)."""
    return [_mc_item(e, i, entities, seed, context_chars, prefix)
            for i, e in enumerate(entities)]


def _mc_item(e: dict, i: int, entities: list[dict], seed: int, context_chars: int,
             prefix: str) -> dict:
    import re

    rng = _mc_rng(e, seed)
    attr, value = rng.choice(e["facts"])              # as mc_question
    hard = i % 2 == 1
    others = [x for x in entities if x["id"] != e["id"]]
    head = [e["profile"], e["lookalike_profile"] if hard else rng.choice(others)["profile"]]
    rng.shuffle(head)
    body, stated, size = [], [], sum(len(d) + 2 for d in head)
    while size < context_chars:
        if others and rng.random() < MC_PROFILE_SHARE:
            o = rng.choice(others)
            own = rng.random() < 0.5
            body.append(o["profile"] if own else o["lookalike_profile"])
            stated += o["facts"] if own else o["lookalike"]["facts"]
        else:
            body.append(filler(rng, rng.randint(4, 10)))
        size += len(body[-1]) + 2
    context = "\n\n".join(head + body)
    taken = {value}
    if hard:
        la_value = dict(map(tuple, e["lookalike"]["facts"]))[attr]
        taken.add(la_value)
        in_context = sorted({v for a, v in stated if a == attr} - taken)
        distractors = [la_value] + rng.sample(in_context, min(2, len(in_context)))
        words = set()
    else:
        distractors, words = [], set(re.findall(r"[A-Za-z]+", context))
    pool = sorted({v for x in others for a, v in x["facts"] + x["lookalike"]["facts"]
                   if a == attr} - taken - set(distractors) - words)
    if len(pool) < 3 - len(distractors):
        raise ValueError(f"mc_items: {len(entities)} entities are too few for item {e['id']}: "
                         f"{len(pool)} other values of {attr!r} to draw "
                         f"{3 - len(distractors)} distractors from")
    distractors += rng.sample(pool, 3 - len(distractors))
    rng.shuffle(distractors)
    choices = distractors[:]
    choices.insert((i // 2) % len(MC_CHOICES), value)
    return {"_id": f"{prefix}-{seed}-{e['id']}", "domain": "Sandbox planted facts",
            "sub_domain": "Profile lookup", "difficulty": "hard" if hard else "easy",
            "length": "short", "question": f"Which {attr} does {e['first']} {e['last']} keep?",
            **{f"choice_{c}": v for c, v in zip(MC_CHOICES, choices)},
            "answer": MC_CHOICES[choices.index(value)], "context": context}


def _record(doc_id: str, text: str, kind: str, e: Entity,
            mentioned: list[tuple[str, str]] | None = None) -> dict:
    return {"id": doc_id, "text": text, "kind": kind, "entity": e.name,
            "facts": [list(f) for f in (mentioned if mentioned is not None else e.facts)],
            "lookalike_of": e.lookalike_of}


def pretraining_texts(spec: WorldSpec, seed: int, max_before: int,
                      drill_fraction: float = 0.0,
                      mix: tuple[float, float] = (0.6, 0.8)) -> Iterator[str]:
    """Endless pre-training rows: one profile-reference episode each (or a reference alone).

    ``drill_fraction`` of the rows are fact drills: a dense profile (6-12 facts), then every
    fact again in shuffled order. They are the densest copy signal in the very wording of
    profiles and references, so the copying a tiny model learns from them is the copying the
    episodes need (drills in another wording, lists of values stated twice, taught a tiny
    model to copy those lists perfectly and nothing else: ``docs/sandbox.md``).

    Entities are drawn from their own seed stream, so they almost never coincide with corpus or
    probe entities; ``max_before`` sets how much filler separates profile and reference (the
    distance curriculum grows it during training).
    """
    world = World(spec)
    rng = random.Random(f"pretrain-{spec.seed}-{seed}")
    used: set[str] = set()
    while True:
        if len(used) > 200_000:
            used.clear()
        e = world.entity(rng, used)
        r = rng.random()
        gap = filler(rng, rng.randint(0, max_before))
        ref, _ = reference_text(rng, e, n_before=rng.randint(0, 2), n_after=1)
        if r < drill_fraction:   # a fact drill: a dense profile, then its facts again, shuffled
            facts = [(a, world.value(rng))
                     for a in rng.sample(ATTRIBUTES, rng.randint(6, len(ATTRIBUTES)))]
            first = [fact(a, e.first, e.last, v) for a, v in facts]
            rng.shuffle(facts)
            again = [fact(a, e.first, e.last, v) for a, v in facts]
            yield " ".join([f"Record of {e.name}."] + first
                           + [filler(rng, rng.randint(0, 2))] + again)
            continue
        r = (r - drill_fraction) / (1 - drill_fraction)
        if r < mix[0]:   # profile ... reference
            yield " ".join(x for x in (profile_text(rng, e), gap, ref) if x)
        elif r < mix[1]:  # look-alike and true profile, either order, then the reference
            la = world.lookalike(rng, e, used)
            pair = [profile_text(rng, e), profile_text(rng, la)]
            rng.shuffle(pair)
            yield " ".join(x for x in (pair[0], pair[1], gap, ref) if x)
        else:            # reference alone: values must stay unpredictable without context
            yield ref


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
