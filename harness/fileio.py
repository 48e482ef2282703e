"""Small helpers shared by every writer: file digests and atomic folder writes, locks, and the
thread share of processes run side by side."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
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
    return atomic_write_lines(path, [text])


def atomic_write_lines(path: Path | str, lines) -> Path:
    """Write ``lines`` (strings, newlines included) to ``path`` through a temporary file and a
    rename: a reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)
    return path


def check_key(key: str, error: type[Exception] = ValueError) -> str:
    """A cache key must be a plain folder name (and never look like a build in progress)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=-]*", key) or key.endswith(".tmp"):
        raise error(f"cache key {key!r} must be a folder name of letters, digits and "
                    f"'._=-' (not ending in '.tmp')")
    return key


def threads_each(processes: int) -> int:
    """CPU threads for each of ``processes`` working side by side on this machine: the cores
    this process may use (its affinity, which a container or ``taskset`` can narrow below
    ``os.cpu_count()``), split evenly, at least one each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


def hub_offline() -> bool:
    """Whether the Hugging Face hub may not be reached (``HF_HUB_OFFLINE`` or
    ``HF_DATASETS_OFFLINE`` set to 1/true/yes/on): the one rule for every data loader."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


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
