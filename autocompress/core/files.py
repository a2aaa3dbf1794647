"""File locks that serialise work between processes sharing a run folder, the pid file that
keeps one search per run folder, and atomic writes.

``flock`` locks are held by the open file, so the kernel releases them when a process dies: a
killed worker never leaves a lock behind (unlike a lock *file* whose existence is the lock).
They work across machines on NFSv4 (Linux emulates ``flock`` with byte-range locks there).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RunLockedError

logger = logging.getLogger(__name__)


@contextmanager
def file_lock(path: Path, *, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Blocks until the lock is free; ``waiting`` is logged once if another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one process per run folder is all it can do there.
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logger.info(waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that readers (other workers) see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PidLock:
    """One process per run folder: holds ``path`` with this process's pid for the ``with``
    block, and refuses (:class:`RunLockedError`) while another live process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> PidLock:
        pid = live_pid(self.path)
        if pid is not None and pid != os.getpid():
            raise RunLockedError(
                f"Another search (pid {pid}) is running in {self.path.parent}. "
                "Wait for it or stop it, or use another run name."
            )
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def live_pid(path: Path) -> int | None:
    """The pid written in ``path`` if that process is alive, else None (also without a file)."""
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    return pid if pid and pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
