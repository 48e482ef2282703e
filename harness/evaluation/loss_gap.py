"""Per-stage probes: loss gap and curriculum metrics (DESIGN §3; the loss-gap definition is
ours, the paper's exact one is not public).

Loss gap of a model on (context C, root D, anchors) triples: the mean NLL of D's anchor tokens
without C minus with C. Measured after each stage on (a) a fixed held-out probe set (the
sandbox's probe entities: true profile, reference, planted value tokens) and (b) the stage's
own freshly built data (the frontier: groups with contexts, at the anchors their screening
found).
"""
from __future__ import annotations

import json

import numpy as np
import torch

from harness.config import Spec
from harness.construction.scoring import score_positions


def _padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask."""
    T = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), T), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, :len(s)] = torch.tensor(s)
        mask[j, :len(s)] = 1
    return ids, mask


@torch.no_grad()
def loss_gap(model, triples: list[tuple[list[int], list[int], list[int]]], batch: int = 8,
             device: str = "cpu") -> dict:
    """``triples``: (context ids, root ids, anchor positions in the root, each ≥ 1)."""
    model.eval()
    without, with_ = [], []
    for i in range(0, len(triples), batch):
        chunk = [t for t in triples[i:i + batch] if t[2]]
        if not chunk:
            continue
        for use_ctx in (False, True):
            ids, mask = _padded([(c if use_ctx else []) + d for c, d, _ in chunk])
            pos = [torch.tensor(a) + (len(c) if use_ctx else 0) for c, _, a in chunk]
            scored = score_positions(model, ids.to(device), pos, attention_mask=mask.to(device))
            vals = [float(n.mean()) for _, n in scored]
            (with_ if use_ctx else without).extend(vals)
    if not without:
        return {"loss_gap": float("nan"), "nll_without": float("nan"),
                "nll_with": float("nan"), "n": 0}
    a, b = np.asarray(without), np.asarray(with_)
    return {"loss_gap": float((a - b).mean()), "nll_without": float(a.mean()),
            "nll_with": float(b.mean()), "n": int(a.size)}


@torch.no_grad()
def short_context_loss(model, seqs: list[list[int]], batch: int = 16, device: str = "cpu") -> float:
    """Mean NLL per token (nats) of short held-out sequences, each scored alone: the
    short-context skill that context extension should keep (DESIGN §5b)."""
    from harness.construction.scoring import score_tokens

    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch):
        chunk = [s for s in seqs[i:i + batch] if len(s) > 1]
        if not chunk:
            continue
        ids, mask = _padded(chunk)
        _, nll = score_tokens(model, ids.to(device), attention_mask=mask.to(device))
        keep = mask[:, 1:].bool()
        total += float(nll[:, 1:].cpu()[keep].double().sum())
        count += int(keep.sum())
    return total / count if count else float("nan")


# The sandbox's held-out probe entities (never in the corpus nor in pre-training) are cut into
# disjoint splits, here and nowhere else: ``test`` is the final evaluation (compare's ``probe``
# benchmark, ``policylong eval``'s probe, the fixed loss-gap probe set ``stage/loss_gap_probe``),
# ``short`` the short-context loss (``stage/short_loss``), ``validation`` what ``policylong tune``
# scores trials on. [start, end) indices into the sandbox's ``probe.jsonl``.
PROBE_SPLITS: dict[str, tuple[int, int]] = {"test": (0, 100), "short": (100, 200),
                                            "validation": (200, 300)}
# Tuning also draws its probe items (which fact of an entity is asked, the filler) with a seed of
# its own: ``spec.seed + VALIDATION_SEED_OFFSET``, never the final evaluation's ``spec.seed``.
VALIDATION_SEED_OFFSET = 10_000


def probe_split(probe: list[dict], name: str) -> list[dict]:
    """The entities of split ``name`` (``PROBE_SPLITS``); a clear error when the sandbox was
    built with too few probe entities for it."""
    if name not in PROBE_SPLITS:
        raise ValueError(f"unknown probe split {name!r} (known: {', '.join(PROBE_SPLITS)})")
    start, end = PROBE_SPLITS[name]
    if len(probe) < end:
        from harness.config import SpecError
        need = max(e for _, e in PROBE_SPLITS.values())
        raise SpecError(f"the sandbox has {len(probe)} probe entities, but the probe split "
                        f"'{name}' takes entities {start}..{end - 1}: set "
                        f"sandbox.n_probe_entities to at least {need} (the default is 300)")
    return probe[start:end]


def split_seed(seed: int, split: str) -> int:
    """The probe seed of a split: the spec's seed, except for ``validation`` (tuning), which
    is offset by ``VALIDATION_SEED_OFFSET`` so that it never equals the final evaluation's."""
    return seed + VALIDATION_SEED_OFFSET if split == "validation" else seed


def sandbox_short_set(tokenizer, probe: list[dict], split: str = "short") -> list:
    """Held-out short sequences: profiles and references of the ``short`` split's probe
    entities (``probe`` is all of the sandbox's; disjoint from the loss-gap and evaluation
    entities, never in the corpus nor in pre-training)."""
    from harness.sandbox.properties import build_cases

    cases = build_cases(tokenizer, probe_split(probe, split))
    return [s for c in cases for s in (c.profile_ids, c.doc_ids)]


def sandbox_triples(tokenizer, probe: list[dict], split: str = "test") -> list:
    """The fixed loss-gap probe set: (true profile, reference, value positions) of the
    ``split`` probe entities (``probe`` is all of the sandbox's)."""
    from harness.sandbox.properties import build_cases

    cases = build_cases(tokenizer, probe_split(probe, split))
    return [(c.profile_ids, c.doc_ids, [p for span in c.value_pos for p in span if p > 0])
            for c in cases]


def frontier_triples(dataset, max_groups: int = 256) -> list:
    """(contexts, root, root anchors) of the stage's held-out groups (never trained on): the
    frontier loss gap is measured out of sample (DESIGN §3 "Loss gap")."""
    out = []
    for g in dataset.heldout():
        toks = g["tokens"]
        if not g.get("contexts") or not g.get("anchors"):
            continue
        end = min(g["root_end"], len(toks))
        ctx = toks[:g["root_start"]]
        root = toks[g["root_start"]:end]
        anchors = [a for a in g["anchors"] if 0 < a < len(root)]
        if anchors and ctx:
            out.append((ctx, root, anchors))
        if len(out) >= max_groups:
            break
    return out


def curriculum_metrics(manifest: dict) -> dict[str, float]:
    """Flat ``stage/...`` values from a stage manifest's statistics."""
    st = manifest.get("stats", {})
    out: dict[str, float] = {}
    tokens = st.get("root_tokens", 0.0)
    if isinstance(tokens, (int, float)) and tokens:
        out["anchors_per_1k"] = 1000.0 * st.get("anchors", 0.0) / tokens
    if st.get("candidates"):
        out["accept_rate"] = st.get("accepted", 0.0) / st["candidates"]
        out["candidates"] = st["candidates"]
    for key in ("anchor_entropy", "tau_H", "dI_positive", "dI_negative", "sim_positive",
                "sim_negative", "root_nll", "k"):
        v = st.get(key)
        if isinstance(v, dict) and v.get("n"):
            for q in ("mean", "median", "p10", "p90"):
                if q in v:
                    out[f"{key}_{q}"] = v[q]
    out["roots"] = st.get("roots", 0.0)
    out["groups"] = manifest.get("groups", 0)
    out["build_seconds"] = manifest.get("build_seconds", 0.0)
    for key in ("loss_tokens", "pad_tokens", "rows", "heldout_groups", "groups_set_aside",
                "roots_repeated"):
        if key in manifest:
            out[key] = float(manifest[key])
    for key in ("contexts_truncated", "negatives", "accepted"):
        if key in st:
            out[key] = float(st[key])
    pos = st.get("dI_positive")
    if isinstance(pos, dict) and pos.get("n") and "negatives" in st:
        out["negatives_per_positive"] = st["negatives"] / pos["n"]
    gt = manifest.get("ground_truth") or {}
    for key, v in gt.items():
        if isinstance(v, (int, float)):
            out[key] = float(v)
    return out


# ------------------------------------------------- the sandbox's probe entities by split

def probe_entities(spec: Spec) -> list[dict]:
    """All of the sandbox's held-out probe entities (``probe.jsonl``), in order."""
    from harness.sandbox.build import build_sandbox

    path = build_sandbox(spec.sandbox) / "probe.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()]


def probe_set(spec: Spec, tokenizer, split: str = "test"):
    """(loss-gap triples, probe entities) of one split of the sandbox's probe entities
    (``PROBE_SPLITS``): ``test`` for the final evaluation and the per-stage
    ``loss_gap_probe``, ``validation`` for tuning. (None, None) for other corpora. The entities
    returned are the split's only, so whatever takes ``probe[:n]`` stays inside it."""
    if spec.corpus.path != "sandbox":
        return None, None
    probe = probe_entities(spec)
    return sandbox_triples(tokenizer, probe, split), probe_split(probe, split)


def short_set(spec: Spec, tokenizer, probe):
    """Held-out short sequences for the short-context loss: the ``short`` split of the probe
    entities (sandbox only, i.e. when ``probe`` is not None; None otherwise)."""
    if probe is None:
        return None
    return sandbox_short_set(tokenizer, probe_entities(spec), "short") or None
