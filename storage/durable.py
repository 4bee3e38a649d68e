"""Durable writes: the fsync of a directory, directories created durably and files replaced atomically.

A rename, create or unlink survives power loss only once the directory holding it is fsynced; every writer of
flowmed that must not lose or half-write a file (the store, the spool, the handoff journal, saved decoder state,
IPDR baselines) goes through these helpers, so there is one way to do it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename or unlink in it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str | os.PathLike[str]) -> None:
    """``os.makedirs(path, exist_ok=True)``, fsyncing the parent of every directory it creates."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip(os.sep)) or "."
    makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(parent)


def write_atomic(path: Path, data: bytes, *, dir_sync_errors: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename: a crash leaves the old or the new file.

    The parent directory is created if missing. Without ``dir_sync_errors`` a failing fsync of the directory is
    ignored (the file is in place; only its survival of a power cut is less sure), for state that is saved again
    soon anyway.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if dir_sync_errors:
        fsync_dir(path.parent)
    else:
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)
