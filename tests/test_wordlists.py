"""The wonderwords word lists shipped as package data (benchmarks/ruler/data) and HELMET's word
keys drawn from them whatever is installed."""
from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

import pytest

from benchmarks import helmet_recall as H
from benchmarks.ruler import words
from benchmarks.ruler.common import TooShort

# sha256 of "\n".join(list) for wonderwords 3.0.0's lists, computed from the Python tuples that
# shipped them before (benchmarks/ruler/_wordlists.py), so the move to text files changed no word.
EXPECTED = {
    "ADJECTIVES": (912, "a1d78b64addb8621f7d82f2fde67b11e6a7bdfbfa3b455b0fc5779fc781d4bea"),
    "NOUNS": (6782, "d2e7b4a3fe536cfbe2aeb4790ee6d4f64f52d5fffba73067526ac7f564b6f4aa"),
    "VERBS": (1042, "0ee563820008ca422e0e222963b4efe2ec4acb8e7143029ff089e3ba6970e613"),
}
ALL_SHA256 = "0b2eaa607efc026b556bf308a5ff518dbb0e68dda9fc138594761569bfc1d1cb"  # adj+nouns+verbs


def _sha(seq) -> str:
    return hashlib.sha256("\n".join(seq).encode("utf-8")).hexdigest()


def test_word_lists_are_wonderwords_3_0_0():
    for name, (n, sha) in EXPECTED.items():
        got = getattr(words, name)
        assert isinstance(got, tuple) and len(got) == n and _sha(got) == sha, name
        assert got is words.word_list(name)                        # read once, cached
    assert _sha(words.ADJECTIVES + words.NOUNS + words.VERBS) == ALL_SHA256
    assert len(words.cwe_vocabulary(42)) == 8166
    with pytest.raises(AttributeError):
        words.ADVERBS  # noqa: B018


def test_word_lists_ship_as_package_data():
    data = resources.files("benchmarks.ruler") / "data"
    for f in ("adjectives.txt", "nouns.txt", "verbs.txt", "LICENSE-wonderwords", "README.md"):
        assert (data / f).is_file(), f
    assert "MIT License" in (data / "LICENSE-wonderwords").read_text(encoding="utf-8")
    tomllib = pytest.importorskip("tomllib")      # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml")
                              .read_text(encoding="utf-8"))
    assert "data/*" in pyproject["tool"]["setuptools"]["package-data"]["benchmarks.ruler"]


class _WordTokenizer:
    """One token a whitespace-separated word: enough for HELMET's sizing."""

    def __call__(self, text: str) -> dict:
        return {"input_ids": text.split()}


ESSAY = tuple("The quick brown fox jumps over the lazy dog. It was not amused! Was it? "
              "Mr. Smith said so, and Dr. Jones agreed.".split()) * 40


def _recall_samples() -> dict:
    words.word_list.cache_clear()       # a list read while wonderwords was in reach must not stay
    tok = _WordTokenizer()
    return {name: H.generate_niah(name, tok, 1024, num_samples=3,
                                  essay=ESSAY if name == "ruler_niah_mv" else None)
            for name in ("ruler_niah_mk_2", "ruler_niah_mv")}


def _fake_wonderwords(root: Path) -> None:
    """An importable ``wonderwords`` whose lists hold words the shipped ones do not."""
    pkg = root / "wonderwords"
    (pkg / "assets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f, w in (("adjectivelist", "zorpish"), ("nounlist", "glimwump"), ("verblist", "frob")):
        (pkg / "assets" / f"{f}.txt").write_text(f"{w}\n{w}x\n")


def test_helmet_keys_do_not_depend_on_wonderwords(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wonderwords", None)         # not importable
    without = _recall_samples()

    _fake_wonderwords(tmp_path)
    monkeypatch.delitem(sys.modules, "wonderwords")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wonderwords  # noqa: F401 - the fake is importable now
    with_fake = _recall_samples()
    monkeypatch.delitem(sys.modules, "wonderwords")
    words.word_list.cache_clear()

    assert with_fake == without
    nouns = set(words.NOUNS)
    for name, recs in without.items():
        for r in recs:
            key = r["query"]
            assert "zorpish" not in r["context"] and "glimwump" not in r["context"]
            assert any(key.startswith(a + "-") and key[len(a) + 1:] in nouns
                       for a in words.ADJECTIVES), (name, key)


def test_helmet_uses_rulers_sizing_error_and_essay_reader(tmp_path):
    assert issubclass(H.LengthTooSmall, TooShort)
    with pytest.raises(TooShort, match="ruler_niah_mk_2: length 60 cannot hold"):
        H.generate_niah("ruler_niah_mk_2", _WordTokenizer(), 60, num_samples=1, reserve=10)
    essay = tmp_path / "essays.json"
    essay.write_text('{"text": "One.  Two\\nthree."}')
    assert H.essay_words(essay) == ("One.", "Two", "three.")
