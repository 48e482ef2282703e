"""HELMET: the locally generated Recall tasks against HELMET's templates and metrics
(princeton-nlp/HELMET data.py, utils.py, model_utils.py), their sizing per tokenizer, the
RAG / re-rank loaders on a tiny fake data folder, and not-run reporting."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from benchmarks import helmet_recall as H
from benchmarks.ruler.words import ADJECTIVES, NOUNS

ESSAY = Path(__file__).resolve().parents[2] / "shared" / "data" / "PaulGrahamEssays.json"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LENGTHS = (1024, 2048, 4096)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small BPE (Qwen2 pipeline) trained on text shaped like the tasks' prompts."""
    from transformers import AutoTokenizer

    from harness.sandbox.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = []
    for _ in range(300):
        texts.append(H.NEEDLE.format(type_needle_v="numbers", key=H.random_value(rng, "words"),
                                     value=H.random_value(rng, "numbers")))
        texts.append(f'    "{H.random_value(rng, "uuids")}": "{H.random_value(rng, "uuids")}",')
    texts += [t.user_template + "\n" + t.system_template for t in H.TASKS.values()]
    out = train_tokenizer(texts, 600, tmp_path_factory.mktemp("helmettok"),
                          model_max_length=1 << 20)
    return AutoTokenizer.from_pretrained(str(out))


@pytest.fixture(scope="module")
def essay():
    if not ESSAY.is_file():
        pytest.skip(f"RULER essay haystack not found at {ESSAY} (shared reference data absent)")
    return H.essay_words(ESSAY)


# ------------------------------------------------------------------ json_kv

def test_json_kv_format_matches_helmet(tokenizer):
    rec = H.generate_json_kv(tokenizer, 2048, num_samples=3)[1]
    assert rec["context"].startswith('JSON data:\n{\n    "')
    kv = json.loads(rec["context"][len("JSON data:\n"):])
    assert len(kv) == rec["num_kvs"] and rec["num_kvs"] > 5
    assert all(UUID4.match(k) and UUID4.match(v) for k, v in kv.items())
    assert rec["answer"] == [kv[rec["question"]]]
    assert f'"{rec["question"]}": "{rec["answer"][0]}"' in rec["context"]
    assert all(kv[k] == v and k != rec["question"] for k, v in rec["demos"])
    assert list(kv).index(rec["question"]) == round(0.2 * (len(kv) - 1))   # sample 1: depth 0.2

    sample = H.prepare_json_kv(rec)
    (k1, v1), (k2, v2) = rec["demos"]
    assert H.render_prompt(H.TASKS["json_kv"], sample) == (
        f"{rec['context']}\n\nExtract the value corresponding to the specified key in the JSON "
        f"object below.\n\nKey: {k1}\nCorresponding value: {v1}\n\nKey: {k2}\nCorresponding "
        f"value: {v2}\n\nKey: {rec['question']}\nCorresponding value:")
    assert H.prepare_json_kv(rec, shots=0)["demos"] == ""


@pytest.mark.parametrize("length", LENGTHS)
def test_json_kv_fits_each_length(tokenizer, length):
    task = H.TASKS["json_kv"]
    samples = [H.prepare_json_kv(r) for r in H.generate_json_kv(tokenizer, length, num_samples=4)]
    used = []
    for s in samples:
        prompt, n, cut = H.fit_prompt(task, s, tokenizer, length)
        assert not cut and n + task.generation_max_length <= length
        assert s["answer"][0] in prompt
        used.append(n + task.generation_max_length)
    # the size search fills the length; a sample that overflows at that size is shrunk by RULER's
    # increment (6 pairs here), so single samples may fall well short
    assert max(used) > 0.85 * length


def test_json_kv_substring_exact_match():
    task = H.TASKS["json_kv"]
    v = "847cdfcb-9550-44d2-aaff-1269bc3b1560"
    sample = {"answer": [v]}
    assert H.score_output(task, sample, f" {v}")["substring_exact_match"] == 1.0
    assert H.score_output(task, sample, f' "{v.upper()}"\nKey: x')["substring_exact_match"] == 1.0
    assert H.score_output(task, sample, " 847cdfcb-9550-44d2-aaff")["substring_exact_match"] == 0.0
    assert H.parse_output("Corresponding value: abc\nKey: d", "corresponding value:") == "abc"


# ------------------------------------------------------------------ RULER tasks

@pytest.mark.parametrize("name,type_v", [("ruler_niah_mk_2", "number"),
                                         ("ruler_niah_mk_3", "uuid")])
def test_ruler_multikey_format_and_fit(tokenizer, name, type_v):
    task = H.TASKS[name]
    for length in LENGTHS:
        recs = H.generate_niah(name, tokenizer, length, num_samples=3)
        for r in recs:
            s = H.prepare_ruler(r)
            prompt, n, cut = H.fit_prompt(task, s, tokenizer, length)
            assert not cut and n + H.RULER_TOKENS_TO_GENERATE <= length
            assert s["type_needle_v"] == type_v and len(s["answer"]) == 1
            assert prompt.startswith(
                f"A special magic {type_v} is hidden within the following text. Make sure to "
                f"memorize it. I will quiz you about the {type_v} afterwards.\nOne of the special "
                f"magic {type_v}s for ")
            assert prompt.endswith(
                f"\nWhat is the special magic {type_v} for {s['query']} mentioned in the provided "
                f"text?\nThe special magic {type_v} for {s['query']} mentioned in the provided "
                f"text is")
            lines = s["context"].split("\n")
            # word keys may hold spaces, capitals or apostrophes ("ad hoc-contact lens")
            assert all(re.fullmatch(rf"One of the special magic {type_v}s for .+ is: \S+\.", x)
                       for x in lines)
            gold = [x for x in lines if f" for {s['query']} is: " in x]
            assert gold == [f"One of the special magic {type_v}s for {s['query']} is: "
                            f"{s['answer'][0]}."]
    if name == "ruler_niah_mk_3":
        assert UUID4.match(s["query"]) and UUID4.match(s["answer"][0])
    else:
        nouns = set(NOUNS)      # an adjective-noun key of the shipped wonderwords lists
        assert any(s["query"].startswith(a + "-") and s["query"][len(a) + 1:] in nouns
                   for a in ADJECTIVES)
        assert re.fullmatch(r"\d{7}", s["answer"][0])


def test_ruler_multivalue_format_and_fit(tokenizer, essay):
    task = H.TASKS["ruler_niah_mv"]
    for length in (2048, 4096):
        for r in H.generate_niah("ruler_niah_mv", tokenizer, length, num_samples=2, essay=essay):
            s = H.prepare_ruler(r)
            prompt, n, cut = H.fit_prompt(task, s, tokenizer, length)
            assert not cut and n + H.RULER_TOKENS_TO_GENERATE <= length
            assert s["type_needle_v"] == "numbers" and len(set(s["answer"])) == 4
            assert prompt.startswith("Some special magic numbers are hidden within the "
                                     "following text.")
            assert prompt.endswith(f"The special magic numbers for {s['query']} mentioned in the "
                                   "provided text are")
            for v in s["answer"]:
                assert f"One of the special magic numbers for {s['query']} is: {v}." in s["context"]


def test_ruler_recall_metric_prepends_system_template():
    task = H.TASKS["ruler_niah_mv"]
    s = {"type_needle_v": "numbers", "query": "happy-fox", "answer": ["1111111", "2222222",
                                                                        "3333333", "4444444"]}
    assert H.score_output(task, s, " 1111111, 3333333.")["ruler_recall"] == 0.5
    assert H.score_output(task, s, " 4444444 2222222 3333333 1111111")["ruler_recall"] == 1.0
    assert H.ruler_recall("The answer is ABC-x", ["abc-X"]) == 1.0


# ------------------------------------------------------------------ evaluation and not-run

def test_evaluate_recall_and_not_run_categories(tokenizer):
    cat = H.load_recall(tokenizer, [1024, 2048], num_samples=2,
                        tasks=("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3"))
    answers = {}
    for (name, length), samples in cat.samples.items():
        for s in samples:
            answers[H.fit_prompt(H.TASKS[name], s, tokenizer, length)[0]] = " " + s["answer"][0]
    calls = []

    def generate(prompts, *, max_new_tokens, temperature, stop):
        calls.append((max_new_tokens, temperature, stop))
        return [answers[p] for p in prompts]

    others = [H.load_category(c, [1024, 2048], data_dir=None) for c in
              ("rag", "rerank", "cite", "longqa", "summ", "icl")]
    res = H.evaluate([cat, *others], generate, tokenizer)
    assert res["per_task"]["json_kv"] == {"1024": 100.0, "2048": 100.0}
    assert res["per_task"]["ruler_niah_mk_3"]["2048"] == 100.0
    assert "recall" not in res["per_category"]          # mv not run here: no category average
    assert set(res["not_run"]) == {"rag", "rerank", "cite", "longqa", "summ", "icl"}
    assert all(v == "not run: data folder absent" for v in res["not_run"].values())
    assert (100, 0.0, None) in calls and len(calls) == 6
    wrong = H.evaluate([cat], lambda p, **kw: [" nothing"] * len(p), tokenizer)
    assert wrong["per_task"]["ruler_niah_mk_2"]["1024"] == 0.0


def test_absent_and_unimplemented_categories_are_reported(tmp_path):
    for c in ("rag", "rerank", "cite", "longqa", "summ", "icl"):
        assert H.load_category(c, [8192], data_dir=tmp_path / "nope").not_run == \
            "not run: data folder absent"
    (tmp_path / "data").mkdir()
    for c in ("cite", "longqa", "summ", "icl"):
        reason = H.load_category(c, [8192], data_dir=tmp_path).not_run
        assert reason.startswith("not run: ") and "not implemented" in reason
    rag = H.load_category("rag", [8192, 12345], data_dir=tmp_path)
    assert not rag.ran and "kilt_nq@12345" in rag.skipped and "kilt_nq@8192" in rag.skipped
    assert H.load_recall(None, [8192], source="files", data_dir=None).not_run == \
        "not run: data folder absent"
    with pytest.raises(ValueError, match="unknown file-based HELMET category"):
        H.load_category("rulers", [8192], data_dir=tmp_path)


# ------------------------------------------------------------------ RAG and re-rank (fake files)

def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _kilt(i):
    return {"id": f"q{i}", "question": f"who wrote book {i}?", "answers": [f"Author {i}", f"A{i}"],
            "ctxs": [{"title": f"Book {i}", "text": f"Book {i} was written by Author {i}."},
                     {"title": "Other", "text": "Unrelated text."}]}


def test_rag_prompt_demos_and_metric(tmp_path):
    _write(tmp_path / "data/kilt/nq-dev-multikilt_1000_k20_dep6.jsonl",
           [_kilt(i) for i in range(3)])
    _write(tmp_path / "data/kilt/nq-train-multikilt_1000_k3_dep6.jsonl",
           [_kilt(i) for i in range(10, 14)])
    cat = H.load_category("rag", [4096], data_dir=tmp_path)
    assert cat.ran and list(cat.samples) == [("kilt_nq", 4096)]
    assert "kilt_triviaqa@4096" in cat.skipped
    s = cat.samples[("kilt_nq", 4096)][0]
    prompt = H.render_prompt(H.TASKS["kilt_nq"], s)
    assert prompt.startswith("Use the given documents to write a concise and short answer to the "
                             "question. Write your answer in the following format:\nAnswer: "
                             "[answer]\n\nDocument (Title: Book 1")          # a demo comes first
    assert prompt.endswith("Document (Title: Book 0): Book 0 was written by Author 0.\n\n"
                           "Document (Title: Other): Unrelated text.\n\n"
                           "Question: who wrote book 0?\nAnswer:")
    demos = re.findall(r"Document \(Title: Book (1\d)\): Book \1 was written by Author \1\.\n\n"
                       r"Document \(Title: Other\): Unrelated text\.\n\n"
                       r"Question: who wrote book \1\?\nAnswer: Author \1\n\n", prompt)
    assert len(demos) == len(set(demos)) == 2 and s["demos"].count("\nAnswer: ") == 2
    assert cat.samples == H.load_category("rag", [4096], data_dir=tmp_path).samples
    task = H.TASKS["kilt_nq"]
    assert task.stop_new_line and task.generation_max_length == 20
    assert H.score_output(task, s, " Author 0")["substring_exact_match"] == 1.0
    assert H.score_output(task, s, " the author 0.")["substring_exact_match"] == 1.0
    assert H.score_output(task, s, " Author 7")["substring_exact_match"] == 0.0


def _marco(qid, labels):
    return {"qid": qid, "query": f"query {qid}",
            "ctxs": [{"id": str(100 + j), "text": f"passage {j}", "label": lab}
                     for j, lab in enumerate(labels)]}


def test_rerank_prompt_parse_and_ndcg(tmp_path):
    _write(tmp_path / "data/msmarco/test_reranking_data_k14_dep3.jsonl",
           [_marco("1", [0, 2, 0, 1] + [0] * 10)])
    _write(tmp_path / "data/msmarco/test_reranking_data_k10_dep3.jsonl",
           [_marco(str(q), [1, 0]) for q in (5, 6, 7)])
    cat = H.load_category("rerank", [4096], data_dir=tmp_path)
    s = cat.samples[("msmarco_rerank_psg", 4096)][0]
    prompt = H.render_prompt(H.TASKS["msmarco_rerank_psg"], s)
    assert "\n\nQuery: query 6\nRanking: 100 > 101\n\n" in prompt or "Query: query 5" in prompt
    assert prompt.count("\nRanking: 100 > 101\n\n") == 2
    assert prompt.endswith("[ID: 113] Document: passage 13\n\nQuery: query 1\nRanking:")
    assert s["answer"].startswith("101 > 103 > ")
    task = H.TASKS["msmarco_rerank_psg"]
    assert H.score_output(task, s, " 101 > 103 > 100")["NDCG@10"] == 1.0
    swapped = H.score_output(task, s, " [ID: 103] > [ID: 101]")
    ideal = 2 + 1 / 1.584962500721156
    assert swapped["NDCG@10"] == round((1 + 2 / 1.584962500721156) / ideal, 5)
    assert H.score_output(task, s, " no idea")["NDCG@10"] == 0.0
    assert H.parse_rankings("Ranking: [3] > [1] > 2\nthen 5 > 4") == {"3": 3, "1": 2, "2": 1}


def test_shuffle_matches_datasets():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"i": list(range(37))})
    assert H.shuffled_indices(37, 12345) == ds.shuffle(seed=12345)["i"]


def test_recall_from_helmet_files(tmp_path, tokenizer):
    recs = H.generate_json_kv(tokenizer, 1024, num_samples=5)
    H.write_jsonl(tmp_path / "data/json_kv/test_k50_dep6.jsonl", recs)
    ruler = H.generate_niah("ruler_niah_mk_2", tokenizer, 4096, num_samples=3)
    H.write_jsonl(tmp_path / "data/ruler/niah_multikey_2/validation_4096.jsonl",
                  [{k: v for k, v in r.items() if k != "answer"} for r in ruler])   # "outputs" only
    cat = H.load_recall(tokenizer, [4096], source="files", data_dir=tmp_path, num_samples=2,
                        tasks=("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3"))
    kv = cat.samples[("json_kv", 4096)]
    order = H.shuffled_indices(5, H.SEED)[:2]
    assert [s["question"] for s in kv] == [recs[i]["question"] for i in order]
    assert all(s["demos"].startswith("Key: ") and s["k"] == s["num_kvs"] for s in kv)
    mk2 = cat.samples[("ruler_niah_mk_2", 4096)]
    assert len(mk2) == 2 and all(s["answer"] == s["outputs"] and s["question"] == s["query"]
                                 for s in mk2)
    assert cat.skipped == {"ruler_niah_mk_3@4096": "not run: HELMET file absent"}


# ------------------------------------------------------------------ preset: official

def _entry(name, preset, **params):
    from harness.api import BenchmarkEntry

    return BenchmarkEntry(name=name, preset=preset, params=params)


def test_official_recall_reads_helmets_files(tmp_path, tokenizer):
    """preset official with a data folder: the samples are the released file's (shuffled and
    cut with HELMET's seed), a length without a file is not run, and provenance names the
    file with its sha256; without a folder it generates and says so."""
    from benchmarks.adapters import HelmetRecall
    from harness.api import NotRun

    recs = H.generate_json_kv(tokenizer, 4096, num_samples=5)
    for r in recs:
        r["question"] = "FROM-FILE " + r["question"]            # marks the file's records
    H.write_jsonl(tmp_path / "data/json_kv/test_k50_dep6.jsonl", recs)
    b = HelmetRecall(_entry("helmet_recall", "official", data_dir=str(tmp_path)))
    got = b.samples("json_kv", 4096, tokenizer, 3)
    order = H.shuffled_indices(5, H.SEED)[:3]
    assert [s.meta["record"]["question"] for s in got] == [recs[i]["question"] for i in order]
    assert all("FROM-FILE" in s.prompt and H.count_tokens(tokenizer, s.prompt)
               + s.max_new_tokens <= 4096 for s in got)
    with pytest.raises(NotRun, match="no released file for json_kv at 8192"):
        b.samples("json_kv", 8192, tokenizer, 3)
    with pytest.raises(NotRun, match="its lengths: 4096"):
        b.samples("json_kv", 1000, tokenizer, 3)
    prov = b.provenance()["data"]
    assert prov["generated"] is False and "json_kv@4096" in prov["files"]
    assert len(prov["files"]["json_kv@4096"]["sha256"]) == 64
    harness = HelmetRecall(_entry("helmet_recall", "harness", data_dir=str(tmp_path)))
    assert all("FROM-FILE" not in s.prompt for s in harness.samples("json_kv", 4096,
                                                                       tokenizer, 2))
    bare = HelmetRecall(_entry("helmet_recall", "official"))
    assert bare.provenance()["data"]["generated"] is True
    assert "HELMET ships no generator" in bare.provenance()["data"]["note"]
    with pytest.raises(FileNotFoundError, match="HELMET data folder not found"):
        HelmetRecall(_entry("helmet_recall", "official", data_dir=str(tmp_path / "nope")))


def test_official_helmet_averages_per_category_then_across():
    """HELMET's collect_results: each category's mean over its tasks, then the mean over the
    categories; the harness preset pools the tasks."""
    from benchmarks.adapters import Helmet
    from harness.api import TaskScore
    from harness.evaluation.runner import Unit, summarize

    scores = {"json_kv": 90.0, "ruler_niah_mk_2": 70.0, "ruler_niah_mk_3": 50.0,
              "ruler_niah_mv": 30.0, "msmarco_rerank_psg": 10.0}
    official, harness = Helmet(_entry("helmet", "official")), Helmet(_entry("helmet", "harness"))
    assert official.average(scores) == pytest.approx((60.0 + 10.0) / 2)
    assert harness.average(scores) == pytest.approx(250.0 / 5)
    assert official.average({}) is None
    assert "per category" in official.provenance()["average"]
    # the evaluation's per-length average goes through the benchmark's rule
    units = [Unit("helmet", t, 4096, score=TaskScore(v, [v])) for t, v in scores.items()]
    for bench, want in ((official, 35.0), (harness, 50.0)):
        avg = summarize(units, [bench])["helmet"]["average"]["4096"]
        assert avg["mean"] == pytest.approx(want) and avg["num_tasks"] == 5
