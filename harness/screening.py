"""Entropy screening and verification: the shared primitives of EntropyLong and PolicyLong.

* ``screen_root``: entropy and NLL of the screening model over a root's screening window (the
  root's first ``window`` tokens; ours: the papers screen at 2K and do not say how longer roots
  are windowed), anchors where ``H > μ_H + α·σ_H`` (EntropyLong, α = 2.0; σ is the population
  standard deviation over the window, ours), at most ``max_anchors`` kept, highest entropy first
  (ours).
* ``verify``: for each candidate context C and each anchor t of root D, the relative information
  gain ``ΔI = (H(x_t | D_<t) − H(x_t | [C; D]_<t)) / H(x_t | D_<t)`` (EntropyLong) and its NLL
  analogue ``(NLL(x_t | D_<t) − NLL(x_t | [C; D]_<t)) / NLL(x_t | D_<t)`` (ours), computed in the
  same forward pass, LM head only at anchor positions, candidates batched.

Fitting ``[C; D]`` into the screening window: D is cut after its last anchor (later tokens cannot
affect the anchors), and C keeps its first ``window − len(D_cut)`` tokens (its head; ours).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from harness.scoring import anchor_threshold, score_positions, score_tokens


@dataclass
class Screened:
    """A root after screening: its window, anchors and their base entropy / NLL."""
    tokens: np.ndarray            # the screening window of the root
    entropy: np.ndarray           # per token (NaN at 0)
    nll: np.ndarray
    tau: float                    # μ_H + α·σ_H
    anchors: np.ndarray           # token positions (ascending)
    all_anchor_count: int         # before the max_anchors cap

    @property
    def anchor_entropy(self) -> np.ndarray:
        return self.entropy[self.anchors]

    @property
    def anchor_nll(self) -> np.ndarray:
        return self.nll[self.anchors]


@dataclass
class Verdict:
    """Per-candidate verification result; per-anchor gains plus their max and mean."""
    dI_entropy: np.ndarray        # [anchors]
    dI_nll: np.ndarray            # [anchors]
    context_tokens_used: int
    max_entropy: float = field(init=False)
    mean_entropy: float = field(init=False)
    max_nll: float = field(init=False)
    mean_nll: float = field(init=False)

    def __post_init__(self):
        self.max_entropy = float(self.dI_entropy.max()) if self.dI_entropy.size else 0.0
        self.mean_entropy = float(self.dI_entropy.mean()) if self.dI_entropy.size else 0.0
        self.max_nll = float(self.dI_nll.max()) if self.dI_nll.size else 0.0
        self.mean_nll = float(self.dI_nll.mean()) if self.dI_nll.size else 0.0

    def gain(self, signal: str) -> float:
        """The deciding value. ``entropy``: the max of ΔI_H over anchors (EntropyLong: a
        context is kept when it informs at least one anchor). ``nll`` (ours): the mean of
        ΔI_N over anchors, the context's net effect on the root's loss at its anchors: a
        look-alike that makes one anchor (a shared first name) likelier and the others (its
        own last name and values instead of the root's) unlikelier does not pass, where the
        max would let it (measured in ``docs/sandbox.md``)."""
        return self.max_entropy if signal == "entropy" else self.mean_nll


def _pad(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, :len(s)] = 1
    return ids, mask


def screen_roots(model, roots: list[np.ndarray], window: int, alpha: float, max_anchors: int,
                 pad_id: int, batch_size: int = 8, device: str = "cpu",
                 skip_start: int = 0) -> list[Screened]:
    """Screen a batch of roots (token arrays) with the screening model: τ = μ_H + α·σ_H over
    the window, anchors = tokens above τ (the highest ``max_anchors``), never among the first
    ``skip_start`` tokens."""
    out: list[Screened] = []
    for i in range(0, len(roots), batch_size):
        chunk = [np.asarray(r[:window]) for r in roots[i:i + batch_size]]
        ids, mask = _pad(chunk, pad_id)
        ent, nll = score_tokens(model, ids.to(device), attention_mask=mask.to(device))
        for j, toks in enumerate(chunk):
            e = ent[j, :len(toks)].float().cpu().numpy()
            n = nll[j, :len(toks)].float().cpu().numpy()
            if len(toks) < 3:
                out.append(Screened(toks, e, n, float("inf"), np.zeros(0, np.int64), 0))
                continue
            tau = anchor_threshold(torch.from_numpy(e), alpha)
            cand = np.nonzero(np.nan_to_num(e, nan=-np.inf) > tau)[0]
            cand = cand[cand >= skip_start]
            keep = cand[np.argsort(-e[cand], kind="stable")[:max_anchors]]
            out.append(Screened(toks, e, n, tau, np.sort(keep), int(cand.size)))
    return out


@torch.no_grad()
def verify(model, root: Screened, candidates: list[np.ndarray], window: int, pad_id: int,
           batch_size: int = 8, device: str = "cpu") -> list[Verdict]:
    """ΔI of every candidate context for every anchor of ``root`` (both signals)."""
    if root.anchors.size == 0 or not candidates:
        return [Verdict(np.zeros(0), np.zeros(0), 0) for _ in candidates]
    d_cut = root.tokens[:int(root.anchors.max()) + 1]
    room = max(0, window - len(d_cut))
    h_d = root.anchor_entropy.astype(np.float64)
    n_d = root.anchor_nll.astype(np.float64)
    verdicts: list[Verdict] = []
    for i in range(0, len(candidates), batch_size):
        ctxs = [np.asarray(c[:room]) for c in candidates[i:i + batch_size]]
        seqs = [np.concatenate([c, d_cut]) for c in ctxs]
        ids, mask = _pad(seqs, pad_id)
        pos = [torch.as_tensor(root.anchors + len(c)) for c in ctxs]
        scored = score_positions(model, ids.to(device), pos, attention_mask=mask.to(device))
        for c, (h_cd, n_cd) in zip(ctxs, scored):
            h_cd = h_cd.double().cpu().numpy()
            n_cd = n_cd.double().cpu().numpy()
            di_h = (h_d - h_cd) / np.maximum(h_d, 1e-8)
            di_n = (n_d - n_cd) / np.maximum(n_d, 1e-8)
            verdicts.append(Verdict(di_h, di_n, len(c)))
    return verdicts


@dataclass
class Candidate:
    chunk_id: int
    doc_index: int
    similarity: float         # best cosine over the anchors' queries
    verdict: Verdict


@dataclass
class RootScreening:
    root: int                 # document index
    screened: Screened
    candidates: list[Candidate]

    def stats(self, signal: str, epsilon: float) -> dict:
        gains = [c.verdict.gain(signal) for c in self.candidates]
        n = len(self.screened.tokens)
        return {"roots": 1, "root_tokens": n, "anchors": int(self.screened.all_anchor_count),
                "anchors_verified": int(self.screened.anchors.size),
                "candidates": len(self.candidates),
                "accepted": int(sum(g > epsilon for g in gains)),
                "anchor_entropy": [float(x) for x in self.screened.anchor_entropy],
                "tau_H": [float(self.screened.tau)] if np.isfinite(self.screened.tau) else [],
                "root_nll": [float(np.nanmean(self.screened.nll))] if n > 1 else []}


def screen_and_verify(ctx, roots: list[int]) -> list[RootScreening]:
    """The shared EntropyLong/PolicyLong pipeline for a batch of roots, with the stage's
    screening model: screen → anchors → ±w queries → top-K retrieval (other documents only)
    → verification of every distinct candidate against all anchors of its root."""
    from harness.retrieval import embed, query_text

    res, sc, model = ctx.resources, ctx.spec.screening, ctx.screening_model
    if model is None:
        raise ValueError("screening needs a screening model")
    pad = res.tokenizer.pad_token_id if res.tokenizer.pad_token_id is not None else 0
    cs = res.chunkset()
    tokens = [np.asarray(res.store.doc_tokens(r), dtype=np.int64) for r in roots]
    screened = screen_roots(model, tokens, sc.window, sc.alpha, sc.max_anchors, pad,
                            sc.batch_size, ctx.device, sc.skip_start)
    queries, owner = [], []
    for i, s in enumerate(screened):
        for t in s.anchors:
            queries.append(query_text(res.tokenizer, s.tokens, int(t), sc.query_window))
            owner.append(i)
    hits_per_query = []
    if queries:
        vecs = embed(res.encoder, queries, ctx.spec.retrieval.batch_size, progress=False)
        hits_per_query = cs.index.search(vecs, ctx.spec.retrieval.top_k,
                                         exclude_docs=[roots[i] for i in owner])
    best: list[dict[int, float]] = [dict() for _ in roots]
    for i, hits in zip(owner, hits_per_query):
        for chunk_id, score in hits:
            best[i][chunk_id] = max(score, best[i].get(chunk_id, -1.0))
    out = []
    for i, s in enumerate(screened):
        ids = sorted(best[i], key=lambda c: (-best[i][c], c))
        verdicts = verify(model, s, [cs.tokens[c] for c in ids], sc.window, pad,
                          sc.batch_size, ctx.device)
        cands = [Candidate(c, int(cs.index.chunk_doc[c]), best[i][c], v)
                 for c, v in zip(ids, verdicts)]
        out.append(RootScreening(roots[i], s, cands))
    return out
