"""Small file helpers shared by every writer: file digests and atomic folder writes."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(out_dir: Path | str) -> Iterator[Path]:
    """Yield ``<out_dir>.tmp`` (emptied) to write into; on success replace ``out_dir`` with it.
    An interrupted write leaves only the ``.tmp`` folder, never a complete-looking one."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except (OSError, ValueError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # disk full, file too large, read-only (numpy reports a short write as ValueError)
        if isinstance(exc, OSError) or "requested and" in str(exc):
            raise OSError(getattr(exc, "errno", None) or errno.ENOSPC,
                          f"could not write {out_dir} ({getattr(exc, 'strerror', None) or exc}"
                          f"); nothing was left behind") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def locked(path: Path | str, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (``flock``: released when the holder exits,
    even by ``kill -9``). A second process waits, saying for whom, then finds the first one's
    finished artifacts, so two runs of one spec share work instead of corrupting it."""
    import fcntl
    import sys

    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            print(f"[lock] waiting for process {holder}, which holds {what or path}",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
