"""One daemon per store: an exclusive ``flock`` on ``<store.path>/flowmed.lock`` for the daemon's whole life.

Two daemons on one store would both write its Parquet files, template state, spool and bindings; the second one is
refused at start with a message naming the store and the holder's pid instead. The lock belongs to the single
process or, with ``service.workers > 1``, to the supervisor (its workers run under it). The kernel drops the lock
when the process ends, however it ends, so a crash leaves nothing stale to clean up; the file itself stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "flowmed.lock"


class StoreLocked(OSError):
    """Another flowmed holds the store's lock."""

    def __str__(self) -> str:
        return str(self.args[0])


class StoreLock:
    """The store's lock (:meth:`acquire` raises :class:`StoreLocked` when another process holds it)."""

    def __init__(self, store_path: str | os.PathLike[str]) -> None:
        self.path = Path(store_path) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid into the file (raises OSError when the store cannot be created)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreLocked(f"the store {self.path.parent} is in use by another flowmed (pid {holder}, holding "
                              f"{self.path}): stop it first, or give this one its own store.path") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (also done by the kernel when the process ends)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
