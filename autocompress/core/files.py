"""File locks that serialise work between processes sharing a run folder, the run lock that
keeps one search (or a group of workers) per run folder, and atomic writes.

``flock`` locks are held by the open file, so the kernel releases them when a process dies: a
killed worker never leaves a lock behind (unlike a lock *file* whose existence is the lock).
They work across machines on NFSv4 (Linux emulates ``flock`` with byte-range locks there).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
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


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends
    without an error, so readers (and a run killed mid-write) see the old or the new file, never
    half of one. The temporary file keeps ``path``'s suffix, for writers that go by it."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` so that readers (other workers) see the old or the new file, never half."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class RunLock:
    """Who may run in a run folder, for as long as the run lasts: a single-process search holds
    ``path`` exclusively, ``autocompress worker`` processes hold it shared (many workers, no
    search beside them). A kernel lock (``flock``), so two processes started at the same instant
    cannot both get it, and a killed process never leaves it behind. The exclusive holder writes
    its pid and host into the file for the message that refuses the next one.
    """

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the pid in the file is all it can check there
            self._refuse_if_held_by_a_live_pid()
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(self._held_message()) from None
        self._fd = fd
        if not self.shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            if not self.shared:
                os.ftruncate(self._fd, 0)  # the file names the holder only while it holds it
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def _held_message(self) -> str:
        folder = self.path.parent
        holder = self._holder()
        if self.shared:
            return (
                f"A search ({holder or 'another process'}) is running in {folder}. Wait for it or "
                "stop it before starting workers on this run."
            )
        if holder is not None:
            return (
                f"Another search ({holder}) is running in {folder}. Wait for it or stop it, or "
                "use another run name."
            )
        return (
            f"`autocompress worker` processes are running in {folder}. Wait for them or stop "
            "them, or use another run name."
        )

    def _holder(self) -> str | None:
        """ "pid P on H" when the file names a live exclusive holder (or one on another host,
        whose pid cannot be checked from here), else None."""
        try:
            pid_text, host = self.path.read_text().split()[:2]
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        alive = host != socket.gethostname() or pid_alive(pid)
        return f"pid {pid} on {host}" if alive else None

    def _refuse_if_held_by_a_live_pid(self) -> None:
        if self._holder() is not None:
            raise RunLockedError(self._held_message())
        if not self.shared:
            self.path.write_text(f"{os.getpid()} {socket.gethostname()}\n")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
