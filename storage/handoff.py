"""The sink's handoff journal: a batch is made durable once, before any output gets it.

With several outputs (the Parquet store and the ClickHouse spool) the sink hands a batch to one after the other; a
SIGKILL between the two would leave the batch in one output and never in the other. So the sink's writer first
records the batch here (``<batch_id>.<table>.<rows>.arrow``, the spool's Arrow IPC format: written to a ``.tmp``
name, fsynced, renamed, directory fsynced), then gives it to each output, then removes the record. At start, every
batch still recorded is given again to every output (:meth:`storage.outputs.Output.replay`), which takes only
what it lacks: the store skips the hour files it has, the ClickHouse output skips a batch still in its spool and
checks the server before inserting one it may have delivered. A crash at any instant therefore ends with every
output holding every batch any output got, each once.

The ClickHouse output links the journal file into its spool instead of writing the batch a second time, so with
both outputs the batch is still written to disk twice (journal and store), as before. A record that cannot be read
back (cut short by a crash of the host with ``spool.fsync = "never"``) is moved to ``corrupt/`` and counted.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from storage.clickhouse.spool import read_ipc, write_ipc
from storage.durable import fsync_dir, makedirs_durable

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{20})\.([A-Za-z_][A-Za-z0-9_]*)\.(\d+)\.arrow$")
CORRUPT = "corrupt"


@dataclass(frozen=True, order=True)
class JournalEntry:
    """One recorded batch (sorted by batch id: the order the sink cut them)."""

    batch_id: int
    table: str
    rows: int
    path: Path


class HandoffJournal:
    """A directory of batches handed to the outputs but not yet acknowledged by all of them.

    Used by one writer thread at a time (the sink's); ``path`` is also called by the outputs from that thread.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.fsync = fsync
        self.set_aside = 0
        """Records moved to ``corrupt/`` because they could not be read back."""
        makedirs_durable(self.dir)
        for tmp in self.dir.glob("*.tmp"):  # a record cut short by a crash: no output was given its batch yet
            log.warning("handoff: removing %s, a journal write cut short by a crash", tmp.name)
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _name(table: str, batch_id: int, rows: int) -> str:
        return f"{batch_id:020d}.{table}.{rows}.arrow"

    def record(self, table: str, batch_id: int, batch: pa.RecordBatch | pa.Table) -> Path:
        """Make ``batch`` durable under its id before any output gets it; raises OSError when the disk refuses."""
        final = self.dir / self._name(table, batch_id, batch.num_rows)
        tmp = final.with_name(final.name + ".tmp")
        try:
            write_ipc(tmp, table, batch_id, batch, fsync=self.fsync)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            fsync_dir(self.dir)
        return final

    def path(self, table: str, batch_id: int, rows: int) -> Path | None:
        """The durable record of this batch, if there is one (an output may hard-link it instead of copying)."""
        p = self.dir / self._name(table, batch_id, rows)
        return p if p.exists() else None

    def remove(self, table: str, batch_id: int, rows: int) -> None:
        """Every output has the batch: forget it. (Not fsynced: a record that reappears after a power loss is only
        replayed into outputs that already hold it, which they skip.)"""
        (self.dir / self._name(table, batch_id, rows)).unlink(missing_ok=True)

    def entries(self) -> list[JournalEntry]:
        """Recorded batches in batch id order; files with foreign names are moved to ``corrupt/``."""
        out = []
        for p in sorted(self.dir.glob("*.arrow")):
            m = _NAME.match(p.name)
            if not m:
                self._move_aside(p, "unrecognised file name")
                continue
            out.append(JournalEntry(int(m[1]), m[2], int(m[3]), p))
        return sorted(out)

    def read(self, entry: JournalEntry) -> pa.RecordBatch:
        """The batch of ``entry``; raises :class:`storage.clickhouse.spool.SpoolCorrupt` when it cannot be read back."""
        return read_ipc(entry.path, entry.rows)

    def set_aside_entry(self, entry: JournalEntry, reason: str) -> None:
        """Move an unreadable record to ``corrupt/`` (its rows are logged as lost to the outputs that lack them)."""
        self._move_aside(entry.path, reason)

    def _move_aside(self, path: Path, reason: str) -> None:
        target = self.dir / CORRUPT
        target.mkdir(exist_ok=True)
        try:
            os.replace(path, target / path.name)
        except OSError as exc:
            log.error("handoff: cannot move %s aside (%s); deleting it", path.name, exc)
            path.unlink(missing_ok=True)
        self.set_aside += 1
        log.error("handoff: %s moved to %s: %s", path.name, target, reason)

