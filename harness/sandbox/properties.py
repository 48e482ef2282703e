"""Measuring what makes the sandbox worth having, on held-out (probe) entities.

(a) anchors find the planted values: value tokens of a reference document pass
    ``H > μ_H + α·σ_H`` (α = 2.0, EntropyLong) computed over that document alone;
(b) the true profile helps: prepending it gives entropy-based ΔI > ε (0.4) at planted anchors;
(c) look-alikes are told apart by the loss, not by the entropy: with a look-alike profile the
    model copies the wrong value confidently, so entropy falls as with the true profile, while
    the NLL of the true value rises.

Concatenation is at token level, ``ids(C) + ids(D)``, as verification does it. A distance
control replaces C by filler of the same token length (DESIGN §3).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from harness.sandbox import world as W
from harness.construction.scoring import anchor_threshold, score_tokens


@dataclass
class Case:
    doc_ids: list[int]
    value_pos: list[list[int]]   # token positions of each planted value in doc_ids
    first_pos: list[int]         # first token of each value
    profile_ids: list[int]
    lookalike_ids: list[int]
    control_ids: list[int]       # filler, same token length as the profile


def _value_token_positions(tok, text: str, facts: list[list[str]], name: str):
    enc = tok(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    spans = []
    for attr, value in facts:
        m = re.search(re.escape(W.fact(attr, *name.split(" ", 1), value)[:-len(value) - 1])
                      + "(" + re.escape(value) + r")\.", text)
        if m is None:
            continue
        a, b = m.span(1)
        spans.append([i for i, (s, e) in enumerate(offsets) if s < b and e > a])
    return enc["input_ids"], spans


def build_cases(tok, probe: list[dict], n_before: int = 3) -> list[Case]:
    cases = []
    for p in probe:
        rng = random.Random(p["reference_seed"])
        e = W.Entity(p["first"], p["last"], tuple(tuple(f) for f in p["facts"]))
        text, mentioned = W.reference_text(rng, e, n_before=n_before,
                                           n_mentions=len(e.facts))
        ids, spans = _value_token_positions(tok, text, [list(f) for f in mentioned], e.name)
        prof = tok(p["profile"])["input_ids"]
        la = tok(p["lookalike_profile"])["input_ids"]
        ctl = tok(W.filler(rng, 60))["input_ids"][:len(prof)]
        cases.append(Case(ids, spans, [s[0] for s in spans if s], prof, la, ctl))
    return cases


def _score_batch(model, seqs: list[list[int]], pad_id: int, batch: int = 32):
    ents, nlls = [], []
    for i in range(0, len(seqs), batch):
        chunk = seqs[i:i + batch]
        T = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        e, n = score_tokens(model, ids, attention_mask=mask)
        for j, s in enumerate(chunk):
            ents.append(e[j, :len(s)].numpy())
            nlls.append(n[j, :len(s)].numpy())
    return ents, nlls


def measure(model, cases: list[Case], pad_id: int, alpha: float = 2.0, eps: float = 0.4) -> dict:
    """The sandbox properties as numbers (fractions over planted value tokens / anchors)."""
    model.eval()
    D = [c.doc_ids for c in cases]
    e_d, n_d = _score_batch(model, D, pad_id)
    e_t, n_t = _score_batch(model, [c.profile_ids + c.doc_ids for c in cases], pad_id)
    e_l, n_l = _score_batch(model, [c.lookalike_ids + c.doc_ids for c in cases], pad_id)
    e_c, n_c = _score_batch(model, [c.control_ids + c.doc_ids for c in cases], pad_id)
    rec = {k: [] for k in ("is_anchor", "first_is_anchor", "dI_H_true", "dI_H_la", "dI_H_ctl",
                           "dI_N_true", "dI_N_la", "nll_d", "nll_true", "nll_la", "H_d",
                           "tau")}
    for i, c in enumerate(cases):
        tau = anchor_threshold(torch.from_numpy(e_d[i]), alpha)
        lt, ll, lc = len(c.profile_ids), len(c.lookalike_ids), len(c.control_ids)
        for span in c.value_pos:
            for k, t in enumerate(span):
                if t == 0:
                    continue
                anchor = bool(e_d[i][t] > tau)
                rec["is_anchor"].append(anchor)
                if k == 0:
                    rec["first_is_anchor"].append(anchor)
                if not anchor:
                    continue
                hd, nd = e_d[i][t], n_d[i][t]
                rec["dI_H_true"].append((hd - e_t[i][t + lt]) / hd)
                rec["dI_H_la"].append((hd - e_l[i][t + ll]) / hd)
                rec["dI_H_ctl"].append((hd - e_c[i][t + lc]) / hd)
                rec["dI_N_true"].append((nd - n_t[i][t + lt]) / nd)
                rec["dI_N_la"].append((nd - n_l[i][t + ll]) / nd)
                rec["nll_d"].append(nd)
                rec["nll_true"].append(n_t[i][t + lt])
                rec["nll_la"].append(n_l[i][t + ll])
                rec["H_d"].append(hd)
                rec["tau"].append(tau)
    a = {k: np.asarray(v, dtype=np.float64) for k, v in rec.items()}
    n_anchor = int(a["is_anchor"].sum())
    out = {
        "value_tokens": int(a["is_anchor"].size),
        "planted_anchors": n_anchor,
        "a_value_tokens_anchor_frac": float(a["is_anchor"].mean()),
        "a_first_value_token_anchor_frac": float(a["first_is_anchor"].mean()),
        "b_true_dI_H_gt_eps_frac": float((a["dI_H_true"] > eps).mean()) if n_anchor else 0.0,
        "c_lookalike_dI_H_gt_eps_frac": float((a["dI_H_la"] > eps).mean()) if n_anchor else 0.0,
        "control_dI_H_gt_eps_frac": float((a["dI_H_ctl"] > eps).mean()) if n_anchor else 0.0,
        "c_nll_falls_true_frac": float((a["nll_true"] < a["nll_d"]).mean()) if n_anchor else 0.0,
        "c_nll_rises_lookalike_frac": float((a["nll_la"] > a["nll_d"]).mean()) if n_anchor else 0.0,
        "c_nll_separates_frac": float(((a["nll_true"] < a["nll_d"]) & (a["nll_la"] > a["nll_d"])).mean()) if n_anchor else 0.0,
        "true_dI_N_gt_eps_frac": float((a["dI_N_true"] > eps).mean()) if n_anchor else 0.0,
        "lookalike_dI_N_gt_eps_frac": float((a["dI_N_la"] > eps).mean()) if n_anchor else 0.0,
    }
    for k in ("dI_H_true", "dI_H_la", "dI_H_ctl", "dI_N_true", "dI_N_la", "H_d", "tau"):
        if a[k].size:
            out[f"{k}_median"] = float(np.median(a[k]))
            out[f"{k}_mean"] = float(a[k].mean())
    return out


@torch.no_grad()
def copy_pools(tok, words: list[str]) -> dict[str, list[int]]:
    """The token ids that copying is checked (and, in pre-training, taught) on: ``words`` that
    are a single token after a space, and the ten digits."""
    one = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    return {"words": sorted({i[0] for i in one if len(i) == 1}),
            "digits": sorted({tok(str(d), add_special_tokens=False)["input_ids"][0]
                              for d in range(10)})}


def copying(model, tok, words: list[str], n: int = 20, length: int = 30, seed: int = 0) -> dict:
    """General copying, the induction check: ``n`` random sequences of ``length`` tokens, each
    followed at once by itself, scored by ``model`` (``score_tokens``). For single-token
    ``words`` (the lexicon's) and for the ten digits, the mean NLL in nats of the first copy
    (tokens 2..L, nothing to copy from) and of the second (tokens 2..L of the repeat, each one
    after its predecessor was seen before). A model that copies reads the second copy nearly
    free; the sandbox's fact copying (a name and an attribute, then the value) is a narrower
    skill than this, and RULER's needles (seven digits never seen before) need this one. The
    check is ours (docs/sandbox.md)."""
    rng = random.Random(f"copying-{seed}")
    pools = copy_pools(tok, words)
    out = {}
    for kind, pool in pools.items():
        if len(pool) < 2:
            raise ValueError(f"copying: fewer than 2 single-token {kind} to draw from")
        seqs = [[rng.choice(pool) for _ in range(length)] for _ in range(n)]
        _, nll = score_tokens(model, torch.tensor([q + q for q in seqs]))
        out[kind] = {"first": round(nll[:, 1:length].mean().item(), 3),
                     "second": round(nll[:, length + 1:].mean().item(), 3)}
    return out
