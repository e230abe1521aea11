"""Files of a run folder: one writer at a time, and atomic writes under private temporary names.

**One writer per folder.** Two trainings into one ``--out`` used to interleave their logs
(``steps.csv`` with 420 rows for 240 steps) and rename each other's temporary files. A training
now holds ``OUT/.lock`` for its whole life; a second one fails at once, naming the holder's pid.
The lock is ``fcntl.flock``: the kernel drops it when the holder exits, however it exits (a
kill, ``os._exit``), so there is never a stale lock to clean up. The file itself stays (unlinking
it would let a third process lock a fresh inode while the second still holds the old one); it only
records the pid.

Where ``fcntl`` is missing (Windows) the lock is a no-op: documented, not emulated.

**Atomic writes.** :func:`atomic_write_bytes` writes to a temporary file in the target's folder
(same file system, so ``os.replace`` is atomic), fsyncs it and renames it over the target: a kill
mid-write never leaves a torn file. The temporary name is unique (``mkstemp``), never the fixed
``NAME.tmp`` that two writers would share and rename from under each other.

No torch here: ``experiment posthoc`` and ``export`` use it on machines that only score.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderInUse", "folder_lock", "holder", "in_use_message", "atomic_write_bytes", "atomic_write_text",
           "LOCK_NAME"]

LOCK_NAME = ".lock"


class FolderInUse(ValueError):
    """Another process holds the folder's lock (a ValueError: the CLIs print it as one line)."""


def _message(folder: Path, pid: str, what: str) -> str:
    who = f"pid {pid}" if pid else "pid unknown"
    return f"{folder} is in use by another {what} ({who}); wait for it or choose another --out"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "training") -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively for the ``with`` block, or raise :class:`FolderInUse` at once."""
    folder = Path(folder)
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise FolderInUse(_message(folder, _read_pid(path), what))
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # unlocking happens at close; an empty file means "free"
    finally:
        os.close(fd)


def holder(folder: str | os.PathLike) -> str | None:
    """The pid (as text, "" if unknown) of the process holding ``folder``'s lock, or None if free.

    A snapshot for checks made *before* starting work elsewhere (``experiment run`` checks every
    run folder before it truncates a log); the process doing the work still takes the lock."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read_pid(path)
    finally:
        os.close(fd)


def in_use_message(folder: str | os.PathLike, pid: str, what: str = "training") -> str:
    return _message(Path(folder), pid, what)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import: os.umask can only be read by setting it, which would race with threads
_UMASK = _umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, through a private temporary file beside it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
