"""A bounded on-disk spool of Arrow IPC files: batches an output has taken but not yet delivered.

Each batch is one file ``<seq>.<table>.<batch_id>.<rows>.arrow`` (Arrow IPC file format, LZ4-compressed), written
to a ``.tmp`` name, fsynced (``spool.fsync = "always"``), renamed and the directory fsynced, so a file with its final
name is complete. The spool therefore survives a restart and a SIGKILL of flowmed (with ``fsync = "never"``: a crash
of flowmed, not of the host). Entries are replayed in ``seq`` order.

When the spool would exceed ``max_bytes`` the ``full_policy`` applies: ``drop_oldest`` deletes the oldest entries
(never the one being delivered), ``drop_newest`` refuses the new batch, ``block`` waits until the output has drained
enough. Every dropped row is counted (``dropped_rows`` by reason) and logged; nothing is lost silently.

A file that cannot be read (truncated, corrupt, foreign) is moved to ``corrupt/`` with an error and counted, never a
crash; leftover ``.tmp`` files (a write cut by a crash, never acknowledged) are removed at start.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from storage.durable import fsync_dir

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{16})\.([A-Za-z_][A-Za-z0-9_]*)\.(\d+)\.(\d+)\.arrow$")
_OPTIONS = ipc.IpcWriteOptions(compression="lz4")


class SpoolCorrupt(Exception):
    """A spool file could not be read back."""


class SpoolFull(Exception):
    """The spool had no room for a batch (with the drop_newest or block policy)."""


@dataclass(frozen=True, order=True)
class SpoolEntry:
    """One spooled batch (sorted by ``seq``: the replay order)."""

    seq: int
    table: str
    batch_id: int
    rows: int
    path: Path
    size: int
    created: float = field(default=0.0, compare=False)
    """Wall-clock time the batch was spooled (the file's mtime for batches found at start)."""


class Spool:
    """A directory of spooled batches with a size bound; thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, full_policy: str = "drop_oldest",
                 fsync: str = "always", *, block_timeout_s: float | None = None) -> None:
        if full_policy not in ("drop_oldest", "drop_newest", "block"):
            raise ValueError(f"unknown spool full_policy {full_policy!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.full_policy = full_policy
        self.fsync = fsync == "always"
        self.block_timeout_s = block_timeout_s
        self.dropped_rows: Counter[str] = Counter()
        """Rows dropped, by reason: ``full_oldest``, ``full_newest``, ``too_large``, ``corrupt``, ``write_error``."""
        self.dropped_batches: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._entries: dict[int, SpoolEntry] = {}
        self._busy: set[int] = set()
        self._closed = False
        self._next_seq = 1
        self._scan()

    # ---- state ----------------------------------------------------------------------------------------------------
    def _scan(self) -> None:
        for tmp in self.dir.glob("*.tmp"):
            log.warning("spool: removing %s, a write cut short by a crash (it was never acknowledged)", tmp.name)
            tmp.unlink(missing_ok=True)
        for path in sorted(self.dir.glob("*.arrow")):
            m = _NAME.match(path.name)
            if not m:
                self._quarantine_path(path, "unrecognised file name")
                continue
            seq, table, batch_id, rows = int(m[1]), m[2], int(m[3]), int(m[4])
            st = path.stat()
            self._entries[seq] = SpoolEntry(seq, table, batch_id, rows, path, st.st_size, st.st_mtime)
            self._next_seq = max(self._next_seq, seq + 1)
        if self._entries:
            log.info("spool: %d batches (%d rows, %d bytes) to replay from %s", len(self._entries), self.rows,
                     self.size_bytes, self.dir)

    @property
    def size_bytes(self) -> int:
        with self._cond:
            return sum(e.size for e in self._entries.values())

    @property
    def rows(self) -> int:
        with self._cond:
            return sum(e.rows for e in self._entries.values())

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def entries(self) -> list[SpoolEntry]:
        """Spooled batches in replay order."""
        with self._cond:
            return sorted(self._entries.values())

    def oldest(self) -> SpoolEntry | None:
        """The next batch to deliver, marked busy (``drop_oldest`` will not remove it) until removed or released."""
        with self._cond:
            if not self._entries:
                return None
            entry = self._entries[min(self._entries)]
            self._busy.add(entry.seq)
            return entry

    def head(self, max_rows: int, coalesce: bool = True) -> list[SpoolEntry]:
        """The next batches to deliver together, marked busy: the oldest, plus (with ``coalesce``) the batches of
        the same table right after it while the rows stay within ``max_rows``."""
        with self._cond:
            ordered = sorted(self._entries.values())
            if not ordered:
                return []
            group = [ordered[0]]
            rows = ordered[0].rows
            for e in ordered[1:] if coalesce else ():
                if e.table != group[0].table or rows + e.rows > max_rows:
                    break
                group.append(e)
                rows += e.rows
            self._busy.update(e.seq for e in group)
            return group

    def release(self, entry: SpoolEntry) -> None:
        """Delivery of ``entry`` failed for now: it stays, and may be dropped by the full policy again."""
        with self._cond:
            self._busy.discard(entry.seq)

    def wait_for_entries(self, timeout: float) -> bool:
        """Wait until the spool holds something (or ``timeout``); True when it does."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._entries) or self._closed, timeout) and bool(self._entries)

    def wait_empty(self, timeout: float) -> bool:
        """Wait until every spooled batch has been delivered (or ``timeout``); True when empty."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._entries, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- write ----------------------------------------------------------------------------------------------------
    def append(self, table: str, batch_id: int, batch: pa.RecordBatch | pa.Table, *,
               link_from: Path | None = None) -> SpoolEntry | None:
        """Spool ``batch`` durably; returns its entry, or None when the full policy dropped it (counted, logged).

        ``link_from``: a durable file of exactly this batch in the spool's format (:func:`write_ipc`; the sink's
        handoff journal) to hard-link instead of writing the batch again; when the link fails (another file system)
        the batch is written. Raises ``OSError`` when the disk refuses the write (disk full, read-only): the caller
        decides what to do.
        """
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
        final = self.dir / f"{seq:016d}.{table}.{batch_id}.{batch.num_rows}.arrow"
        tmp = final.with_name(final.name + ".tmp")
        try:
            if not self._link(link_from, tmp):
                self._write(tmp, table, batch_id, batch)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        size = tmp.stat().st_size
        if size > self.max_bytes:
            tmp.unlink(missing_ok=True)
            self._drop(table, batch.num_rows, "too_large", f"batch {batch_id} of {size} bytes exceeds spool.max_bytes")
            return None
        if not self._make_room(size, table, batch.num_rows, batch_id):
            tmp.unlink(missing_ok=True)
            return None
        os.replace(tmp, final)
        if self.fsync:
            fsync_dir(self.dir)
        entry = SpoolEntry(seq, table, batch_id, batch.num_rows, final, size, time.time())
        with self._cond:
            self._entries[seq] = entry
            self._cond.notify_all()
        return entry

    def _write(self, tmp: Path, table: str, batch_id: int, batch: pa.RecordBatch | pa.Table) -> None:
        write_ipc(tmp, table, batch_id, batch, fsync=self.fsync)

    @staticmethod
    def _link(source: Path | None, tmp: Path) -> bool:
        """Hard-link ``source`` as ``tmp``; False (nothing done) when there is no source or it cannot be linked."""
        if source is None:
            return False
        try:
            os.link(source, tmp)
        except OSError as exc:  # another file system, or the source is gone: write the batch instead
            log.debug("spool: cannot link %s (%s); writing the batch", source, exc)
            return False
        return True

    def _make_room(self, size: int, table: str, rows: int, batch_id: int) -> bool:
        deadline = None if self.block_timeout_s is None else time.monotonic() + self.block_timeout_s
        with self._cond:
            while sum(e.size for e in self._entries.values()) + size > self.max_bytes:
                if self.full_policy == "drop_newest":
                    self._drop(table, rows, "full_newest", f"spool full, batch {batch_id} dropped (drop_newest)")
                    return False
                if self.full_policy == "drop_oldest":
                    victims = [s for s in sorted(self._entries) if s not in self._busy]
                    if not victims:
                        self._drop(table, rows, "full_newest", f"spool full of in-flight batches, batch {batch_id} "
                                   "dropped")
                        return False
                    old = self._entries.pop(victims[0])
                    old.path.unlink(missing_ok=True)
                    self._drop(old.table, old.rows, "full_oldest",
                               f"spool full, oldest batch {old.batch_id} dropped (drop_oldest)")
                    continue
                # block: wait for the output to drain
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._closed or (remaining is not None and remaining <= 0):
                    self._drop(table, rows, "full_newest", f"spool full, batch {batch_id} dropped (block timed out)")
                    return False
                self._cond.wait(0.5 if remaining is None else min(0.5, remaining))
        return True

    def _drop(self, table: str, rows: int, reason: str, message: str) -> None:
        self.dropped_rows[reason] += rows
        self.dropped_batches[reason] += 1
        log.error("spool: %s: %d rows of table %s lost (total dropped %d)", message, rows, table,
                  sum(self.dropped_rows.values()))

    def count_dropped(self, table: str, rows: int, reason: str, message: str) -> None:
        """Count and log rows the caller had to drop (e.g. the disk refused the spool write)."""
        with self._cond:
            self._drop(table, rows, reason, message)

    # ---- read and remove ------------------------------------------------------------------------------------------
    def read(self, entry: SpoolEntry) -> pa.RecordBatch:
        """The batch of ``entry``; raises :class:`SpoolCorrupt` when the file cannot be read back."""
        return read_ipc(entry.path, entry.rows)

    def remove(self, entry: SpoolEntry) -> None:
        """``entry`` was delivered: delete it."""
        entry.path.unlink(missing_ok=True)
        with self._cond:
            self._entries.pop(entry.seq, None)
            self._busy.discard(entry.seq)
            self._cond.notify_all()

    def quarantine(self, entry: SpoolEntry, reason: str) -> None:
        """Move an unreadable or undeliverable entry to ``corrupt/``; its rows are counted as dropped."""
        with self._cond:
            self._entries.pop(entry.seq, None)
            self._busy.discard(entry.seq)
            self._drop(entry.table, entry.rows, "corrupt", f"{entry.path.name} set aside: {reason}")
            self._cond.notify_all()
        self._quarantine_path(entry.path, reason)

    def _quarantine_path(self, path: Path, reason: str) -> None:
        target = self.dir / "corrupt"
        target.mkdir(exist_ok=True)
        try:
            os.replace(path, target / path.name)
        except OSError as exc:
            log.error("spool: cannot move %s aside (%s); deleting it", path.name, exc)
            path.unlink(missing_ok=True)
        log.error("spool: %s moved to %s: %s", path.name, target, reason)


def write_ipc(path: Path, table: str, batch_id: int, batch: pa.RecordBatch | pa.Table, *, fsync: bool) -> None:
    """Write ``batch`` to ``path`` as an LZ4-compressed Arrow IPC file naming its table and batch id in the schema
    metadata (the format of spool files and of the sink's handoff journal); fsynced when ``fsync``. A table's chunks
    are written as they are (one IPC record batch each; :func:`read_ipc` reads them back as one batch)."""
    schema = batch.schema.with_metadata({**(batch.schema.metadata or {}), b"flowmed.table": table.encode(),
                                         b"flowmed.batch_id": str(batch_id).encode()})
    with open(path, "wb") as f:
        with ipc.new_file(f, schema, options=_OPTIONS) as writer:
            writer.write(batch.replace_schema_metadata(schema.metadata))
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_ipc(path: Path, rows: int) -> pa.RecordBatch:
    """The batch of a file written by :func:`write_ipc`; raises :class:`SpoolCorrupt` when it cannot be read back
    or does not hold ``rows`` rows."""
    try:
        reader = ipc.open_file(pa.BufferReader(path.read_bytes()))
        table = reader.read_all()
    except (OSError, pa.ArrowException) as exc:
        raise SpoolCorrupt(f"{path.name}: {exc}") from exc
    if table.num_rows != rows:
        raise SpoolCorrupt(f"{path.name}: {table.num_rows} rows, expected {rows}")
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
