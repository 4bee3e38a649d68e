"""Saving the decoder's template state off the event loop, incrementally, atomically.

The event loop only asks the decoder what changed (:meth:`decoders.netflow.decoder.FlowDecoder.state_changes`:
references
to the changed templates, a step per change); :class:`StateWriter` encodes and writes on a thread of its own:

* the template log (``decoder.state_file``, per worker ``.worker<i>``): records appended and fsynced, each with a
  CRC, so a crash mid-append costs only the record being written; when the log holds more than twice what is live
  (plus :data:`COMPACT_SLACK`), it is rewritten from the writer's mirror of the live records (temporary file,
  fsync, rename): the log stays within a constant of the template budget, so loading it at start is bounded too;
* the held data (``<state_file>.held``): data sets waiting for a template, rewritten whole when they changed
  (bounded by ``decoder.pending_max_bytes``).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from decoders.errors import SavedStateError
from decoders.netflow import saved_state as saved
from decoders.netflow.persistence import StateChanges
from storage import durable

COMPACT_SLACK = 1 << 20
"""Bytes of superseded records a log may carry before it is rewritten (beyond as many as it has live)."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`storage.durable.write_atomic`); the state is saved again soon,
    so a directory that refuses fsync is no error."""
    durable.write_atomic(path, data, dir_sync_errors=False)


class StateWriter:
    """The template log and held-data file of one process, written by one thread (:meth:`submit`)."""

    def __init__(self, path: Path, legacy: Path | None = None) -> None:
        self.path = path
        self.held_path = path.with_name(path.name + ".held")
        self.legacy = legacy
        """A JSON state file of flowmed before the log (loaded by the caller), deleted once the log is written."""
        self.mirror = saved.StateMirror()
        self.file_bytes = 0
        self.compact_next = True  # until the log on disk is known to be whole
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="flowmed-state")
        self._future: Future[int] | None = None

    def load(self) -> tuple[bytes | None, bytes | None]:
        """Read the own log (into the mirror too) and held-data file; returns their bytes (None: no file).

        A log cut short (a crash while appending) or not a log at all (an older format) is rewritten whole at the
        first save.
        """
        log = held = None
        if self.path.is_file():
            log = self.path.read_bytes()
            try:
                valid = self.mirror.load(log)
            except SavedStateError:
                self.mirror = saved.StateMirror()
                valid = -1
            self.file_bytes = len(log)
            self.compact_next = valid != len(log)
        if self.held_path.is_file():
            held = self.held_path.read_bytes()
        return log, held

    @property
    def busy(self) -> bool:
        """A save is still being written."""
        return self._future is not None and not self._future.done()

    def submit(self, changes: StateChanges) -> Future[int]:
        """Write ``changes`` on the writer's thread (saves run one at a time, in order)."""
        self._future = self._executor.submit(self.write, changes)
        return self._future

    def write(self, changes: StateChanges) -> int:
        """Encode and write ``changes`` (the writer's thread); returns the bytes written."""
        recs = changes.records()
        if changes.full is not None:
            self.mirror = saved.StateMirror()
            self.compact_next = True
        for key, record in recs:
            self.mirror.apply(key, record)
        written = 0
        if self.compact_next or self.file_bytes + sum(len(r or b"") for _, r in recs) > \
                2 * self.mirror.bytes + COMPACT_SLACK:
            self.compact_next = True  # stays set if this write fails: the next one rewrites everything again
            data = self.mirror.snapshot()
            write_atomic(self.path, data)
            self.file_bytes = written = len(data)
            self.compact_next = False
        elif recs:
            data = b"".join(record if record is not None else saved.delete_record(key) for key, record in recs)
            try:
                with open(self.path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                self.compact_next = True  # a partial append: rewrite the log whole next time
                raise
            self.file_bytes += len(data)
            written = len(data)
        held = changes.held_file()
        if held is not None:
            write_atomic(self.held_path, held)
            written += len(held)
        if self.legacy is not None:
            with contextlib.suppress(OSError):
                self.legacy.unlink()
            self.legacy = None
        return written

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the save being written, if any (raises what it raised)."""
        if self._future is not None:
            self._future.result(timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
