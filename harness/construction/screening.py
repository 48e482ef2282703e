"""Entropy screening and verification: the shared primitives of EntropyLong and PolicyLong.

* ``screen_root``: entropy and NLL of the screening model over a root's screening window (the
  root's first ``window`` tokens; ours: the papers screen at 2K and do not say how longer roots
  are windowed), anchors where ``H > μ_H + α·σ_H`` (EntropyLong, α = 2.0; σ is the population
  standard deviation over the window, ours), at most ``max_anchors`` kept, highest entropy first
  (ours).
* ``verify``: for each candidate context C and each anchor t of root D, the relative information
  gain ``ΔI = (H(x_t | D_<t) − H(x_t | [C; D]_<t)) / H(x_t | D_<t)`` (EntropyLong) and its NLL
  analogue ``(NLL(x_t | D_<t) − NLL(x_t | [C; D]_<t)) / NLL(x_t | D_<t)`` (ours), computed in the
  same forward pass, LM head only at anchor positions, candidates batched. Both signals are
  recorded at every anchor, whichever one decides.

Which anchors decide (``screening.verify_against``). EntropyLong measures ΔI at the anchor whose
query retrieved C. ``retrieving_anchor`` (the default) does that: ``screen_and_verify`` records,
for every candidate, which of the root's anchors retrieved it (a boolean mask over the anchors;
several when several queries retrieved it), and the deciding gain is taken over those anchors
only: entropy, the max of ΔI_H over them (C informs at least one anchor that asked for it); nll
(ours), the mean of ΔI_N over them. ``all_anchors`` (ours, the older behaviour, kept as a
labelled option) takes the same max / mean over every anchor of the root: with 8 anchors, a
context gets 8 chances to lower some entropy by chance, a multiple-comparison inflation under
which even filler passes. A ``Verdict`` without a retrieval record (``verify`` called without
``retrieving``) treats every anchor as retrieving, so both modes coincide.

Fitting ``[C; D]`` into the screening window: D is cut after its last anchor (later tokens cannot
affect the anchors), and C keeps its first ``window − len(D_cut)`` tokens (its head; ours). A C
that had to be cut is flagged (``Verdict.truncated``) and counted per root
(``contexts_truncated`` in ``RootScreening.stats``), not silently cut: DESIGN §3 prepends C whole.

Length control (``screening.control = "length"``, ours; DESIGN §3 "Distance controls"). Length by
itself lowers entropy: any prepended text makes the model more confident at the root's tokens
(more context, later positions, fewer "start of a document" guesses), so part of any ΔI is a
length effect that has nothing to do with what C says. With the control on, every candidate C's
anchors are also scored after an unrelated context of the same token length (``len`` of the C
actually used): chunks of documents that are neither the root nor retrieved for it, drawn by a
generator seeded from (seed, root document index, candidate chunk id), so the control is the same
whatever the batching, the process count or the other candidates, concatenated and cut to
``len(C)``. The deciding gain is then the excess ``ΔI_C(t) − ΔI_control(t)`` at the same anchors,
aggregated like the plain gain (entropy: the max over the deciding anchors of the per-anchor
excess; nll: the mean, which equals mean ΔI_C − mean ΔI_control). The control's own gains are
kept (per anchor, and ``Verdict.control_gain``). With ``control = "none"`` (the papers') the
deciding gain is ΔI_C itself.

Candidate prefixes computed once (``screening.prefix_cache_mb``, ours). In a row ``[C; D_cut]``
the candidate comes first, so its keys and values do not depend on the root: a chunk retrieved
by many roots (about 14 per chunk in a smoke stage) would otherwise be run through the model
once per root. ``PrefixCache`` keeps each chunk's key/value cache, computed once per screening
model, and a root's rows are then only ``D_cut`` continuing that cache (positions continue the
prefix's, as in the full row). A truncated candidate uses the first ``len(C_used)`` positions of
its chunk's cache: the model is causal, so they are the cache of the truncated prefix. A root's
rows are batched ``batch_size`` at a time (``D_cut`` is the same in every row; shorter prefixes
are left-padded in the cache and masked out, each row's positions continuing its own prefix). The values equal the full forward's to float rounding
(``tests/test_verify.py``); the cache is least-recently-used within its byte budget; 0 turns it
off (every row a full forward, as before). Length-control rows are unique and always run whole.
"""
from __future__ import annotations

import time
import weakref
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.construction.scoring import anchor_threshold, score_positions, score_tokens


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


VERIFY_AGAINST = ("retrieving_anchor", "all_anchors")


@dataclass
class Verdict:
    """Per-candidate verification result.

    Per-anchor gains over every anchor of the root (both signals; the control's too when a
    length control ran), the mask of the anchors whose queries retrieved the candidate, and the
    rule that turns them into the deciding gain (``gain``). ``max_*`` / ``mean_*`` are over
    every anchor of the root whatever ``verify_against`` says (recorded as such)."""
    dI_entropy: np.ndarray        # [anchors]
    dI_nll: np.ndarray            # [anchors]
    context_tokens_used: int
    retrieving: np.ndarray | None = None     # bool [anchors]; None: no record, all count
    verify_against: str = "retrieving_anchor"
    truncated: bool = False                  # C was longer than the room left in the window
    context_tokens: int | None = None        # len(C) before any cut
    anchors: np.ndarray | None = None        # the root's anchor positions (ascending)
    control_dI_entropy: np.ndarray | None = None   # [anchors], the length control's gains
    control_dI_nll: np.ndarray | None = None
    max_entropy: float = field(init=False)
    mean_entropy: float = field(init=False)
    max_nll: float = field(init=False)
    mean_nll: float = field(init=False)

    def __post_init__(self):
        if self.verify_against not in VERIFY_AGAINST:
            raise ValueError(f"verify_against must be one of {VERIFY_AGAINST}, "
                             f"got {self.verify_against!r}")
        if self.retrieving is not None:
            self.retrieving = np.asarray(self.retrieving, dtype=bool)
            if self.retrieving.shape != self.dI_entropy.shape:
                raise ValueError(f"retrieving mask of shape {self.retrieving.shape} for "
                                 f"{self.dI_entropy.size} anchors")
        if self.context_tokens is None:
            self.context_tokens = self.context_tokens_used
        self.max_entropy = float(self.dI_entropy.max()) if self.dI_entropy.size else 0.0
        self.mean_entropy = float(self.dI_entropy.mean()) if self.dI_entropy.size else 0.0
        self.max_nll = float(self.dI_nll.max()) if self.dI_nll.size else 0.0
        self.mean_nll = float(self.dI_nll.mean()) if self.dI_nll.size else 0.0

    @property
    def has_control(self) -> bool:
        return self.control_dI_entropy is not None

    @property
    def deciding(self) -> np.ndarray:
        """Bool mask of the anchors the decision is taken over: the retrieving anchors under
        ``retrieving_anchor`` (EntropyLong), every anchor under ``all_anchors`` (ours)."""
        if self.verify_against == "all_anchors" or self.retrieving is None:
            return np.ones(self.dI_entropy.shape, dtype=bool)
        return self.retrieving

    @property
    def retrieving_anchors(self) -> list[int]:
        """Positions (in the root) of the anchors whose queries retrieved the candidate (every
        anchor when there is no retrieval record); indices when positions are unknown."""
        mask = (self.retrieving if self.retrieving is not None
                else np.ones(self.dI_entropy.shape, dtype=bool))
        idx = np.nonzero(mask)[0]
        return [int(x) for x in (self.anchors[idx] if self.anchors is not None else idx)]

    @staticmethod
    def _aggregate(values: np.ndarray, signal: str) -> float:
        if not values.size:
            return 0.0
        return float(values.max() if signal == "entropy" else values.mean())

    def _per_anchor(self, signal: str) -> np.ndarray:
        if signal not in ("entropy", "nll"):
            raise ValueError(f"signal must be 'entropy' or 'nll', got {signal!r}")
        return self.dI_entropy if signal == "entropy" else self.dI_nll

    def raw_gain(self, signal: str) -> float:
        """ΔI_C over the deciding anchors, the control not subtracted."""
        return self._aggregate(self._per_anchor(signal)[self.deciding], signal)

    def control_gain(self, signal: str) -> float | None:
        """The length control's ΔI over the same anchors, same rule (None without control)."""
        if not self.has_control:
            return None
        ctl = self.control_dI_entropy if signal == "entropy" else self.control_dI_nll
        return self._aggregate(ctl[self.deciding], signal)

    def gain(self, signal: str) -> float:
        """The deciding value. ``entropy``: the max of ΔI_H over the deciding anchors
        (EntropyLong: a context is kept when it informs an anchor that retrieved it). ``nll``
        (ours): the mean of ΔI_N over the deciding anchors, the context's net effect on the
        root's loss there: a look-alike that makes one anchor (a shared first name) likelier
        and the others (its own last name and values instead of the root's) unlikelier does
        not pass, where the max would let it (measured in ``docs/sandbox.md``). With a length
        control, the per-anchor excess ``ΔI_C(t) − ΔI_control(t)`` replaces ΔI_C(t)."""
        per = self._per_anchor(signal)
        if self.has_control:
            per = per - (self.control_dI_entropy if signal == "entropy" else self.control_dI_nll)
        return self._aggregate(per[self.deciding], signal)


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


def context_room(root: Screened, window: int) -> int:
    """Tokens left for a context in the screening window once D is cut after its last anchor."""
    if root.anchors.size == 0:
        return window
    return max(0, window - (int(root.anchors.max()) + 1))


def _mask(r, n: int) -> np.ndarray:
    r = np.asarray(r)
    if r.dtype == bool:
        if r.shape != (n,):
            raise ValueError(f"retrieving mask of shape {r.shape} for {n} anchors")
        m = r.copy()
    else:
        m = np.zeros(n, dtype=bool)
        m[r.astype(np.int64)] = True
    if n and not m.any():
        raise ValueError("a candidate with no retrieving anchor")
    return m


class PrefixCache:
    """Key/value caches of candidate chunks for one screening model (frozen weights), keyed by
    chunk id, least recently used evicted past ``budget_bytes``. ``hits``/``misses`` count
    lookups; ``computed_tokens`` the chunk tokens run through the model."""

    def __init__(self, model, budget_bytes: int, device: str = "cpu", batch_size: int = 8):
        self.model, self.budget, self.device, self.batch_size = model, int(budget_bytes), device, batch_size
        self._kv: OrderedDict[int, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._tokens: dict[int, np.ndarray] = {}     # what each cached chunk id held
        self._bytes = 0
        self.hits = self.misses = self.computed_tokens = 0

    @staticmethod
    def _size(kv) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)

    @torch.no_grad()
    def get(self, chunk_ids: list[int], tokens: list[np.ndarray]
            ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per chunk, per layer ``(keys, values)`` of shape ``[1, heads, len(chunk), dim]``."""
        out: dict[int, list] = {}
        missing: dict[int, list[int]] = defaultdict(list)      # length -> chunk ids
        for c, t in zip(chunk_ids, tokens):
            c = int(c)
            if c in out:
                continue
            if c in self._kv and not np.array_equal(self._tokens[c], t):
                raise ValueError(f"prefix cache: chunk {c} holds other tokens than when it was "
                                 f"cached (one cache per screening model and chunk set)")
            if c in self._kv:
                self._kv.move_to_end(c)
                out[c] = self._kv[c]
                self.hits += 1
            elif len(t) and c not in missing[len(t)]:
                missing[len(t)].append(c)
                self.misses += 1
        toks = {int(c): t for c, t in zip(chunk_ids, tokens)}
        decoder = self.model.get_decoder()
        for length, ids in sorted(missing.items()):
            for i in range(0, len(ids), self.batch_size):
                part = ids[i:i + self.batch_size]
                x = torch.as_tensor(np.stack([np.asarray(toks[c], dtype=np.int64) for c in part]),
                                    device=self.device)
                cache = decoder(input_ids=x, use_cache=True).past_key_values
                layers = [(layer.keys, layer.values) for layer in cache.layers]
                self.computed_tokens += x.numel()
                for b, c in enumerate(part):
                    kv = [(k[b:b + 1].clone(), v[b:b + 1].clone()) for k, v in layers]
                    out[c] = kv
                    self._kv[c] = kv
                    self._tokens[c] = np.asarray(toks[c]).copy()
                    self._bytes += self._size(kv)
        while self._bytes > self.budget and self._kv:
            c, kv = self._kv.popitem(last=False)
            del self._tokens[c]
            self._bytes -= self._size(kv)
        return [out[int(c)] if len(t) else [] for c, t in zip(chunk_ids, tokens)]


_PREFIX_CACHES: "weakref.WeakKeyDictionary[object, PrefixCache]" = weakref.WeakKeyDictionary()


def prefix_cache_for(model, budget_mb: int, device: str = "cpu", batch_size: int = 8
                     ) -> PrefixCache | None:
    """The prefix cache of ``model`` (one per screening model object, kept while it lives),
    or None when ``budget_mb`` is 0."""
    if budget_mb <= 0:
        return None
    cache = _PREFIX_CACHES.get(model)
    if cache is None:
        cache = _PREFIX_CACHES[model] = PrefixCache(model, budget_mb << 20, device, batch_size)
    cache.budget = budget_mb << 20
    return cache


def _cached_rows(model, d_cut: np.ndarray, anchors: np.ndarray, lengths: list[int],
                 kvs: list[list[tuple[torch.Tensor, torch.Tensor]]], batch_size: int,
                 device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Entropy and NLL at ``anchors`` of ``D_cut`` after each cached prefix cut to
    ``lengths[i]``, ``batch_size`` rows at a time: shorter prefixes are left-padded in the
    cache and masked out, and each row's positions continue its own prefix."""
    from transformers import DynamicCache

    out: list = []
    d = torch.as_tensor(np.asarray(d_cut, dtype=np.int64), device=device)
    pos_d = torch.as_tensor(anchors)
    first = next((kv for kv in kvs if kv), [])
    n_layers = len(first)
    for s in range(0, len(lengths), batch_size):
        part = list(range(s, min(s + batch_size, len(lengths))))
        top = max(lengths[i] for i in part)
        ids = d.unsqueeze(0).expand(len(part), -1)
        past, mask = None, None
        if top > 0:
            layers = []
            for layer in range(n_layers):
                ref = first[layer][0]             # shape, dtype and device of this layer's keys
                ks, vs = [], []
                for i in part:
                    n = lengths[i]
                    pad = ref.new_zeros((1, ref.shape[1], top - n, ref.shape[3]))
                    ks.append(torch.cat([pad, kvs[i][layer][0][:, :, :n]], 2) if n else pad)
                    vs.append(torch.cat([pad, kvs[i][layer][1][:, :, :n]], 2) if n else pad)
                layers.append((torch.cat(ks), torch.cat(vs)))
            past = DynamicCache(ddp_cache_data=layers, config=model.config)
            mask = torch.ones((len(part), top + len(d_cut)), dtype=torch.long, device=device)
            for r, i in enumerate(part):
                mask[r, :top - lengths[i]] = 0
        position_ids = torch.stack([torch.arange(lengths[i], lengths[i] + len(d_cut),
                                                 device=device) for i in part])
        out.extend(score_positions(model, ids, [pos_d] * len(part), attention_mask=mask,
                                   position_ids=position_ids, past_key_values=past))
    return out


@torch.no_grad()
def verify(model, root: Screened, candidates: list[np.ndarray], window: int, pad_id: int,
           batch_size: int = 8, device: str = "cpu",
           retrieving: list[np.ndarray] | None = None,
           verify_against: str = "retrieving_anchor",
           controls: list[np.ndarray] | None = None,
           prefix_cache: PrefixCache | None = None,
           chunk_ids: list[int] | None = None) -> list[Verdict]:
    """ΔI of every candidate context at every anchor of ``root`` (both signals), one forward
    pass per ``[C; D_cut]`` row, LM head only at the anchors, rows batched ``batch_size`` at a
    time (right-padded).

    ``retrieving[i]``: the anchors whose queries retrieved candidate i (a bool mask over
    ``root.anchors`` or anchor indices); None: every anchor. ``controls[i]``: tokens of an
    unrelated context for candidate i, at least as long as the part of C that is used; it is
    cut to that length and scored as an extra row (the length control).

    ``prefix_cache`` with ``chunk_ids`` (the candidates' chunk ids): candidate rows continue the
    chunks' cached keys and values instead of running ``C`` again (module docstring)."""
    if verify_against not in VERIFY_AGAINST:
        raise ValueError(f"verify_against must be one of {VERIFY_AGAINST}, got {verify_against!r}")
    for name, extra in (("retrieving", retrieving), ("controls", controls)):
        if extra is not None and len(extra) != len(candidates):
            raise ValueError(f"{name}: {len(extra)} entries for {len(candidates)} candidates")
    n_anchors = int(root.anchors.size)
    if n_anchors == 0 or not candidates:
        return [Verdict(np.zeros(0), np.zeros(0), 0, verify_against=verify_against,
                        context_tokens=len(c), anchors=root.anchors) for c in candidates]
    masks = [None if retrieving is None else _mask(r, n_anchors) for r in (retrieving or
                                                                          [None] * len(candidates))]
    d_cut = root.tokens[:int(root.anchors.max()) + 1]
    room = context_room(root, window)
    h_d = root.anchor_entropy.astype(np.float64)
    n_d = root.anchor_nll.astype(np.float64)
    used = [np.asarray(c[:room]) for c in candidates]
    rows = list(used)                       # rows [0, n): candidates; [n, 2n): their controls
    if controls is not None:
        for c, ctl in zip(used, controls):
            if len(ctl) < len(c):
                raise ValueError(f"length control of {len(ctl)} tokens for a context of "
                                 f"{len(c)} tokens")
            rows.append(np.asarray(ctl[:len(c)]))
    if prefix_cache is not None and chunk_ids is not None and len(chunk_ids) != len(candidates):
        raise ValueError(f"chunk_ids: {len(chunk_ids)} entries for {len(candidates)} candidates")
    gains: list[tuple[np.ndarray, np.ndarray]] = []

    def gain(h_cd, n_cd):
        h_cd = h_cd.double().cpu().numpy()
        n_cd = n_cd.double().cpu().numpy()
        return ((h_d - h_cd) / np.maximum(h_d, 1e-8), (n_d - n_cd) / np.maximum(n_d, 1e-8))

    full_rows = rows
    if prefix_cache is not None and chunk_ids is not None and int(root.anchors.min()) >= 1:
        kvs = prefix_cache.get(list(chunk_ids), list(candidates))
        scored = _cached_rows(model, d_cut, root.anchors, [len(u) for u in used], kvs,
                              batch_size, device)
        gains.extend(gain(h, n) for h, n in scored)
        full_rows = rows[len(used):]            # the length-control rows, if any
    for i in range(0, len(full_rows), batch_size):
        ctxs = full_rows[i:i + batch_size]
        seqs = [np.concatenate([c, d_cut]) for c in ctxs]
        ids, mask = _pad(seqs, pad_id)
        pos = [torch.as_tensor(root.anchors + len(c)) for c in ctxs]
        scored = score_positions(model, ids.to(device), pos, attention_mask=mask.to(device))
        gains.extend(gain(h_cd, n_cd) for h_cd, n_cd in scored)
    n = len(candidates)
    verdicts: list[Verdict] = []
    for j, (c, u) in enumerate(zip(candidates, used)):
        ctl = gains[n + j] if controls is not None else (None, None)
        verdicts.append(Verdict(gains[j][0], gains[j][1], len(u), retrieving=masks[j],
                                verify_against=verify_against, truncated=len(c) > len(u),
                                context_tokens=len(c), anchors=root.anchors,
                                control_dI_entropy=ctl[0], control_dI_nll=ctl[1]))
    return verdicts


def length_control(length: int, chunk_tokens, chunk_doc, exclude_docs: set[int],
                   rng: np.random.Generator, max_draws: int = 10_000) -> np.ndarray:
    """An unrelated context of exactly ``length`` tokens: chunks drawn uniformly (with
    replacement) from documents not in ``exclude_docs``, concatenated and cut to ``length``."""
    parts, have, n = [], 0, len(chunk_tokens)
    for _ in range(max_draws):
        if have >= length:
            break
        c = int(rng.integers(n)) if n else 0
        if not n or int(chunk_doc[c]) in exclude_docs or len(chunk_tokens[c]) == 0:
            continue
        parts.append(np.asarray(chunk_tokens[c], dtype=np.int64))
        have += len(parts[-1])
    if have < length:
        raise ValueError(f"cannot build a length control of {length} tokens: too few chunks "
                         f"outside the root and its retrieved documents")
    return (np.concatenate(parts) if parts else np.zeros(0, np.int64))[:length]


def control_rng(seed: int, root_doc: int, chunk_id: int) -> np.random.Generator:
    """The length control's generator for one (root, candidate): seeded from (seed, root
    document index, candidate chunk id) only, so independent of batching and process count."""
    from harness.config import stable_hash
    return np.random.default_rng(int(stable_hash(["length_control", int(seed), int(root_doc),
                                                  int(chunk_id)], 16), 16))


@dataclass
class Candidate:
    chunk_id: int
    doc_index: int
    similarity: float         # best cosine over the queries that retrieved it
    verdict: Verdict


@dataclass
class RootScreening:
    root: int                 # document index
    screened: Screened
    candidates: list[Candidate]           # the verified candidates, in retrieval order
    skipped: int | None = None            # with early stop: retrieved but not verified
    seconds: dict = field(default_factory=dict)   # wall time of its screening phases

    def stats(self, signal: str, epsilon: float) -> dict:
        gains = [c.verdict.gain(signal) for c in self.candidates]
        n = len(self.screened.tokens)
        return {"roots": 1, "root_tokens": n, "anchors": int(self.screened.all_anchor_count),
                "anchors_verified": int(self.screened.anchors.size),
                "candidates": len(self.candidates),
                "accepted": int(sum(g > epsilon for g in gains)),
                "contexts_truncated": int(sum(c.verdict.truncated for c in self.candidates)),
                "anchor_entropy": [float(x) for x in self.screened.anchor_entropy],
                "tau_H": [float(self.screened.tau)] if np.isfinite(self.screened.tau) else [],
                "root_nll": [float(np.nanmean(self.screened.nll))] if n > 1 else [],
                "candidate_tokens": int(sum(c.verdict.context_tokens_used
                                            for c in self.candidates)),
                "d_cut_tokens": (int(self.screened.anchors.max()) + 1) * len(self.candidates)
                if self.screened.anchors.size else 0,
                **({"candidates_skipped": self.skipped} if self.skipped is not None else {}),
                **self.seconds}


def screen_and_verify(ctx, roots: list[int]) -> list[RootScreening]:
    """The shared EntropyLong/PolicyLong pipeline for a batch of roots, with the stage's
    screening model: screen → anchors → ±w queries → top-K retrieval (other documents only)
    → verification of every distinct candidate (ΔI at every anchor of its root, recorded
    with the mask of the anchors whose queries retrieved it; ``screening.verify_against``
    says which anchors decide; ``screening.control`` adds the length control).

    ``screening.early_stop`` (ours, off by default): candidates are verified a batch at a time
    in retrieval order (most similar first), and a root's remaining candidates are not verified
    once its positives (ΔI > ε under the signal) hold enough tokens to fill the group's room
    (``target_length − len(root)``). The group then chooses among the verified candidates only,
    so the data can differ from a full verification's; ``candidates_skipped`` counts what was
    not verified. Off, every candidate is verified in one call, as before."""
    from harness.data.retrieval import embed, query_text

    res, sc, model = ctx.resources, ctx.spec.screening, ctx.screening_model
    if model is None:
        raise ValueError("screening needs a screening model")
    pad = res.tokenizer.pad_token_id if res.tokenizer.pad_token_id is not None else 0
    cs = res.chunkset()
    cache = prefix_cache_for(model, sc.prefix_cache_mb, ctx.device, sc.batch_size)
    tokens = [np.asarray(res.store.doc_tokens(r), dtype=np.int64) for r in roots]
    clock = time.perf_counter()
    screened = screen_roots(model, tokens, sc.window, sc.alpha, sc.max_anchors, pad,
                            sc.batch_size, ctx.device, sc.skip_start)
    t_screen = time.perf_counter() - clock
    clock = time.perf_counter()
    queries, owner = [], []
    for i, s in enumerate(screened):
        for j, t in enumerate(s.anchors):
            queries.append(query_text(res.tokenizer, s.tokens, int(t), sc.query_window))
            owner.append((i, j))
    hits_per_query = []
    if queries:
        vecs = embed(res.encoder, queries, ctx.spec.retrieval.batch_size, progress=False)
        hits_per_query = cs.index.search(vecs, ctx.spec.retrieval.top_k,
                                         exclude_docs=[roots[i] for i, _ in owner])
    t_retrieve = time.perf_counter() - clock
    best: list[dict[int, float]] = [dict() for _ in roots]
    by: list[dict[int, np.ndarray]] = [dict() for _ in roots]   # chunk -> retrieving mask
    for (i, j), hits in zip(owner, hits_per_query):
        for chunk_id, score in hits:
            best[i][chunk_id] = max(score, best[i].get(chunk_id, -1.0))
            by[i].setdefault(chunk_id, np.zeros(screened[i].anchors.size, dtype=bool))[j] = True
    out = []
    for i, s in enumerate(screened):
        clock = time.perf_counter()
        ids = sorted(best[i], key=lambda c: (-best[i][c], c))
        cand_tokens = [cs.tokens[c] for c in ids]
        controls = None
        if sc.control == "length" and ids:
            room = context_room(s, sc.window)
            exclude = {int(roots[i])} | {int(cs.index.chunk_doc[c]) for c in ids}
            controls = [length_control(min(len(t), room), cs.tokens, cs.index.chunk_doc,
                                       exclude, control_rng(ctx.seed, roots[i], c))
                        for c, t in zip(ids, cand_tokens)]
        # without early stop, one call (every candidate); with it, a batch at a time in
        # retrieval order until the positives' tokens fill the group's room
        step = sc.batch_size if sc.early_stop else max(1, len(ids))
        need = (ctx.target_length - min(len(tokens[i]), ctx.target_length)
                if sc.early_stop else 0)
        verdicts, have = [], 0
        for a in range(0, len(ids), step):
            part = slice(a, a + step)
            vs = verify(model, s, cand_tokens[part], sc.window, pad, sc.batch_size, ctx.device,
                        retrieving=[by[i][c] for c in ids[part]],
                        verify_against=sc.verify_against,
                        controls=controls[part] if controls is not None else None,
                        prefix_cache=cache, chunk_ids=ids[part])
            verdicts.extend(vs)
            have += sum(len(t) for t, v in zip(cand_tokens[part], vs)
                        if v.gain(sc.signal) > sc.epsilon)
            if sc.early_stop and have >= need:
                break
        cands = [Candidate(c, int(cs.index.chunk_doc[c]), best[i][c], v)
                 for c, v in zip(ids, verdicts)]
        # the batch's screening and retrieval time shared evenly by its roots (cost model)
        seconds = {"seconds_screen": t_screen / len(roots),
                   "seconds_retrieve": t_retrieve / len(roots),
                   "seconds_verify": time.perf_counter() - clock}
        out.append(RootScreening(roots[i], s, cands,
                                 skipped=len(ids) - len(verdicts) if sc.early_stop else None,
                                 seconds=seconds))
    return out
