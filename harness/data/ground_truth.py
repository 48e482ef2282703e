"""Verification quality where the truth is known: the sandbox's ground-truth fields.

The sandbox corpus (``harness.sandbox.world.generate_corpus``) writes, next to ``id`` and
``text``, the ground truth of every document: ``kind`` (``profile`` / ``reference`` /
``lookalike`` / ``filler``), ``entity`` (the entity's *name*, ``"<First> <Last>"``; ``None``
for filler) and ``lookalike_of`` (for a look-alike profile, the *name* of the entity it
imitates; ``None`` otherwise). Methods never read these fields; only this module does, to
measure how well a stage's verification picked its contexts (DESIGN §5: "verification accepts
the true profile and rejects a look-alike"). User corpora carry no truth: ``load_truth``
returns ``None`` for them and nothing is measured.

A context (one retrieved chunk, with the ``doc_id`` of its document and its ``role``,
``positive`` or ``hard_negative``, as ``methods._common.context_provenance`` records it) is
classified against its group's root:

* **true**: the root is a reference document of entity E and the context is E's profile (only
  reference roots have a true context; a profile, look-alike or filler root has none);
* **lookalike**: a look-alike profile whose ``lookalike_of`` is the root's entity;
* **other**: anything else (filler, unrelated profiles or references, look-alikes of other
  entities, and documents the truth table does not know).

Counts are per context chunk: a profile cut into two chunks that are both accepted counts
twice. Groups without ``contexts`` (NExtLong, standard) are ignored.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

KINDS = ("profile", "reference", "lookalike", "filler")
TRUTH_FIELDS = ("kind", "entity", "lookalike_of")


@dataclasses.dataclass(frozen=True)
class DocTruth:
    kind: str                 # profile / reference / lookalike / filler
    entity: str | None        # the entity's name (None for filler)
    lookalike_of: str | None  # a look-alike's imitated entity, by name (None otherwise)


@dataclasses.dataclass(frozen=True)
class Truth:
    """doc_id -> ``DocTruth``, and entity name -> the doc_id of its (true) profile."""
    docs: dict[str, DocTruth]
    profile_of: dict[str, str]

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, doc_id: str) -> DocTruth:
        return self.docs[doc_id]

    def get(self, doc_id: str) -> DocTruth | None:
        return self.docs.get(str(doc_id))


def _has_truth(record: Any) -> bool:
    return (isinstance(record, Mapping) and all(k in record for k in TRUTH_FIELDS)
            and record.get("kind") in KINDS)


def load_truth(corpus_path: str | Path, id_field: str = "id") -> Truth | None:
    """The ground truth of a jsonl corpus, or ``None`` when it carries none.

    Truth is read only when every record has ``kind`` (one of ``KINDS``), ``entity`` and
    ``lookalike_of`` and an id under ``id_field``; a corpus that is not a jsonl file (parquet,
    a folder, ``hf:…``), is empty, or lacks those fields on any record gives ``None``. Ids are
    strings, as the corpus reader makes them (an integer id ``7`` is ``"7"``).
    """
    path = Path(corpus_path)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    docs: dict[str, DocTruth] = {}
    profile_of: dict[str, str] = {}
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                return None
            if not _has_truth(rec) or rec.get(id_field) in (None, ""):
                return None       # checked record by record: a user corpus stops at line 1
            doc_id = str(rec[id_field])
            t = DocTruth(rec["kind"], rec["entity"], rec["lookalike_of"])
            docs[doc_id] = t
            if t.kind == "profile" and t.entity is not None:
                profile_of[t.entity] = doc_id
    return Truth(docs, profile_of) if docs else None


def classify(truth: Truth, root: DocTruth | None, context_doc: str) -> str:
    """``true`` / ``lookalike`` / ``other`` for one context of a root (see the module doc)."""
    ctx = truth.get(context_doc)
    if root is None or ctx is None or root.entity is None:
        return "other"
    if root.kind == "reference" and ctx.kind == "profile" and ctx.entity == root.entity:
        return "true"
    if ctx.kind == "lookalike" and ctx.lookalike_of == root.entity:
        return "lookalike"
    return "other"


def _provenance(group: Any) -> Mapping:
    """A provenance dict, or a ``stage_data.Group`` (its ``provenance``)."""
    return getattr(group, "provenance", group)


def group_quality(truth: Truth, groups: Iterable[Mapping]) -> dict[str, float | int]:
    """Verification quality of one stage's groups against the ground truth.

    ``groups``: provenance dicts ``{"root_id", "contexts": [{"doc_id", "role"}, ...]}`` (or
    ``Group`` objects); groups without contexts are skipped. Returns counts

    * ``groups`` (with contexts), ``roots`` (distinct root ids among them), ``positives``,
      ``negatives``, ``count_positive_true|lookalike|other``,
      ``count_negative_true|lookalike|other``, ``count_unknown_docs`` (contexts or roots
      missing from the truth table: a corpus mismatch), ``roots_with_truth`` (distinct
      reference roots whose entity's profile is in the corpus), ``roots_true_accepted``;

    and rates, each left out when its denominator is 0 (never NaN):

    * ``verify_precision`` = true positives / positives;
    * ``positive_lookalike_share``, ``positive_other_share`` = look-alike (other) positives /
      positives (the three positive shares sum to 1);
    * ``negatives_lookalike``, ``negatives_true`` = look-alike (true-profile) hard negatives /
      hard negatives;
    * ``true_profile_recall`` = ``roots_true_accepted / roots_with_truth``: the share of
      reference roots (with a group) whose true profile was accepted as a positive in any of
      their groups.
    """
    counts = {f"count_{r}_{c}": 0 for r in ("positive", "negative")
              for c in ("true", "lookalike", "other")}
    n_groups = 0
    unknown = 0
    roots: set[str] = set()
    truth_roots: set[str] = set()
    accepted_true: set[str] = set()
    for g in groups:
        prov = _provenance(g)
        contexts = prov.get("contexts")
        if not contexts:
            continue
        n_groups += 1
        root_id = str(prov["root_id"])
        roots.add(root_id)
        root = truth.get(root_id)
        if root is None:
            unknown += 1
        elif root.kind == "reference" and root.entity in truth.profile_of:
            truth_roots.add(root_id)
        for c in contexts:
            doc = str(c["doc_id"])
            if truth.get(doc) is None:
                unknown += 1
            role = "positive" if c.get("role") == "positive" else \
                "negative" if c.get("role") == "hard_negative" else None
            if role is None:
                continue          # a context of another role (none today) is not scored
            cls = classify(truth, root, doc)
            counts[f"count_{role}_{cls}"] += 1
            if role == "positive" and cls == "true":
                accepted_true.add(root_id)
    pos = sum(counts[f"count_positive_{c}"] for c in ("true", "lookalike", "other"))
    neg = sum(counts[f"count_negative_{c}"] for c in ("true", "lookalike", "other"))
    out: dict[str, float | int] = {
        "groups": n_groups, "roots": len(roots), "positives": pos, "negatives": neg,
        **counts, "count_unknown_docs": unknown, "roots_with_truth": len(truth_roots),
        "roots_true_accepted": len(accepted_true & truth_roots)}
    if pos:
        out["verify_precision"] = counts["count_positive_true"] / pos
        out["positive_lookalike_share"] = counts["count_positive_lookalike"] / pos
        out["positive_other_share"] = counts["count_positive_other"] / pos
    if neg:
        out["negatives_lookalike"] = counts["count_negative_lookalike"] / neg
        out["negatives_true"] = counts["count_negative_true"] / neg
    if truth_roots:
        out["true_profile_recall"] = len(accepted_true & truth_roots) / len(truth_roots)
    return out
