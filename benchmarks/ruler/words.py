"""The words RULER draws from: adjective-noun needle keys (niah) and the common-words vocabulary
(cwe), both from wonderwords 3.0.0's lists, shipped as package data in ``data/`` (one word a
line; see ``data/README.md`` and ``data/LICENSE-wonderwords``). An installed ``wonderwords`` is
never read, so the words are the same on every machine.

``ADJECTIVES``, ``NOUNS`` and ``VERBS`` (tuples, in the lists' order) are read on first use."""
from __future__ import annotations

import random
from functools import lru_cache
from importlib import resources

# module attribute -> file in data/
WORD_FILES = {"ADJECTIVES": "adjectives.txt", "NOUNS": "nouns.txt", "VERBS": "verbs.txt"}


@lru_cache(maxsize=None)
def word_list(name: str) -> tuple[str, ...]:
    """One shipped list: ``"ADJECTIVES"``, ``"NOUNS"`` or ``"VERBS"``."""
    path = resources.files("benchmarks.ruler") / "data" / WORD_FILES[name]
    return tuple(path.read_text(encoding="utf-8").splitlines())


def __getattr__(name: str) -> tuple[str, ...]:
    if name in WORD_FILES:
        return word_list(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def random_word_key(rng: random.Random) -> str:
    """A uniform draw from the adjective-noun keys ``f"{adj}-{noun}"``.

    RULER materialises ``sorted(set(...))`` of the adjective x noun keys and calls
    ``random.choice``; we draw by index over the 912 x 6,782 product, without building the
    6.2M-string list (the key a given RNG state maps to differs from RULER's). The adjective list
    holds "wet" and "nasty" twice, so their keys are drawn twice as often as in RULER's 910 x
    6,782 distinct keys; every other key is equally likely."""
    adjectives, nouns = word_list("ADJECTIVES"), word_list("NOUNS")
    i = rng.randrange(len(adjectives) * len(nouns))
    return f"{adjectives[i // len(nouns)]}-{nouns[i % len(nouns)]}"


@lru_cache(maxsize=4)
def cwe_vocabulary(seed: int) -> tuple[str, ...]:
    """``sorted(set(nouns + adjs + verbs))`` shuffled with ``random.Random(seed)`` (8,166 words).

    RULER falls back to sampling ``english_words.json`` (a 8.5 MB LFS file) when a length needs
    more distinct words than this; we cap at this list instead (as lm-eval's RULER does)."""
    words = sorted(set(word_list("NOUNS") + word_list("ADJECTIVES") + word_list("VERBS")))
    random.Random(seed).shuffle(words)
    return tuple(words)
