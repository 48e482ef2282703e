"""The words RULER draws from: adjective-noun needle keys (niah) and the common-words vocabulary
(cwe), both from wonderwords' lists (shipped in ``_wordlists``)."""
from __future__ import annotations

import random
from functools import lru_cache

from benchmarks.ruler._wordlists import ADJECTIVES, NOUNS, VERBS


def random_word_key(rng: random.Random) -> str:
    """A uniform draw from the adjective-noun keys ``f"{adj}-{noun}"``.

    RULER materialises ``sorted(set(...))`` of all 912 x 6,782 keys (all distinct) and calls
    ``random.choice``; we draw the same uniform distribution by index, without building the
    6.2M-string list (the key a given RNG state maps to differs from RULER's)."""
    i = rng.randrange(len(ADJECTIVES) * len(NOUNS))
    return f"{ADJECTIVES[i // len(NOUNS)]}-{NOUNS[i % len(NOUNS)]}"


@lru_cache(maxsize=4)
def cwe_vocabulary(seed: int) -> tuple[str, ...]:
    """``sorted(set(nouns + adjs + verbs))`` shuffled with ``random.Random(seed)`` (8,166 words).

    RULER falls back to sampling ``english_words.json`` (a 8.5 MB LFS file) when a length needs
    more distinct words than this; we cap at this list instead (as lm-eval's RULER does)."""
    words = sorted(set(NOUNS + ADJECTIVES + VERBS))
    random.Random(seed).shuffle(words)
    return tuple(words)
