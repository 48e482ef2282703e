"""Stage datasets: what a method builds for one stage, and what training reads.

On disk, a folder written under a temporary name and renamed when complete::

    input_ids.npy     int32 [rows, T]   packed rows of exactly T = target length tokens
    group_index.npy   int32 [rows, T]   the group each token belongs to; -1 = padding
    groups.jsonl      one line per group: provenance (root id, context chunks with role,
                      ΔI and similarity, anchor positions), its row and [start, end) in the row
    manifest.json     counts, budget, config hash, sha256 of every data file (written last)

A group (contexts + root, or one NExtLong document) is one attention span; position ids restart
at every group, so training can mask attention between groups (DESIGN §3 "Packing").
Determinism: the same groups in the same order give byte-identical files (sha256 in manifest).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from harness import faults
from harness.fileio import atomic_dir, sha256_file


@dataclass
class Group:
    tokens: list[int]
    provenance: dict[str, Any] = field(default_factory=dict)
    # ``refit(max_tokens) -> Group | None``: the same group rebuilt smaller by the method's
    # own rule (fewer contexts), or None; lets the packer fill a row's remaining room
    refit: Any = None


def pack_groups(groups: Iterable[Group], target_length: int, pad_id: int,
                token_budget: int | None = None):
    """First-fit packing in order: a group goes into the current row if it fits, else a new row.

    Groups longer than ``target_length`` are an error (methods cut their groups to fit). Stops
    once ``token_budget`` tokens of rows are filled (whole rows). Returns
    ``(input_ids, group_index, placed)`` where ``placed`` lists (group, row, start, end).
    """
    rows_ids: list[np.ndarray] = []
    rows_gid: list[np.ndarray] = []
    placed = []
    cur_ids = np.full(target_length, pad_id, dtype=np.int32)
    cur_gid = np.full(target_length, -1, dtype=np.int32)
    fill = 0
    max_rows = None if token_budget is None else max(1, token_budget // target_length)
    gid = 0
    for g in groups:
        n = len(g.tokens)
        if n == 0:
            continue
        if n > target_length:
            raise ValueError(f"group of {n} tokens exceeds the target length {target_length} "
                             f"(root {g.provenance.get('root_id')!r})")
        if fill + n > target_length:
            rows_ids.append(cur_ids)
            rows_gid.append(cur_gid)
            if max_rows is not None and len(rows_ids) >= max_rows:
                fill = 0
                break
            cur_ids = np.full(target_length, pad_id, dtype=np.int32)
            cur_gid = np.full(target_length, -1, dtype=np.int32)
            fill = 0
        cur_ids[fill:fill + n] = g.tokens
        cur_gid[fill:fill + n] = gid
        placed.append((g, len(rows_ids), fill, fill + n))
        fill += n
        gid += 1
    if fill > 0 and (max_rows is None or len(rows_ids) < max_rows):
        rows_ids.append(cur_ids)
        rows_gid.append(cur_gid)
    n_rows = len(rows_ids)
    placed = [p for p in placed if p[1] < n_rows]
    ids = np.stack(rows_ids) if rows_ids else np.zeros((0, target_length), np.int32)
    gids = np.stack(rows_gid) if rows_gid else np.zeros((0, target_length), np.int32)
    return ids, gids, placed


def loss_tokens_of(n_tokens: int) -> int:
    """Tokens of an attention span of ``n_tokens`` that carry loss under
    ``harness.training.loss.packed_labels``: every token but the span's last (whose target
    would be the next span's first token, padding, or past the row)."""
    return max(0, n_tokens - 1)


def _cut(g: Group, n: int) -> Group:
    """``g``'s first ``n`` tokens; its root span (``root_start``/``root_end``) clipped."""
    prov = {**g.provenance, "truncated_to": int(n)}
    for key in ("root_start", "root_end"):
        if key in prov:
            prov[key] = min(int(prov[key]), int(n))
    return Group(list(g.tokens[:n]), prov)


class Packer:
    """Packs groups into ``rows`` rows of ``target_length`` until exactly ``loss_budget``
    tokens carry loss (DESIGN §3 "A fair comparison": equal loss-carrying tokens per method).

    ``attention="group"``: each group is one attention span, kept whole, placed by best fit
    (the open row with the least room that still fits it; a new row while fewer than ``rows``
    are open); a group that fits nowhere is set aside (counted, never trained on).
    ``attention="row"``: the papers' "Standard" random concatenation: groups are concatenated
    into rows, cut at row ends, and each row is one attention span.

    The group that reaches the budget is cut to the tokens it needs. Once every row is open,
    a group that fits nowhere is rebuilt by its method's own rule for the largest room left
    (``Group.refit``: fewer contexts; ``provenance["refit_to"]``), or else fills the last
    quarter of a row at most with its head (``provenance["truncated_to"]``), so the budget is
    reachable whatever the group sizes; both are counted. So every method's stage holds exactly
    ``loss_budget`` loss tokens.
    Deterministic: the same groups in the same order give the same rows.
    """

    def __init__(self, target_length: int, rows: int, loss_budget: int, pad_id: int,
                 attention: str = "group"):
        if attention not in ("group", "row"):
            raise ValueError(f"attention must be 'group' or 'row', got {attention!r}")
        if loss_budget > rows * (target_length - 1):
            raise ValueError(f"a loss budget of {loss_budget:,} tokens cannot fit {rows} rows "
                             f"of {target_length} tokens")
        self.T, self.rows, self.budget, self.pad = target_length, rows, loss_budget, pad_id
        self.attention = attention
        self.fill: list[int] = []                  # tokens used per open row
        self.parts: list[list[tuple]] = []         # per row: (group, tokens, start, end)
        self.loss = 0
        self.set_aside = 0
        self.truncated = 0
        self.refitted = 0

    @property
    def done(self) -> bool:
        return self.loss >= self.budget

    def add(self, g: Group) -> bool:
        """Place ``g``; returns True once the budget is met."""
        if self.done:
            return True
        toks = np.asarray(g.tokens, dtype=np.int64)
        if toks.size == 0:
            return self.done
        if toks.size > self.T:
            raise ValueError(f"group of {toks.size} tokens exceeds the target length {self.T} "
                             f"(root {g.provenance.get('root_id')!r})")
        if self.attention == "row":
            self._add_streamed(g, toks)
        else:
            self._add_whole(g, toks)
        return self.done

    def _need(self) -> int:
        return self.budget - self.loss

    def _add_whole(self, g: Group, toks: np.ndarray) -> None:
        fits = [i for i, f in enumerate(self.fill) if f + toks.size <= self.T]
        if fits:
            row = min(fits, key=lambda i: (self.T - self.fill[i], i))
        elif len(self.fill) < self.rows:
            self.fill.append(0)
            self.parts.append([])
            row = len(self.fill) - 1
        else:
            # every row is open and none has room: the group rebuilt by its method's rule
            # to the largest room left (fewer contexts), else a nearly full row takes the
            # group's head (its last quarter at most), else it is set aside
            row = min(range(len(self.fill)), key=lambda i: (self.fill[i], i))
            gap = self.T - self.fill[row]
            smaller = g.refit(gap) if g.refit is not None and gap >= 2 else None
            if smaller is not None and 0 < len(smaller.tokens) <= gap:
                g = Group(smaller.tokens, {**smaller.provenance, "refit_to": int(gap)})
                toks = np.asarray(g.tokens, dtype=np.int64)
                self.refitted += 1
            elif 2 <= gap <= self.T // 4:
                toks = toks[:gap]
                g = _cut(g, gap)
                self.truncated += 1
            else:
                self.set_aside += 1
                return
        if loss_tokens_of(toks.size) > self._need():
            toks = toks[:self._need() + 1]
            g = _cut(g, toks.size)
            self.truncated += 1
        start = self.fill[row]
        self.parts[row].append((g, toks, start, start + toks.size))
        self.fill[row] += toks.size
        self.loss += loss_tokens_of(toks.size)

    def _add_streamed(self, g: Group, toks: np.ndarray) -> None:
        off = 0
        while off < toks.size and not self.done:
            if not self.fill or self.fill[-1] == self.T:
                if len(self.fill) == self.rows:
                    self.set_aside += 1
                    return
                self.fill.append(0)
                self.parts.append([])
            row = len(self.fill) - 1
            start = self.fill[row]
            take = min(self.T - start, toks.size - off)
            # loss: a row's span gains `take` tokens; its first token carries none
            gain = take - (1 if start == 0 else 0)
            if gain > self._need():
                take = self._need() + (1 if start == 0 else 0)
                gain = self._need()
                self.truncated += 1
            piece = toks[off:off + take]
            prov = dict(g.provenance)
            if off or take < toks.size:
                prov["piece"] = [int(off), int(off + take)]
            self.parts[row].append((Group(piece.tolist(), prov), piece, start, start + take))
            self.fill[row] += take
            self.loss += gain
            off += take

    def arrays(self):
        """``(input_ids, group_index, placed)`` as ``pack_groups`` returns them, groups in row
        and position order. The group index holds the attention span: the group's number
        (``group`` in groups.jsonl) under ``group``, the row's number under ``row`` (recorded
        as each piece's ``span``)."""
        ids = np.full((self.rows, self.T), self.pad, dtype=np.int32)
        gidx = np.full((self.rows, self.T), -1, dtype=np.int32)
        placed = []
        for r, parts in enumerate(self.parts):
            for g, toks, s, e in sorted(parts, key=lambda p: p[2]):
                ids[r, s:e] = toks
                if self.attention == "row":
                    gidx[r, s:e] = r
                    g = Group(g.tokens, {**g.provenance, "span": r})
                else:
                    gidx[r, s:e] = len(placed)
                placed.append((g, r, s, e))
        return ids, gidx, placed

    def summary(self) -> dict:
        n_real = int(sum(self.fill))
        return {"loss_tokens": int(self.loss), "pad_tokens": int(self.rows * self.T - n_real),
                "rows": int(self.rows), "rows_used": len(self.fill),
                "groups_set_aside": int(self.set_aside), "groups_truncated": int(self.truncated),
                "groups_refitted": int(self.refitted)}


def position_ids_from_groups(group_index: np.ndarray) -> np.ndarray:
    """Position ids restarting at 0 wherever the group changes (padding restarts too)."""
    gi = np.asarray(group_index)
    starts = np.ones_like(gi, dtype=bool)
    starts[..., 1:] = gi[..., 1:] != gi[..., :-1]
    idx = np.broadcast_to(np.arange(gi.shape[-1]), gi.shape)
    last_start = np.maximum.accumulate(np.where(starts, idx, 0), axis=-1)
    return (idx - last_start).astype(np.int64)


def write_stage_dataset(out_dir: Path, input_ids: np.ndarray, group_index: np.ndarray,
                        placed: list, manifest: dict[str, Any],
                        heldout: list[Group] | None = None) -> Path:
    with atomic_dir(out_dir) as tmp:
        _write_files(tmp, input_ids, group_index, placed, manifest, heldout or [])
    return Path(out_dir)


def _write_files(tmp: Path, input_ids: np.ndarray, group_index: np.ndarray, placed: list,
                 manifest: dict[str, Any], heldout: list[Group]) -> None:
    np.save(tmp / "input_ids.npy", np.ascontiguousarray(input_ids, dtype=np.int32))
    np.save(tmp / "group_index.npy", np.ascontiguousarray(group_index, dtype=np.int32))
    with (tmp / "groups.jsonl").open("w", encoding="utf-8") as f:
        for gid, (g, row, start, end) in enumerate(placed):
            rec = {"group": gid, "row": row, "start": start, "end": end, **g.provenance}
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    # groups held out from training (out-of-sample frontier loss gaps): tokens + provenance
    with (tmp / "heldout.jsonl").open("w", encoding="utf-8") as f:
        for g in heldout:
            f.write(json.dumps({"tokens": [int(t) for t in g.tokens], **g.provenance},
                               sort_keys=True) + "\n")
    faults.point("dataset-write")
    n_real = int((group_index >= 0).sum())
    man = dict(manifest)
    man.update({
        "rows": int(input_ids.shape[0]), "target_length": int(input_ids.shape[1]),
        "tokens": int(input_ids.size), "non_pad_tokens": n_real, "groups": len(placed),
        "heldout_groups": len(heldout),
        "sha256": {p: sha256_file(tmp / p) for p in ("input_ids.npy", "group_index.npy",
                                                 "groups.jsonl", "heldout.jsonl")},
    })
    digest = hashlib.sha256("".join(man["sha256"][k] for k in sorted(man["sha256"])).encode())
    man["dataset_sha256"] = digest.hexdigest()
    (tmp / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True))


class StageDataset:
    """Reader: validates the manifest, memory-maps the arrays, yields training rows."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        man = self.path / "manifest.json"
        if not man.exists():
            raise FileNotFoundError(f"{self.path} is not a complete stage dataset "
                                    f"(no manifest.json; an interrupted write is never read)")
        self.manifest = json.loads(man.read_text())
        self.input_ids = np.load(self.path / "input_ids.npy", mmap_mode="r")
        self.group_index = np.load(self.path / "group_index.npy", mmap_mode="r")
        if self.input_ids.shape != self.group_index.shape:
            raise ValueError(f"{self.path}: input_ids {self.input_ids.shape} and group_index "
                             f"{self.group_index.shape} differ")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def verify(self) -> None:
        """Re-hash every data file against the manifest (a corrupted copy fails here)."""
        for name, want in self.manifest["sha256"].items():
            got = sha256_file(self.path / name)
            if got != want:
                raise ValueError(f"{self.path / name}: sha256 {got[:12]}… does not match the "
                                 f"manifest's {want[:12]}…; delete {self.path} to rebuild it")

    def groups(self) -> list[dict]:
        with (self.path / "groups.jsonl").open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def heldout(self) -> list[dict]:
        """Groups held out from training: ``{"tokens", "root_start", "root_end",
        "anchors", "contexts", ...}`` (empty for datasets written without them)."""
        p = self.path / "heldout.jsonl"
        if not p.exists():
            return []
        with p.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, position_ids, pad)``, each ``[rows, T]``: what training reads."""
        gi = np.asarray(self.group_index)
        return (np.asarray(self.input_ids, dtype=np.int64), position_ids_from_groups(gi),
                gi < 0)
