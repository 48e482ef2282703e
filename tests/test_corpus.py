"""Corpus readers, bad-input errors, the token store and chunking, on a tiny trained tokenizer."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from harness.data import corpus  # noqa: E402
from harness.data.corpus import (CorpusError, Document, TokenStore, cache_key,  # noqa: E402
                            chunk_documents, group_segments, read_corpus)

SENTENCES = [
    "The archivist keeps the ledger of every ship that entered the harbour.",
    "A lighthouse keeper counts the waves and writes the number in a notebook.",
    "Grain prices rose after the long winter, and the millers raised their fees.",
    "The river bends twice before it reaches the old stone bridge near the market.",
    "Café owners in the valley serve bread, cheese and a thin green soup.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from harness.sandbox.tokenizer import qwen2_pipeline_tokenizer

    tok = qwen2_pipeline_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=1, show_progress=False,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   name_or_path="tiny-test-bpe")


def write_jsonl(path: Path, records) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def docs_of(texts):
    return [Document(f"d{i}", t, "mem", None) for i, t in enumerate(texts)]


# ---------------------------------------------------------------- readers

def test_jsonl_reader_ids_lines_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": SENTENCES[0]}, "",
                                              {"id": 7, "text": SENTENCES[1], "extra": 1}])
    docs, report = read_corpus(path)
    assert [(d.id, d.line, d.source) for d in docs] == [("a", 1, str(path)), ("7", 3, str(path))]
    assert docs[1].text == SENTENCES[1]
    assert report.n_documents == 2 and report.n_skipped == 0 and report.blank_lines == 1
    assert report.format == "jsonl"

    path2 = write_jsonl(tmp_path / "body.jsonl", [{"body": s} for s in SENTENCES[:2]])
    docs, _ = read_corpus(path2, text_field="body", id_field=None)
    assert [d.id for d in docs] == ["body-1", "body-2"]


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["x", "y", "z"], "text": SENTENCES[:3]}), path)
    docs, report = read_corpus(path)
    assert [(d.id, d.line) for d in docs] == [("x", 1), ("y", 2), ("z", 3)]
    assert [d.text for d in docs] == SENTENCES[:3] and report.format == "parquet"
    docs, _ = read_corpus(path, id_field=None)
    assert docs[2].id == "c-3"


def test_txt_folder_reader(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "b.txt").write_text(SENTENCES[0], encoding="utf-8")
    (tmp_path / "corpus" / "sub" / "a.txt").write_text(SENTENCES[1], encoding="utf-8")
    (tmp_path / "corpus" / "notes.md").write_text("not read", encoding="utf-8")
    docs, report = read_corpus(tmp_path / "corpus")
    assert [(d.id, d.line) for d in docs] == [("b.txt", None), ("sub/a.txt", None)]
    assert docs[1].text == SENTENCES[1] and len(report.files) == 2


def test_saved_dataset_reader_and_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"id": ["p", "q"], "text": SENTENCES[:2]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    docs, report = read_corpus(tmp_path / "ds")
    assert [(d.id, d.line, d.text) for d in docs] == [("p", 1, SENTENCES[0]),
                                                      ("q", 2, SENTENCES[1])]
    assert report.format == "saved dataset" and report.files

    dd = DatasetDict({"train": Dataset.from_dict(rows),
                      "test": Dataset.from_dict({"id": ["r"], "text": [SENTENCES[2]]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(CorpusError, match=r"no split given .*\['train', 'test'\]"):
        read_corpus(tmp_path / "dd")
    docs, _ = read_corpus(f"{tmp_path / 'dd'}:test")
    assert [d.id for d in docs] == ["r"]


def test_hub_dataset_offline_asks_for_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match=r"hf:someone/corpus:train: HF_HUB_OFFLINE .*local path"):
        read_corpus("hf:someone/corpus:train")


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "c.csv").write_text("id,text\na,hello\n")
    with pytest.raises(CorpusError, match=r"c\.csv: unsupported corpus format '\.csv'.*\.jsonl"
                                          r".*\.parquet.*\.txt.*save_to_disk.*hf:"):
        read_corpus(tmp_path / "c.csv")
    with pytest.raises(CorpusError, match="corpus not found"):
        read_corpus(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- bad input

BAD_LINES = [
    ("malformed_json", '{"id": "b", "text": "unterminated', "line 2: malformed JSON",
     "expected one JSON object per line"),
    ("not_an_object", '["a", "list"]', "line 2: a JSON line is an array",
     "expected a JSON object"),
    ("missing_text", {"id": "b", "body": "x"}, "line 2: missing field 'text'",
     "expected a string under 'text'; keys present: ['id', 'body']"),
    ("non_string_text", {"id": "b", "text": 42}, "line 2: field 'text' is a number (42)",
     "expected a string under 'text'"),
    ("null_text", {"id": "b", "text": None}, "line 2: field 'text' is null",
     "expected a string under 'text'"),
    ("empty_text", {"id": "b", "text": ""}, "line 2: empty document", "expected non-empty text"),
    ("whitespace_text", {"id": "b", "text": " \n\t "}, "line 2: empty document",
     "expected non-empty text"),
    ("missing_id", {"text": "hello"}, "line 2: missing field 'id'",
     "expected a non-empty string or integer id under 'id'"),
    ("bad_id", {"id": [1], "text": "hello"}, "line 2: field 'id' is an array",
     "expected a non-empty string or integer id"),
    ("duplicate_id", {"id": "a", "text": "again"}, "line 2: duplicate id 'a'",
     "expected unique ids; first seen at"),
]


@pytest.mark.parametrize("case,line,where,expected", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_jsonl_line_names_file_line_and_expectation(tmp_path, case, line, where, expected):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "fine"}, line])
    with pytest.raises(CorpusError) as err:
        read_corpus(path)
    msg = str(err.value)
    assert msg.startswith(f"{path} {where}"), msg
    assert expected in msg, msg
    assert isinstance(err.value, ValueError)


def test_non_utf8_bytes_named_by_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=rf"{path} line 2: not valid UTF-8 \(byte 0xe9 .*"
                                          r"expected UTF-8 text\)"):
        read_corpus(path)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_bytes(b"line one\nline two\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"a\.txt line 3: not valid UTF-8 \(byte 0xff"):
        read_corpus(tmp_path / "txt")


def test_bad_parquet_columns_and_values(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), path)
    with pytest.raises(CorpusError, match=r"c\.parquet: missing column 'text' \(expected a "
                                          r"string column 'text'; columns present: \['id', "
                                          r"'body'\]\)"):
        read_corpus(path, on_error="skip")          # a missing column always raises
    pq.write_table(pa.table({"id": ["a", "b"], "text": [b"bytes", b"more"]}), path)
    with pytest.raises(CorpusError, match=r"c\.parquet row 1: field 'text' is bytes"):
        read_corpus(path)
    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["x", None, "y"]}), path)
    with pytest.raises(CorpusError, match=r"c\.parquet row 2: field 'text' is null"):
        read_corpus(path)
    docs, report = read_corpus(path, on_error="skip")
    assert [d.id for d in docs] == ["a"]
    assert report.skipped == {"non_string_text": 1, "duplicate_id": 1}
    assert report.examples["duplicate_id"] == [f"{path} row 3"]


def test_skip_mode_counts_per_reason_with_examples(tmp_path):
    path = tmp_path / "c.jsonl"
    good = [json.dumps({"id": f"g{i}", "text": s}) for i, s in enumerate(SENTENCES[:2])]
    bad = ["{oops"] * 7 + [json.dumps({"id": "e", "text": "  "}),
                           json.dumps({"id": "g0", "text": "dup"}),
                           json.dumps({"id": "m", "body": "x"})]
    path.write_bytes(("\n".join(good + bad) + "\n").encode() + b'{"id": "u", "text": "\xff"}\n')
    docs, report = read_corpus(path, on_error="skip")
    assert [d.id for d in docs] == ["g0", "g1"]
    assert report.skipped == {"malformed_json": 7, "empty_text": 1, "duplicate_id": 1,
                              "missing_text": 1, "non_utf8": 1}
    assert report.n_skipped == 11 and report.n_documents == 2
    assert report.examples["malformed_json"] == [f"{path} line {n}" for n in range(3, 8)]
    assert report.examples["non_utf8"] == [f"{path} line 13"]
    summary = report.summary()
    assert "2 documents, 11 skipped" in summary and "malformed_json: 7" in summary


def test_zero_usable_documents_is_always_an_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": ""}, "{bad"])
    with pytest.raises(CorpusError, match=r"no usable documents(.|\n)*empty_text: 1"):
        read_corpus(path, on_error="skip")
    with pytest.raises(CorpusError, match="on_error must be 'raise' or 'skip'"):
        read_corpus(path, on_error="ignore")


def test_corpus_fingerprint_follows_files_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "hello"}])
    fp = read_corpus(path)[1].fingerprint
    assert read_corpus(path)[1].fingerprint == fp
    assert read_corpus(path, id_field=None)[1].fingerprint != fp
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert read_corpus(path)[1].fingerprint != fp


# ---------------------------------------------------------------- token store

def corpus_docs(tmp_path, n=6):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": " ".join(
        SENTENCES[j % len(SENTENCES)] for j in range(i, i + 1 + i % 3))} for i in range(n)])
    return read_corpus(path)


def test_token_store_round_trip(tmp_path, tokenizer):
    docs, report = corpus_docs(tmp_path)
    key = cache_key(report.fingerprint, tokenizer)
    store = TokenStore.build(docs, tokenizer, tmp_path / "cache", key, batch_size=4)
    assert store.folder == tmp_path / "cache" / key
    assert sorted(p.name for p in store.folder.iterdir()) == sorted(corpus.STORE_FILES)
    fresh = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    reopened = TokenStore.open(tmp_path / "cache", key)
    for i, ids in enumerate(fresh):
        assert reopened.doc_tokens(i).tolist() == ids
        assert reopened.doc_tokens(i).dtype == np.uint32
    assert isinstance(reopened.tokens, np.memmap)
    m = reopened.manifest
    assert (m["n_docs"], m["n_tokens"], m["key"]) == (6, sum(map(len, fresh)), key)
    assert m["tokenizer"] == "tiny-test-bpe" and m["vocab_size"] == len(tokenizer)
    assert len(reopened.offsets) == 7 and reopened.doc_index("d4") == 4
    reopened.verify()
    with pytest.raises(KeyError, match="no document 'zz'"):
        reopened.doc_index("zz")


def test_token_store_is_reused_not_retokenized(tmp_path, tokenizer, monkeypatch):
    docs, report = corpus_docs(tmp_path)
    key = cache_key(report.fingerprint, tokenizer)
    first = TokenStore.get_or_build(docs, tokenizer, tmp_path / "cache", key)
    manifest = first.folder / "manifest.json"
    mtime = manifest.stat().st_mtime_ns

    def no_tokenizing(*a, **k):
        raise AssertionError("re-tokenized a cached corpus")
    monkeypatch.setattr(corpus, "tokenize_batches", no_tokenizing)
    second = TokenStore.get_or_build(docs, tokenizer, tmp_path / "cache", key)
    assert manifest.stat().st_mtime_ns == mtime
    assert second.doc_tokens(3).tolist() == first.doc_tokens(3).tolist()
    with pytest.raises(CorpusError, match="document ids differ.*the key must identify"):
        TokenStore.get_or_build(docs[:-1], tokenizer, tmp_path / "cache", key)


def test_half_written_cache_is_ignored_and_rebuilt(tmp_path, tokenizer, monkeypatch):
    docs, report = corpus_docs(tmp_path)
    key = cache_key(report.fingerprint, tokenizer)
    cache = tmp_path / "cache"
    real = corpus.tokenize_batches

    def killed(*a, **k):                       # dies after the first batch is written
        it = real(*a, **k)
        yield next(it)
        raise KeyboardInterrupt
    monkeypatch.setattr(corpus, "tokenize_batches", killed)
    with pytest.raises(KeyboardInterrupt):
        TokenStore.get_or_build(docs, tokenizer, cache, key, batch_size=2)
    monkeypatch.setattr(corpus, "tokenize_batches", real)
    # an interrupted build leaves nothing that looks complete (fileio.atomic_dir cleans up)
    assert not (cache / key).exists() and not (cache / f"{key}.tmp").exists()
    (cache / f"{key}.tmp").mkdir(parents=True)  # what a kill -9 would leave: a partial build
    (cache / f"{key}.tmp" / "tokens.bin").write_bytes(b"\0" * 4)
    (cache / key).mkdir()                       # and a final folder without its manifest
    (cache / key / "tokens.bin").write_bytes(b"\0" * 8)
    with pytest.raises(CorpusError, match="not a complete token store"):
        TokenStore.open(cache, key)

    store = TokenStore.get_or_build(docs, tokenizer, cache, key)
    fresh = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    assert [store.doc_tokens(i).tolist() for i in range(len(docs))] == fresh
    assert not (cache / f"{key}.tmp").exists()


def test_cache_key_follows_corpus_and_tokenizer(tmp_path, tokenizer):
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer,
                                    eos_token="<|endoftext|>")
    other.add_tokens(["harbourmaster"])
    assert cache_key("fp", tokenizer) == cache_key("fp", tokenizer)
    assert cache_key("fp", tokenizer) != cache_key("fp2", tokenizer)
    assert cache_key("fp", tokenizer) != cache_key("fp", other)


def test_tokenization_progress_bar(tokenizer, capsys):
    batches = list(corpus.tokenize_batches(SENTENCES, tokenizer, batch_size=2, progress=True))
    assert sum(map(len, batches)) == len(SENTENCES)
    assert "tokenizing" in capsys.readouterr().err


# ---------------------------------------------------------------- chunking

def test_token_chunks_from_store_and_documents(tmp_path, tokenizer):
    docs, report = corpus_docs(tmp_path)
    store = TokenStore.build(docs, tokenizer, tmp_path / "cache",
                             cache_key(report.fingerprint, tokenizer))
    chunks = chunk_documents(store, "tokens", 7, tokenizer=tokenizer)
    assert chunks == chunk_documents(docs, "tokens", 7, tokenizer=tokenizer)
    assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
    for i, doc in enumerate(docs):
        mine = [c for c in chunks if c.doc_index == i]
        n = len(store.doc_tokens(i))
        assert [(c.start, c.end) for c in mine] == [(s, min(s + 7, n)) for s in range(0, n, 7)]
        assert all(c.doc_id == doc.id and c.unit == "tokens" for c in mine)
        assert mine[-1].end - mine[-1].start <= 7
        assert mine[0].text == tokenizer.decode(store.doc_tokens(i)[:7].tolist())
    assert [c.doc_index for c in chunks] == sorted(c.doc_index for c in chunks)


def test_char_chunks_follow_nextlong_group_segments():
    text = "aaaa\nbbb\ncc\n" + "x" * 25 + "\nddd\n\n\neeeee"
    # segments: aaaa[0,4) bbb[5,8) cc[9,11) x*25[12,37) ddd[38,41) ''[42,42) ''[43,43) eeeee[44,49)
    # running length of the joined group, separators included: "aaaa\nbbb" = 8, + "\ncc" = 11
    assert group_segments(text, 10) == [(0, 8), (9, 11), (12, 37), (38, 43), (44, 49)]
    assert group_segments("ddd\n\n\neeee", 10) == [(0, 10)]        # exactly 10 fits
    assert group_segments("a" * 10 + "\n\n\n" + "b" * 10, 10) == [(0, 10), (13, 23)]  # blank run
    docs = [Document("t", text, "mem", None), Document("u", "short one", "mem", None)]
    chunks = chunk_documents(docs, "chars", 10)
    assert [c.text for c in chunks] == ["aaaa\nbbb", "cc", "x" * 25, "ddd\n\n", "eeeee",
                                        "short one"]
    assert [(c.chunk_id, c.doc_index, c.doc_id) for c in chunks][-2:] == [(4, 0, "t"),
                                                                          (5, 1, "u")]
    for c in chunks:
        assert docs[c.doc_index].text[c.start:c.end] == c.text and c.unit == "chars"
        assert len(c.text) <= 10 or "\n" not in c.text      # only a lone paragraph is oversized
    assert [c.text for c in chunk_documents(docs[:1], "chars", 100)] == [text]


def test_chunking_argument_errors(tmp_path, tokenizer):
    docs, report = corpus_docs(tmp_path, n=2)
    store = TokenStore.build(docs, tokenizer, tmp_path / "c", "k1")
    with pytest.raises(CorpusError, match="'chars' needs the documents' text"):
        chunk_documents(store, "chars", 10)
    with pytest.raises(CorpusError, match="needs the tokenizer"):
        chunk_documents(docs, "tokens", 10)
    with pytest.raises(CorpusError, match="positive integer"):
        chunk_documents(docs, "chars", 0)
    with pytest.raises(CorpusError, match="'tokens' or 'chars'"):
        chunk_documents(docs, "words", 10)
