"""An independent check of ``harness.construction.screening.verify`` and of the verification decision.

The reference computes ΔI for each (anchor, candidate) pair the plain way: one forward pass per
pair, no padding, full logits, entropy and NLL from ``torch.log_softmax``; ``verify`` batches
padded ``[C; D_cut]`` rows and runs the LM head at the anchors only. A tiny random 2-layer Qwen2
built here with a fixed seed is enough: the arithmetic, not the model, is under test.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.config import ScreeningSpec
from harness.construction.screening import (Verdict, context_room, control_rng, length_control,
                               screen_and_verify, screen_roots, verify)

VOCAB, WINDOW, PAD = 300, 128, 0


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    from harness.training.model_io import tiny_qwen2_config
    cfg = tiny_qwen2_config(VOCAB, 64, 2, 4, 2, 128, 512, 10000.0, PAD)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def _tokens(n, seed):
    return np.random.default_rng(seed).integers(1, VOCAB, n).astype(np.int64)


@pytest.fixture(scope="module")
def root(model):
    (s,) = screen_roots(model, [_tokens(70, 1)], WINDOW, 0.5, 5, PAD, skip_start=4)
    assert s.anchors.size >= 3
    return s


# candidates of different lengths (padding in every batch), the last one too long for the room
def _candidates(root):
    room = context_room(root, WINDOW)
    return [_tokens(5, 11), _tokens(17, 12), _tokens(33, 13), _tokens(room + 40, 14)]


def _masks(n):
    return [np.array([0]), np.array([1, n - 1]), np.arange(n), np.array([n - 1])]


@torch.no_grad()
def _plain(model, seq: np.ndarray, t: int) -> tuple[float, float]:
    """Entropy and NLL of token ``t`` of ``seq``: one unpadded forward, full logits."""
    logits = model(input_ids=torch.as_tensor(seq[None, :t + 1])).logits[0, t - 1]
    logp = torch.log_softmax(logits.double(), -1)
    return float(-(logp.exp() * logp).sum()), float(-logp[int(seq[t])])


def _reference(model, root, cand):
    """ΔI_H and ΔI_N at every anchor, one forward per (anchor, candidate) pair."""
    room = WINDOW - (int(root.anchors.max()) + 1)
    c = cand[:room]
    dh, dn = [], []
    for t in root.anchors:
        h_d, n_d = _plain(model, root.tokens, int(t))
        h_cd, n_cd = _plain(model, np.concatenate([c, root.tokens]), len(c) + int(t))
        dh.append((h_d - h_cd) / h_d)
        dn.append((n_d - n_cd) / n_d)
    return np.array(dh), np.array(dn), len(cand) > room


def _decide(per_anchor, mask, signal):
    x = per_anchor[mask]
    return x.max() if signal == "entropy" else x.mean()


@pytest.mark.parametrize("verify_against", ["retrieving_anchor", "all_anchors"])
def test_verify_matches_plain_per_pair_forwards(model, root, verify_against):
    cands = _candidates(root)
    n = root.anchors.size
    masks = _masks(n)
    got = verify(model, root, cands, WINDOW, PAD, batch_size=3, retrieving=masks,
                 verify_against=verify_against)
    for cand, m, v in zip(cands, masks, got):
        ref_h, ref_n, truncated = _reference(model, root, cand)
        np.testing.assert_allclose(v.dI_entropy, ref_h, atol=1e-5, rtol=0)
        np.testing.assert_allclose(v.dI_nll, ref_n, atol=1e-5, rtol=0)
        assert v.truncated is truncated
        assert v.context_tokens == len(cand)
        assert v.context_tokens_used == min(len(cand), context_room(root, WINDOW))
        mask = np.zeros(n, bool)
        mask[m] = True
        assert v.retrieving_anchors == [int(a) for a in root.anchors[mask]]
        deciding = mask if verify_against == "retrieving_anchor" else np.ones(n, bool)
        for signal, ref in (("entropy", ref_h), ("nll", ref_n)):
            assert v.gain(signal) == pytest.approx(_decide(ref, deciding, signal), abs=1e-5)
        # the all-anchor summaries are recorded whatever decides
        assert v.max_entropy == pytest.approx(ref_h.max(), abs=1e-5)
        assert v.mean_nll == pytest.approx(ref_n.mean(), abs=1e-5)
    assert [v.truncated for v in got] == [False, False, False, True]


def test_batching_does_not_change_verdicts(model, root):
    cands = _candidates(root)
    masks = _masks(root.anchors.size)
    a = verify(model, root, cands, WINDOW, PAD, batch_size=1, retrieving=masks)
    b = verify(model, root, cands, WINDOW, PAD, batch_size=4, retrieving=masks)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.dI_entropy, y.dI_entropy, atol=1e-5, rtol=0)
        np.testing.assert_allclose(x.dI_nll, y.dI_nll, atol=1e-5, rtol=0)


def test_no_retrieval_record_means_every_anchor(model, root):
    cands = _candidates(root)[:2]
    for v in verify(model, root, cands, WINDOW, PAD):
        assert v.deciding.all()
        assert v.gain("entropy") == v.max_entropy and v.gain("nll") == v.mean_nll


def test_retrieving_anchor_accepts_no_more_than_all_anchors(model, root):
    """Entropy's max over the retrieving anchors is a max over a subset: never larger, so for
    every ε at most as many candidates pass (the NLL mean has no such order)."""
    cands = [_tokens(L, 100 + i) for i, L in enumerate([3, 8, 20, 40, 50, 9, 27, 14])]
    n = root.anchors.size
    rng = np.random.default_rng(5)
    masks = [rng.random(n) < 0.4 for _ in cands]
    for m in masks:
        m[rng.integers(n)] = True
    ra = verify(model, root, cands, WINDOW, PAD, 3, retrieving=masks)
    aa = verify(model, root, cands, WINDOW, PAD, 3, retrieving=masks, verify_against="all_anchors")
    g_ra = np.array([v.gain("entropy") for v in ra])
    g_aa = np.array([v.gain("entropy") for v in aa])
    assert (g_ra <= g_aa + 1e-12).all()
    assert (g_ra < g_aa).any(), "the masks never mattered: nothing was tested"
    for eps in np.unique(np.concatenate([g_ra, g_aa])) - 1e-9:
        assert (g_ra > eps).sum() <= (g_aa > eps).sum()


def test_length_control_excess_gain(model, root):
    """A control identical to C gives zero excess at every anchor; an unrelated control of the
    same length gives the per-anchor excess ΔI_C − ΔI_control, aggregated by the rule."""
    cands = _candidates(root)
    masks = _masks(root.anchors.size)
    plain = verify(model, root, cands, WINDOW, PAD, 3, retrieving=masks)
    same = verify(model, root, cands, WINDOW, PAD, 3, retrieving=masks, controls=cands)
    for v in same:
        assert v.has_control
        assert v.gain("entropy") == pytest.approx(0.0, abs=1e-5)
        assert v.gain("nll") == pytest.approx(0.0, abs=1e-5)
    ctl = [_tokens(len(c) + 7, 200 + i) for i, c in enumerate(cands)]
    with_ctl = verify(model, root, cands, WINDOW, PAD, 3, retrieving=masks, controls=ctl)
    for p, v, c, m in zip(plain, with_ctl, ctl, masks):
        ref = verify(model, root, [c[:v.context_tokens_used]], WINDOW, PAD)[0]
        np.testing.assert_allclose(v.control_dI_entropy, ref.dI_entropy, atol=1e-5, rtol=0)
        np.testing.assert_allclose(v.dI_entropy, p.dI_entropy, atol=1e-5, rtol=0)
        for signal in ("entropy", "nll"):
            per = v._per_anchor(signal)
            ctrl = v.control_dI_entropy if signal == "entropy" else v.control_dI_nll
            assert v.gain(signal) == pytest.approx(_decide(per - ctrl, v.deciding, signal),
                                                   abs=1e-9)
            assert v.control_gain(signal) == pytest.approx(_decide(ctrl, v.deciding, signal))
            assert v.raw_gain(signal) == pytest.approx(p.gain(signal), abs=1e-5)
        assert v.gain("entropy") != pytest.approx(p.gain("entropy"), abs=1e-6)
    with pytest.raises(ValueError, match="length control"):
        verify(model, root, cands[:1], WINDOW, PAD, controls=[cands[0][:2]])


def test_length_control_draws_unrelated_chunks_deterministically():
    chunks = [_tokens(10 + i, 300 + i) for i in range(12)]
    doc = np.arange(12) // 2
    exclude = {0, 1, 2}
    a = length_control(37, chunks, doc, exclude, control_rng(0, 9, 4))
    b = length_control(37, chunks, doc, exclude, control_rng(0, 9, 4))
    assert len(a) == 37 and np.array_equal(a, b)
    assert not np.array_equal(a, length_control(37, chunks, doc, exclude, control_rng(1, 9, 4)))
    allowed = {int(x) for i in range(12) if doc[i] not in exclude for x in chunks[i]}
    assert set(a.tolist()) <= allowed
    with pytest.raises(ValueError, match="length control"):
        length_control(5, chunks, doc, set(range(6)), control_rng(0, 9, 4))


def test_verdict_rejects_unknown_mode():
    with pytest.raises(ValueError, match="verify_against"):
        Verdict(np.zeros(2), np.zeros(2), 0, verify_against="max")


# ------------------------------------------------------------ screen_and_verify, stubbed corpus

class _Index:
    """Each query retrieves two chunks, fixed by its position in the query list."""

    def __init__(self, chunk_doc):
        self.chunk_doc = np.asarray(chunk_doc)
        self.calls = []

    def search(self, vecs, k, exclude_docs):
        hits = [[(q % 6, 0.9 - 0.01 * q), ((q + 1) % 6, 0.5 + 0.01 * q)][:k]
                for q in range(len(vecs))]
        self.calls.append(hits)
        return hits


def _ctx(model, batch_size=8, seed=0, **screening):
    chunk_doc = [2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8]
    chunk_tokens = [_tokens(200 if i == 0 else 20 + 3 * i, 400 + i) for i in range(12)]
    docs = {0: _tokens(70, 1), 1: _tokens(64, 2)}
    index = _Index(chunk_doc)
    tok = SimpleNamespace(pad_token_id=PAD,
                          decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))
    enc = SimpleNamespace(encode=lambda texts, **kw: np.ones((len(texts), 4), np.float32),
                          get_embedding_dimension=lambda: 4)
    cs = SimpleNamespace(tokens=chunk_tokens, index=index)
    res = SimpleNamespace(tokenizer=tok, store=SimpleNamespace(doc_tokens=docs.__getitem__),
                          chunkset=lambda: cs, encoder=enc)
    sc = ScreeningSpec(window=WINDOW, alpha=0.5, max_anchors=4, skip_start=4,
                       batch_size=batch_size, **screening)
    spec = SimpleNamespace(screening=sc, retrieval=SimpleNamespace(batch_size=8, top_k=2))
    return SimpleNamespace(resources=res, spec=spec, screening_model=model, device="cpu",
                           seed=seed), index


def test_screen_and_verify_records_the_retrieving_anchors(model):
    ctx, index = _ctx(model)
    out = screen_and_verify(ctx, [0, 1])
    (hits,) = index.calls
    q = 0
    expected = []
    for rs in out:
        n = rs.screened.anchors.size
        masks, best = {}, {}
        for j in range(n):
            for c, score in hits[q]:
                masks.setdefault(c, np.zeros(n, bool))[j] = True
                best[c] = max(score, best.get(c, -1.0))
            q += 1
        expected.append((masks, best))
        assert {c.chunk_id for c in rs.candidates} == set(masks)
        for c in rs.candidates:
            assert np.array_equal(c.verdict.retrieving, masks[c.chunk_id])
            assert c.similarity == pytest.approx(best[c.chunk_id])
            assert c.verdict.verify_against == "retrieving_anchor"
            assert c.verdict.truncated == (c.chunk_id == 0)
        stats = rs.stats("entropy", 0.4)
        assert stats["contexts_truncated"] == int(any(c.chunk_id == 0 for c in rs.candidates))
        assert isinstance(stats["contexts_truncated"], int)
    assert q == len(hits)
    assert any(not c.verdict.retrieving.all() for rs in out for c in rs.candidates)


def test_screen_and_verify_length_control_is_deterministic(model):
    plain = screen_and_verify(_ctx(model)[0], [0, 1])
    runs = [screen_and_verify(_ctx(model, batch_size=b, control="length")[0], [0, 1])
            for b in (8, 8, 1)]
    other_seed = screen_and_verify(_ctx(model, seed=3, control="length")[0], [0, 1])
    differs = []
    for p, a, b, c, o in zip(plain, *runs, other_seed):
        for cp, ca, cb, cc, co in zip(p.candidates, a.candidates, b.candidates, c.candidates,
                                      o.candidates):
            va, vb, vc = ca.verdict, cb.verdict, cc.verdict
            assert va.has_control and not cp.verdict.has_control
            # two identical calls: identical; another batch size: the same within float noise
            assert np.array_equal(va.control_dI_entropy, vb.control_dI_entropy)
            np.testing.assert_allclose(va.control_dI_entropy, vc.control_dI_entropy, atol=1e-5)
            np.testing.assert_allclose(va.control_dI_nll, vc.control_dI_nll, atol=1e-5)
            for signal in ("entropy", "nll"):
                assert va.gain(signal) == vb.gain(signal)
                assert va.gain(signal) == pytest.approx(vc.gain(signal), abs=1e-5)
                assert va.raw_gain(signal) == pytest.approx(cp.verdict.gain(signal), abs=1e-5)
            # the control changes the deciding gain, and another seed draws other controls
            # (one chunk of six may be drawn again: some, not all, differ)
            assert va.gain("entropy") != pytest.approx(cp.verdict.gain("entropy"), abs=1e-6)
            differs.append(not np.allclose(va.control_dI_nll, co.verdict.control_dI_nll,
                                           atol=1e-6))
    assert sum(differs) >= len(differs) // 2


# ------------------------------------------------------------ candidate prefixes computed once

def test_prefix_cache_leaves_every_gain_unchanged(model, root):
    """Rows that continue a chunk's cached keys/values give the plain per-pair ΔI to 1e-5, for
    candidates of mixed lengths and a truncated one, and the second root reuses the cache."""
    from harness.construction.screening import PrefixCache

    cands = _candidates(root)
    masks = _masks(root.anchors.size)
    cache = PrefixCache(model, 1 << 30, batch_size=2)
    ids = [10, 11, 12, 13]
    for rnd in range(2):
        got = verify(model, root, cands, WINDOW, PAD, batch_size=3, retrieving=masks,
                     prefix_cache=cache, chunk_ids=ids)
        for cand, v in zip(cands, got):
            ref_h, ref_n, truncated = _reference(model, root, cand)
            np.testing.assert_allclose(v.dI_entropy, ref_h, atol=1e-5, rtol=0)
            np.testing.assert_allclose(v.dI_nll, ref_n, atol=1e-5, rtol=0)
            assert v.truncated is truncated
        assert (cache.misses, cache.hits) == (4, 4 * rnd)
    assert cache.computed_tokens == sum(len(c) for c in cands)
    # a different root continuing the same cached chunks: still the plain values
    (other,) = screen_roots(model, [_tokens(90, 5)], WINDOW, 0.5, 5, PAD, skip_start=4)
    got = verify(model, other, cands, WINDOW, PAD, prefix_cache=cache, chunk_ids=ids)
    for cand, v in zip(cands, got):
        ref_h, ref_n, _ = _reference(model, other, cand)
        np.testing.assert_allclose(v.dI_entropy, ref_h, atol=1e-5, rtol=0)
        np.testing.assert_allclose(v.dI_nll, ref_n, atol=1e-5, rtol=0)
    assert cache.hits == 8 and cache.computed_tokens == sum(len(c) for c in cands)


def test_prefix_cache_evicts_within_its_budget(model, root):
    from harness.construction.screening import PrefixCache

    cands = _candidates(root)
    one = PrefixCache(model, 1 << 30)
    one.get([0], [cands[3]])
    per_token = one._bytes / len(cands[3])
    cache = PrefixCache(model, int(per_token * (len(cands[2]) + len(cands[3]))))
    cache.get([0, 1, 2, 3], cands)
    assert set(cache._kv) == {2, 3} and cache._bytes <= cache.budget
    a = verify(model, root, cands, WINDOW, PAD, prefix_cache=cache, chunk_ids=[0, 1, 2, 3])
    b = verify(model, root, cands, WINDOW, PAD)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.dI_entropy, y.dI_entropy, atol=1e-5, rtol=0)
    assert cache.misses == 6            # 0 and 1 had been evicted, 2 and 3 were hits


def test_screen_and_verify_same_verdicts_with_and_without_prefix_cache(model):
    """The core path, length control on (its rows always run whole): cache on vs off."""
    on = screen_and_verify(_ctx(model, control="length", prefix_cache_mb=64)[0], [0, 1])
    off = screen_and_verify(_ctx(model, control="length", prefix_cache_mb=0)[0], [0, 1])
    for p, q in zip(on, off):
        assert [c.chunk_id for c in p.candidates] == [c.chunk_id for c in q.candidates]
        for cp, cq in zip(p.candidates, q.candidates):
            for f in ("dI_entropy", "dI_nll", "control_dI_entropy", "control_dI_nll"):
                np.testing.assert_allclose(getattr(cp.verdict, f), getattr(cq.verdict, f),
                                           atol=1e-5, rtol=0)


def test_early_stop_verifies_in_retrieval_order_until_the_room_is_full(model):
    """``screening.early_stop``: the verified candidates are a prefix (in retrieval order) of
    the full verification's, with the same verdicts; it stops at the first batch whose positives
    fill the room, and counts what it skipped. Off, nothing is skipped or counted."""
    full = screen_and_verify(_ctx(model, batch_size=1)[0], [0, 1])
    assert "candidates_skipped" not in full[0].stats("entropy", 0.4)
    # ε between root 0's gains (this random model's gains are tiny): some pass, some fail
    gains = sorted({c.verdict.gain("entropy") for c in full[0].candidates})
    eps = (gains[-2] + gains[-3]) / 2
    ctx, _ = _ctx(model, batch_size=1, epsilon=eps, early_stop=True)
    pos_tokens = [[len(ctx.resources.chunkset().tokens[c.chunk_id])
                   * (c.verdict.gain("entropy") > eps) for c in rs.candidates] for rs in full]
    # a room the first positive of root 0 fills: the stop must come right after it
    first = next(j for j, t in enumerate(pos_tokens[0]) if t)
    ctx.target_length = 70 + pos_tokens[0][first]        # root 0 has 70 tokens
    early = screen_and_verify(ctx, [0, 1])
    skipped = 0
    for f, e, toks in zip(full, early, pos_tokens):
        n = len(e.candidates)
        assert [c.chunk_id for c in e.candidates] == [c.chunk_id for c in f.candidates[:n]]
        for ce, cf in zip(e.candidates, f.candidates):
            np.testing.assert_allclose(ce.verdict.dI_entropy, cf.verdict.dI_entropy, atol=1e-5)
        need = ctx.target_length - min(len(e.screened.tokens), ctx.target_length)
        filled = np.cumsum(toks) >= need
        assert n == (int(np.argmax(filled)) + 1 if filled.any() else len(f.candidates))
        assert e.stats("entropy", eps)["candidates_skipped"] == len(f.candidates) - n
        skipped += len(f.candidates) - n
    assert len(early[0].candidates) == first + 1 and skipped > 0
