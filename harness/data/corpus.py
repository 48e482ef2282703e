"""The corpus and the chunk store: readers, a tokenized cache, chunking (DESIGN §2).

**Readers.** ``read_corpus(path, text_field, id_field, on_error)`` reads one of

- a ``.jsonl`` file (one JSON object per line; ``id_field=None`` numbers documents
  ``<file stem>-<line>``),
- a ``.parquet`` file (``<file stem>-<row>`` when ``id_field`` is None),
- a folder of ``.txt`` files, read recursively (id = the path relative to the folder),
- a folder saved with ``datasets.save_to_disk`` (``<folder>:<split>`` picks a split of a
  ``DatasetDict``; a dict with one split needs none),
- ``hf:<name>[:split]``, a hub dataset (online only: with ``HF_HUB_OFFLINE=1`` it is an error
  that asks for a local path),

and returns ``(documents, CorpusReport)``. ``Document.line`` is the 1-based line (jsonl) or
row (parquet, datasets) of the record, None for a .txt file. The arguments are exactly the
fields of ``config.CorpusSpec``, so ``read_corpus(**spec.corpus.model_dump())`` works
(``"sandbox"`` is resolved by ``harness.sandbox``, which writes a ``corpus.jsonl``).

Bad input never passes silently: malformed JSON, a line that is not an object, a missing text
or id field, a non-string text, an empty or whitespace-only text, non-UTF-8 bytes and duplicate
ids and a document over ``max_doc_chars`` characters are each a ``CorpusError`` naming file,
line and what was expected (``on_error='raise'``),
or are skipped and counted per reason in the report (``on_error='skip'``). Zero usable
documents is always an error. Blank lines in a jsonl file are not records; they are counted.

**Token store.** ``TokenStore.build`` tokenizes every document once (batched, no special
tokens) into ``<cache_dir>/<key>/``: ``tokens.bin`` (uint32, memory-mapped on open),
``offsets.npy`` (int64, n_docs + 1), ``ids.json`` and ``manifest.json``. It writes into
``<key>.tmp`` and renames that folder when complete, so a killed build is never read back as
complete (a folder without its manifest is incomplete and is rebuilt). ``cache_key`` hashes the
corpus fingerprint (path, size, mtime_ns of the files read, text/id fields) with the
tokenizer's full serialisation (vocab, merges, normalizer, pre-tokenizer). One builder per key
at a time.

**Chunks.** ``chunk_documents`` cuts documents into ``Chunk`` s in one of two units; see its
docstring for the units and NExtLong's character granularity.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np

from harness.fileio import atomic_dir, check_key, hub_offline, sha256_file

log = logging.getLogger(__name__)

SUPPORTED = ("a .jsonl file, a .parquet file, a folder of .txt files, a folder saved with "
             "datasets.save_to_disk (or '<folder>:<split>'), or 'hf:<name>[:split]' (online)")
MAX_EXAMPLES = 5           # example locations kept per skip reason
READ_BATCH = 1024          # rows per parquet / datasets batch
TOKENIZE_BATCH = 256       # documents per tokenizer call
PROGRESS_MIN_DOCS = 1000   # show a progress bar from this many documents (progress=None)
STORE_VERSION = 1
STORE_FILES = ("tokens.bin", "offsets.npy", "ids.json", "manifest.json")
TOKEN_DTYPE = np.dtype("<u4")   # uint32, little-endian on disk

# Skip reasons (CorpusReport.skipped keys).
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
NON_STRING_TEXT = "non_string_text"
EMPTY_TEXT = "empty_text"
NON_UTF8 = "non_utf8"
MISSING_ID = "missing_id"
BAD_ID = "bad_id"
DUPLICATE_ID = "duplicate_id"
TOO_LONG = "too_long"
BINARY = "binary"
# A document longer than this (characters) is refused: ours. A single enormous line is far more
# often a broken export (a whole corpus on one line, a binary blob) than one real document, and
# it would cost hours of embedding before anything failed.
MAX_DOC_CHARS = 4_000_000


class CorpusError(ValueError):
    """Corpus input or a token store that cannot be used; the message names the file, the line
    or row, and what was expected."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str            # the file (or dataset) it came from
    line: int | None       # 1-based line (jsonl) or row (parquet, datasets); None for .txt


@dataclass
class CorpusReport:
    """What ``read_corpus`` read and skipped; ``print(report.summary())`` for people."""
    path: str
    format: str = ""
    text_field: str = "text"
    id_field: str | None = "id"
    n_documents: int = 0
    blank_lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: list[tuple[str, int, int]] = field(default_factory=list)  # (path, size, mtime_ns)
    extra: list[str] = field(default_factory=list)   # e.g. a hub dataset's name and fingerprint

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def fingerprint(self) -> str:
        return corpus_fingerprint(self.files, self.text_field, self.id_field, self.extra)

    def summary(self) -> str:
        lines = [f"{self.path} ({self.format}): {self.n_documents} documents, "
                 f"{self.n_skipped} skipped"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  {reason}: {n} (e.g. {'; '.join(self.examples.get(reason, []))})")
        if self.blank_lines:
            lines.append(f"  blank lines ignored: {self.blank_lines}")
        return "\n".join(lines)


class Problems:
    """Raise on the first problem (``'raise'``) or count it per reason (``'skip'``)."""

    def __init__(self, on_error: Literal["raise", "skip"], report: CorpusReport):
        if on_error not in ("raise", "skip"):
            raise CorpusError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error, self.report = on_error, report

    def __call__(self, reason: str, where: str, message: str) -> None:
        if self.on_error == "raise":
            raise CorpusError(f"{where}: {message}")
        self.report.skipped[reason] = self.report.skipped.get(reason, 0) + 1
        examples = self.report.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(where)


def file_entry(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def corpus_fingerprint(files: Iterable[Sequence], text_field: str, id_field: str | None,
                       extra: Iterable[str] = ()) -> str:
    """sha256 over (path, size, mtime_ns) of every file read, the fields, and ``extra``."""
    blob = json.dumps({"files": [list(f) for f in files], "text_field": text_field,
                       "id_field": id_field, "extra": list(extra)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- record checks

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    names = {list: "an array", dict: "an object", bytes: "bytes (binary, not a string)"}
    return names.get(type(value), f"a {type(value).__name__}")


def _check_text(record: Mapping, where: str, text_field: str, problems: Problems) -> str | None:
    if text_field not in record:
        problems(MISSING_TEXT, where, f"missing field '{text_field}' (expected a string under "
                 f"'{text_field}'; keys present: {list(record)})")
        return None
    text = record[text_field]
    if not isinstance(text, str):
        problems(NON_STRING_TEXT, where, f"field '{text_field}' is {_type_name(text)} "
                 f"(expected a string under '{text_field}')")
        return None
    if not text.strip():
        problems(EMPTY_TEXT, where, f"empty document: field '{text_field}' is empty or "
                 f"whitespace only (expected non-empty text)")
        return None
    return text


def _check_id(record: Mapping, where: str, id_field: str, problems: Problems) -> str | None:
    expected = (f"expected a non-empty string or integer id under '{id_field}', or "
                f"id_field=None to number documents by line")
    if id_field not in record:
        problems(MISSING_ID, where, f"missing field '{id_field}' ({expected}; keys present: "
                 f"{list(record)})")
        return None
    value = record[id_field]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    got = "an empty string" if isinstance(value, str) else _type_name(value)
    problems(BAD_ID, where, f"field '{id_field}' is {got} ({expected})")
    return None


def _to_document(record: Mapping, where: str, default_id: str, source: str, line: int,
                 text_field: str, id_field: str | None, problems: Problems) -> Document | None:
    text = _check_text(record, where, text_field, problems)
    if text is None:
        return None
    doc_id = default_id if id_field is None else _check_id(record, where, id_field, problems)
    return None if doc_id is None else Document(doc_id, text, source, line)


def _decode(raw: bytes, line_of: Callable[[int], str], problems: Problems) -> str | None:
    """``raw`` as UTF-8; ``line_of(byte offset)`` names the location of a bad byte."""
    nul = raw.find(b"\x00")
    if nul >= 0:        # text never holds NUL bytes: a binary file (or a UTF-16 one)
        problems(BINARY, line_of(nul), f"binary data (a NUL byte at byte offset {nul}; "
                 f"expected UTF-8 text)")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems(NON_UTF8, line_of(exc.start), f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
                 f"at byte offset {exc.start}; expected UTF-8 text)")
        return None


# ---------------------------------------------------------------- readers

def read_jsonl(path: Path, text_field: str, id_field: str | None, problems: Problems
               ) -> Iterator[Document]:
    """One JSON object per line; line numbers are 1-based."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path} line {lineno}"
            line = _decode(raw, lambda _: where, problems)
            if line is None:
                continue
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                problems.report.blank_lines += 1
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems(MALFORMED_JSON, where, f"malformed JSON ({exc.msg} at column "
                         f"{exc.colno}; expected one JSON object per line)")
                continue
            if not isinstance(record, dict):
                problems(NOT_AN_OBJECT, where, f"a JSON line is {_type_name(record)} "
                         f"(expected a JSON object with a '{text_field}' field)")
                continue
            doc = _to_document(record, where, f"{path.stem}-{lineno}", str(path), lineno,
                               text_field, id_field, problems)
            if doc is not None:
                yield doc


def _columns(label: str, present: list[str], text_field: str, id_field: str | None
             ) -> list[str]:
    """The columns to read; a missing column is an error for every row, so it always raises."""
    wanted = [text_field] + ([id_field] if id_field is not None else [])
    for col in wanted:
        if col not in present:
            what = "a string column" if col == text_field else "an id column"
            hint = "" if col == text_field else ", or id_field=None to number rows"
            raise CorpusError(f"{label}: missing column '{col}' (expected {what} '{col}'"
                              f"{hint}; columns present: {present})")
    return wanted


def _read_rows(batches: Iterable[dict[str, list]], label: str, stem: str, text_field: str,
               id_field: str | None, problems: Problems) -> Iterator[Document]:
    row = 0
    for batch in batches:
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            row += 1
            doc = _to_document(dict(zip(keys, values)), f"{label} row {row}", f"{stem}-{row}",
                               label, row, text_field, id_field, problems)
            if doc is not None:
                yield doc


def read_parquet(path: Path, text_field: str, id_field: str | None, problems: Problems
                 ) -> Iterator[Document]:
    """Rows of a parquet file, read in batches; rows are numbered from 1."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file and the expectation
        raise CorpusError(f"{path}: not a readable parquet file ({exc})") from exc
    cols = _columns(str(path), pf.schema_arrow.names, text_field, id_field)
    batches = (b.to_pydict() for b in pf.iter_batches(batch_size=READ_BATCH, columns=cols))
    yield from _read_rows(batches, str(path), path.stem, text_field, id_field, problems)


def _line_at(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def read_txt_folder(folder: Path, problems: Problems) -> Iterator[Document]:
    """Every ``*.txt`` below ``folder`` (sorted); id = the relative path, line = None."""
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise CorpusError(f"{folder}: no .txt files in this folder (expected a folder of .txt "
                          f"files or a datasets.save_to_disk folder)")
    for path in files:
        raw = path.read_bytes()
        text = _decode(raw, lambda at: f"{path} line {_line_at(raw, at)}", problems)
        if text is None:
            continue
        text = text.lstrip("\ufeff")
        if not text.strip():
            problems(EMPTY_TEXT, str(path), "empty document: the file is empty or whitespace "
                     "only (expected non-empty text)")
            continue
        yield Document(path.relative_to(folder).as_posix(), text, str(path), None)


def _pick_split(data, label: str, split: str | None):
    from datasets import DatasetDict

    if not isinstance(data, DatasetDict):
        if split is not None:
            raise CorpusError(f"{label}: split '{split}' given, but this is a single Dataset")
        return data
    if split is None and len(data) == 1:
        return next(iter(data.values()))
    if split is None or split not in data:
        problem = "no split given" if split is None else f"no split {split!r}"
        raise CorpusError(f"{label}: {problem} (expected one of the splits {list(data)}, "
                          f"as '<path>:<split>')")
    return data[split]


def read_dataset(ds, label: str, text_field: str, id_field: str | None, problems: Problems
                 ) -> Iterator[Document]:
    """Rows of a ``datasets.Dataset``; rows are numbered from 1."""
    cols = _columns(label, list(ds.column_names), text_field, id_field)
    batches = ds.select_columns(cols).iter(batch_size=READ_BATCH)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(label.removeprefix("hf:")).name)
    yield from _read_rows(batches, label, stem, text_field, id_field, problems)


def _hub_offline() -> bool:
    return hub_offline()


def load_hub_dataset(spec: str):
    """``hf:<name>[:split]`` through ``datasets.load_dataset`` (online only)."""
    name, _, split = spec.removeprefix("hf:").partition(":")
    if not name:
        raise CorpusError(f"{spec}: expected 'hf:<name>[:split]'")
    if _hub_offline():
        raise CorpusError(f"{spec}: HF_HUB_OFFLINE is set, so a hub dataset cannot be loaded; "
                          f"the dataset must be given as a local path ({SUPPORTED})")
    from datasets import load_dataset

    return _pick_split(load_dataset(name, split=split or None), spec, split or None)


# ---------------------------------------------------------------- read_corpus

def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def _local_split(path: str) -> tuple[Path, str | None]:
    """``<folder>:<split>`` for a saved DatasetDict; otherwise the path as is."""
    head, sep, split = path.rpartition(":")
    if sep and not Path(path).exists() and Path(head).is_dir() and _is_saved_dataset(Path(head)):
        return Path(head), split
    return Path(path), None


def _dataset_files(ds, folder: Path | None) -> list[tuple[str, int, int]]:
    files = [Path(c["filename"]) for c in ds.cache_files]
    if folder is not None and not files:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [file_entry(p) for p in files]


def _open_source(path: str, text_field: str, id_field: str | None, problems: Problems
                 ) -> Iterator[Document]:
    """Pick the reader for ``path`` and record the files it reads in the report."""
    report = problems.report
    if path.startswith("hf:"):
        ds = load_hub_dataset(path)
        report.format, report.files = "hub dataset", _dataset_files(ds, None)
        report.extra = [path, getattr(ds, "_fingerprint", "")]
        return read_dataset(ds, path, text_field, id_field, problems)
    p, split = _local_split(path)
    if p.is_dir() and _is_saved_dataset(p):
        from datasets import load_from_disk

        ds = _pick_split(load_from_disk(str(p)), path, split)
        report.format, report.files = "saved dataset", _dataset_files(ds, p)
        report.extra = [f"split={split}"]
        return read_dataset(ds, path, text_field, id_field, problems)
    if p.is_dir():
        report.format = "txt folder"
        report.files = [file_entry(f) for f in sorted(p.rglob("*.txt")) if f.is_file()]
        return read_txt_folder(p, problems)
    if not p.exists():
        hint = " ('sandbox' is built by `policylong sandbox build`)" if path == "sandbox" else ""
        raise CorpusError(f"{path}: corpus not found{hint}; expected {SUPPORTED}")
    readers = {".jsonl": ("jsonl", read_jsonl), ".parquet": ("parquet", read_parquet)}
    if p.suffix.lower() not in readers:
        raise CorpusError(f"{path}: unsupported corpus format '{p.suffix or p.name}'; "
                          f"supported: {SUPPORTED}")
    report.format, reader = readers[p.suffix.lower()]
    report.files = [file_entry(p)]
    return reader(p, text_field, id_field, problems)


def _location(doc: Document, fmt: str) -> str:
    if doc.line is None:
        return doc.source
    return f"{doc.source} {'line' if fmt == 'jsonl' else 'row'} {doc.line}"


def read_corpus(path: str | Path, text_field: str = "text", id_field: str | None = "id",
                on_error: Literal["raise", "skip"] = "raise", max_doc_chars: int = MAX_DOC_CHARS
                ) -> tuple[list[Document], CorpusReport]:
    """All usable documents of ``path`` in order, and what was read and skipped."""
    path = str(path)
    report = CorpusReport(path=path, text_field=text_field, id_field=id_field)
    problems = Problems(on_error, report)
    docs: list[Document] = []
    first_seen: dict[str, str] = {}
    for doc in _open_source(path, text_field, id_field, problems):
        where = _location(doc, report.format)
        if len(doc.text) > max_doc_chars:
            problems(TOO_LONG, where, f"a document of {len(doc.text):,} characters (expected at "
                     f"most corpus.max_doc_chars = {max_doc_chars:,}: split it into documents, "
                     f"or raise the limit)")
            continue
        if doc.id in first_seen:
            problems(DUPLICATE_ID, where, f"duplicate id {doc.id!r} (expected unique ids; "
                     f"first seen at {first_seen[doc.id]})")
            continue
        first_seen[doc.id] = where
        docs.append(doc)
    report.n_documents = len(docs)
    if not docs:
        raise CorpusError(f"{path}: no usable documents (expected at least one non-empty "
                          f"'{text_field}')\n{report.summary()}")
    if report.n_skipped:
        log.warning("%s", report.summary())
    return docs, report


# ---------------------------------------------------------------- tokenizer and cache key

def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation (vocab, merges, normalizer, pre-tokenizer,
    added tokens) for fast tokenizers; of its class and vocab for slow ones."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)     # per-call settings, not the tokenizer
        state.pop("padding", None)
    else:
        state = {"class": type(tokenizer).__name__,
                 "vocab": sorted(tokenizer.get_vocab().items())}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def cache_key(corpus_fp: str, tokenizer) -> str:
    """A folder name for the token store of this corpus fingerprint and tokenizer."""
    blob = f"v{STORE_VERSION}:{corpus_fp}:{tokenizer_fingerprint(tokenizer)}"
    return "tok-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


def tokenize_batches(texts: Sequence[str], tokenizer, batch_size: int = TOKENIZE_BATCH,
                     progress: bool | None = None) -> Iterator[list[list[int]]]:
    """Token ids of ``texts`` (no special tokens), one list per batch; a progress bar shows
    from ``PROGRESS_MIN_DOCS`` documents when ``progress`` is None."""
    from tqdm import tqdm

    if progress is None:
        progress = len(texts) >= PROGRESS_MIN_DOCS
    with tqdm(total=len(texts), unit="doc", desc="tokenizing", disable=not progress) as bar:
        for s in range(0, len(texts), batch_size):
            batch = list(texts[s:s + batch_size])
            enc = tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                            verbose=False)
            bar.update(len(batch))
            yield enc["input_ids"]


def _check_key(key: str) -> str:
    return check_key(key, CorpusError)


def _write_tokens(path: Path, texts: Sequence[str], tokenizer, batch_size: int,
                  progress: bool | None) -> tuple[np.ndarray, str]:
    """Append every document's tokens to ``path``; the offsets and the file's sha256."""
    offsets, digest = [0], hashlib.sha256()
    with path.open("wb") as f:
        for batch in tokenize_batches(texts, tokenizer, batch_size, progress):
            flat = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in batch])
            if flat.size and (flat.min() < 0 or flat.max() >= 2 ** 32):
                raise CorpusError(f"token ids outside uint32 from {tokenizer.name_or_path!r}")
            data = flat.astype(TOKEN_DTYPE).tobytes()
            f.write(data)
            digest.update(data)
            for ids in batch:
                offsets.append(offsets[-1] + len(ids))
    return np.asarray(offsets, dtype=np.int64), digest.hexdigest()


# ---------------------------------------------------------------- the token store

class TokenStore:
    """Every document's token ids in one memory-mapped uint32 array (``doc_tokens(i)``)."""

    def __init__(self, folder: Path, tokens: np.ndarray, offsets: np.ndarray, ids: list[str],
                 manifest: dict):
        self.folder, self.tokens, self.offsets = folder, tokens, offsets
        self.ids, self.manifest = ids, manifest
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc_tokens(self, i: int) -> np.ndarray:
        """Document ``i``'s token ids: a read-only view into the memory map, no copy."""
        if not 0 <= i < len(self.ids):
            raise IndexError(f"document index {i} outside a store of {len(self.ids)}")
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def doc_index(self, doc_id: str) -> int:
        if self._index is None:
            self._index = {d: i for i, d in enumerate(self.ids)}
        try:
            return self._index[doc_id]
        except KeyError:
            raise KeyError(f"no document {doc_id!r} in the token store {self.folder}") from None

    @staticmethod
    def folder_for(cache_dir: str | Path, key: str) -> Path:
        return Path(cache_dir) / _check_key(key)

    @classmethod
    def open(cls, cache_dir: str | Path, key: str | None = None) -> "TokenStore":
        """Memory-map a complete store: ``cache_dir`` itself, or ``cache_dir/key``."""
        folder = cls.folder_for(cache_dir, key) if key is not None else Path(cache_dir)
        manifest = _read_manifest(folder)
        n_docs, n_tokens = manifest["n_docs"], manifest["n_tokens"]
        offsets = np.load(folder / "offsets.npy")
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        size = (folder / "tokens.bin").stat().st_size
        if (len(offsets) != n_docs + 1 or len(ids) != n_docs or int(offsets[-1]) != n_tokens
                or size != n_tokens * TOKEN_DTYPE.itemsize):
            raise CorpusError(f"{folder}: token store files disagree with manifest.json "
                              f"(n_docs={n_docs}, n_tokens={n_tokens}; found {len(offsets)} "
                              f"offsets, {len(ids)} ids, {size} bytes); delete the folder")
        tokens = (np.memmap(folder / "tokens.bin", dtype=TOKEN_DTYPE, mode="r",
                            shape=(n_tokens,)) if n_tokens else np.zeros(0, TOKEN_DTYPE))
        return cls(folder, tokens, offsets, ids, manifest)

    @classmethod
    def build(cls, docs: Sequence[Document], tokenizer, cache_dir: str | Path, key: str,
              batch_size: int = TOKENIZE_BATCH, progress: bool | None = None) -> "TokenStore":
        """Tokenize into ``cache_dir/<key>.tmp``, then rename it to ``cache_dir/<key>``."""
        folder = cls.folder_for(cache_dir, key)
        _check_docs(docs)
        t0 = time.perf_counter()
        with atomic_dir(folder) as tmp:           # a killed build leaves no complete-looking folder
            offsets, sha = _write_tokens(tmp / "tokens.bin", [d.text for d in docs], tokenizer,
                                         batch_size, progress)
            np.save(tmp / "offsets.npy", offsets)
            (tmp / "ids.json").write_text(json.dumps([d.id for d in docs]), encoding="utf-8")
            manifest = _manifest(key, len(docs), int(offsets[-1]), tokenizer, sha,
                                 time.perf_counter() - t0)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        log.info("token store %s: %d documents, %d tokens in %.1f s", folder, len(docs),
                 manifest["n_tokens"], manifest["build_seconds"])
        return cls.open(folder)

    @classmethod
    def get_or_build(cls, docs: Sequence[Document], tokenizer, cache_dir: str | Path, key: str,
                     batch_size: int = TOKENIZE_BATCH, progress: bool | None = None
                     ) -> "TokenStore":
        """Open the complete store of ``key`` (checked against ``docs`` and ``tokenizer``), or
        build it; ``key`` should come from ``cache_key``."""
        from harness.fileio import locked

        folder = cls.folder_for(cache_dir, key)
        with locked(folder, f"the token store {folder}"):
            if not (folder / "manifest.json").is_file():
                return cls.build(docs, tokenizer, cache_dir, key, batch_size, progress)
        store = cls.open(folder)
        store.check_matches(docs, tokenizer, key)
        log.info("reusing token store %s", folder)
        return store

    def check_matches(self, docs: Sequence[Document], tokenizer, key: str) -> None:
        m = self.manifest
        problems = [f"key is {m['key']!r}, expected {key!r}"] if m["key"] != key else []
        if m["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
            problems.append("it was built with another tokenizer")
        if self.ids != [d.id for d in docs]:
            problems.append(f"its {len(self.ids)} document ids differ from the "
                            f"{len(docs)} given")
        if problems:
            raise CorpusError(f"{self.folder}: {'; '.join(problems)}; the key must identify "
                              f"the corpus and the tokenizer (use cache_key, or delete it)")

    def verify(self) -> None:
        """Check ``tokens.bin`` against the manifest's sha256 (reads the whole file)."""
        if sha256_file(self.folder / "tokens.bin") != self.manifest["tokens_sha256"]:
            raise CorpusError(f"{self.folder / 'tokens.bin'}: sha256 differs from "
                              f"manifest.json (the file was changed); delete the folder")


def _check_docs(docs: Sequence[Document]) -> None:
    if not docs:
        raise CorpusError("no documents to tokenize (expected at least one)")
    dup = [d for d, n in Counter(d.id for d in docs).items() if n > 1]
    if dup:
        raise CorpusError(f"duplicate document ids {dup[:5]} (expected unique ids)")


def _manifest(key: str, n_docs: int, n_tokens: int, tokenizer, sha: str, seconds: float
              ) -> dict:
    return {"version": STORE_VERSION, "key": key, "n_docs": n_docs, "n_tokens": n_tokens,
            "dtype": "uint32", "tokenizer": getattr(tokenizer, "name_or_path", "") or "",
            "vocab_size": len(tokenizer),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "tokens_sha256": sha, "build_seconds": round(seconds, 3)}


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise CorpusError(f"{folder}: not a complete token store (no manifest.json; a build "
                          f"that was interrupted leaves none; expected a folder written by "
                          f"TokenStore.build)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("version") != STORE_VERSION:
        raise CorpusError(f"{path}: store version {manifest.get('version')!r}, expected "
                          f"{STORE_VERSION}; delete the folder to rebuild it")
    missing = [f for f in STORE_FILES if not (folder / f).is_file()]
    if missing:
        raise CorpusError(f"{folder}: missing {missing} (expected {list(STORE_FILES)})")
    return manifest


# ---------------------------------------------------------------- chunks

@dataclass(frozen=True)
class Chunk:
    chunk_id: int      # position in the chunk list: documents in order, then position
    doc_id: str
    doc_index: int     # position of the document in the corpus / token store
    start: int         # [start, end) in ``unit``: token offsets, or character offsets
    end: int
    unit: str          # "tokens" or "chars"
    text: str


def group_segments(text: str, size: int) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of NExtLong's meta-chunks of ``text``.

    As NExtLong's released ``group_segments``: split at ``'\\n'`` and greedily concatenate the
    segments in order, joined with ``'\\n'``, while the running length stays ``<= size``
    characters; a single paragraph longer than ``size`` becomes its own, oversized chunk. The
    running length is that of the joined text, separators included (ours: the exact rule for
    separators is not documented), so ``text[start:end]`` is the chunk and only an oversized
    paragraph exceeds ``size``. Whitespace-only groups (runs of blank lines) are dropped.
    """
    spans: list[tuple[int, int]] = []
    start = end = -1
    pos = 0
    for segment in text.split("\n"):
        seg_start, seg_end = pos, pos + len(segment)
        pos = seg_end + 1
        if start < 0:
            start, end = seg_start, seg_end
        elif seg_end - start <= size:
            end = seg_end
        else:
            spans.append((start, end))
            start, end = seg_start, seg_end
    spans.append((start, end))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def token_spans(n_tokens: int, size: int) -> list[tuple[int, int]]:
    """Contiguous windows of ``size`` tokens; the last one may be shorter."""
    return [(s, min(s + size, n_tokens)) for s in range(0, n_tokens, size)]


def _char_pieces(docs: Sequence[Document], size: int) -> Iterator[tuple]:
    for i, doc in enumerate(docs):
        for a, b in group_segments(doc.text, size):
            yield i, doc.id, a, b, doc.text[a:b]


def _doc_token_ids(source, tokenizer, batch_size: int, progress: bool | None) -> Iterator[tuple]:
    """``(doc index, doc id, token ids)`` from a store (checked against the tokenizer) or by
    tokenizing documents."""
    if isinstance(source, TokenStore):
        if source.manifest["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
            raise CorpusError(f"{source.folder}: the token store was built with another "
                              f"tokenizer than the one given to decode its chunks")
        yield from ((i, source.ids[i], source.doc_tokens(i)) for i in range(len(source)))
        return
    i = 0
    for batch in tokenize_batches([d.text for d in source], tokenizer, batch_size, progress):
        for ids in batch:
            yield i, source[i].id, np.asarray(ids, dtype=np.int64)
            i += 1


def _token_pieces(source, size: int, tokenizer, batch_size: int, progress: bool | None
                  ) -> Iterator[tuple]:
    for i, doc_id, ids in _doc_token_ids(source, tokenizer, batch_size, progress):
        spans = token_spans(len(ids), size)
        texts = tokenizer.batch_decode([ids[a:b].tolist() for a, b in spans])
        for (a, b), text in zip(spans, texts):
            yield i, doc_id, a, b, text


def chunk_documents(source: "Sequence[Document] | TokenStore",
                    unit: Literal["tokens", "chars"] = "tokens", size: int = 256, *,
                    tokenizer=None, batch_size: int = TOKENIZE_BATCH,
                    progress: bool | None = None) -> list[Chunk]:
    """Cut every document into chunks; chunk ids follow document order, then position.

    - ``unit='tokens'`` (the default, ``RetrievalSpec.chunk_unit``): contiguous windows of
      ``size`` tokens of each document (the last one shorter); ``start``/``end`` are token
      offsets into the document's token ids (no special tokens) and ``text`` is
      ``tokenizer.decode`` of the window. Needs ``tokenizer``; ``source`` is a ``TokenStore``
      (no re-tokenization) or documents (tokenized here).
    - ``unit='chars'``: NExtLong's meta-chunks (``group_segments``); ``start``/``end`` are
      character offsets into ``Document.text`` and ``text == doc.text[start:end]``. NExtLong's
      code measures granularity in characters, not tokens: s = 2048 characters in its released
      chunking.py. Needs the documents' text (a ``TokenStore`` keeps only token ids).
    """
    if not isinstance(size, int) or size <= 0:
        raise CorpusError(f"chunk size must be a positive integer, got {size!r}")
    if unit == "chars":
        if isinstance(source, TokenStore):
            raise CorpusError("chunk_unit 'chars' needs the documents' text; pass the "
                              "documents, not a TokenStore (it keeps only token ids)")
        pieces = _char_pieces(source, size)
    elif unit == "tokens":
        if tokenizer is None:
            raise CorpusError("chunk_unit 'tokens' needs the tokenizer (to tokenize or decode)")
        pieces = _token_pieces(source, size, tokenizer, batch_size, progress)
    else:
        raise CorpusError(f"chunk unit must be 'tokens' or 'chars', got {unit!r}")
    return [Chunk(n, doc_id, i, a, b, unit, text)
            for n, (i, doc_id, a, b, text) in enumerate(pieces)]
