"""Packing token groups into fixed-length rows with group boundaries (one shared collator)."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


def pack_stream(groups: Iterable[list[int]], seq_len: int, eos_id: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rows of ``seq_len`` tokens from a stream of groups, each group followed by EOS.

    Yields ``(input_ids, position_ids)``; position ids restart at 0 where a group starts. A group
    that does not fit the rest of a row continues at the start of the next row as a new span
    (pre-training style). Stage datasets keep groups whole instead (``harness.construction.stage_data``).
    """
    ids = np.empty(seq_len, dtype=np.int64)
    pos = np.empty(seq_len, dtype=np.int64)
    fill = 0
    for g in groups:
        toks = list(g) + [eos_id]
        off = 0
        while off < len(toks):
            take = min(seq_len - fill, len(toks) - off)
            ids[fill:fill + take] = toks[off:off + take]
            pos[fill:fill + take] = np.arange(take)
            fill += take
            off += take
            if fill == seq_len:
                yield ids.copy(), pos.copy()
                fill = 0
