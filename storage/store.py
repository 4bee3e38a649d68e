"""The embedded store: one Parquet dataset per table, partitioned by hour, written atomically.

Layout: ``<path>/<table>/date=YYYY-MM-DD/hour=HH/<batch_id>.parquet`` (UTC, by the table's ``time_column``; the
batch id is zero-padded to 20 digits so names sort in time order). Readers (``flowmed query`` through chDB, in any
number of processes) glob ``*.parquet`` and so only ever see complete files:

* A write goes to ``<name>.parquet.<pid>.tmp`` in the partition directory, is fsynced, renamed, and the directory
  fsynced. Writing the same batch id again replaces the file, so a retried batch never counts twice.
* Compaction merges a partition's small files older than ``compact_after_s`` into ``<first>-<last>.parquet``
  (first and last batch id it holds). It is made crash-safe by a journal, ``_compaction.json`` in the partition:

  1. the merged data goes to ``<target>.tmp`` and is fsynced;
  2. the journal (target and source names) is written atomically;
  3. the sources are renamed to ``*.parquet.replaced`` (invisible to readers);
  4. the target is renamed into place;
  5. the ``.replaced`` files and then the journal are removed.

  Readers never see a source and the target together, so they never double-count. On start,
  :meth:`ParquetStore.recover` finishes a journal whose target is in place (step 4 done) and rolls any other back.
  A concurrent query may miss the few sources for the instant between steps 3 and 4, or find a file it listed
  gone (the query engine then runs it again). An unfinished merge output (no journal yet) is deleted at start: its
  sources are intact. Compaction runs in one process only (the housekeeper: worker 0), in a background thread.
* Retention drops whole hour partitions older than a per-table number of days (``retention_days``; the daemon's store
  takes them from the config through :func:`retention_setting`, ``store.flows_retention_days`` for flows).
* At start, stray ``*.tmp`` files (whose writing process is gone) and Parquet files that are truncated or unreadable
  are moved to ``<path>/quarantine/`` (keeping their relative path) and logged; they never stop the store. Only the
  partitions changed since the last maintenance checkpoint are examined (all of them on the first start).
* A merged file lists the batch ids it holds in its footer (``flowmed.batch_ids``), so writing a batch id again after
  its file was compacted is recognised and skipped: a write is idempotent per batch id for the life of the data.
  :meth:`ParquetStore.replay` (the sink's handoff journal after a crash) writes only the hour files a batch lacks.
* Column layout (:func:`parquet_options`, the same for writes and compaction): fixed-width columns (times, counters,
  addresses) are BYTE_STREAM_SPLIT-encoded without a dictionary, strings dictionary-encoded, min/max statistics kept
  only for the columns queries filter on (times, addresses, strings). Encoding flow rows is the collector's largest
  single CPU cost after mediation: this layout cuts it by about 40 % against Arrow's defaults (dictionary and
  statistics on every column) for files within about 15 % of the same size; ``byte_stream_split=False`` writes the
  older layout that Parquet readers from before 2024 understand.

Over 500 lines on purpose: writes, recovery, compaction and retention are one crash protocol over the same partition
directories (the journal, the ``.replaced`` and temporary names, the quarantine, one lock), and each step is checked
against the others; they read best in one class. The names and Parquet options are :mod:`storage.layout`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from decoders.schema import TABLES, Table
from storage.durable import fsync_dir, makedirs_durable
from storage.layout import (
    CHECKPOINT,
    CHECKPOINT_MARGIN_S,
    HOUR_MS,
    JOURNAL,
    QUARANTINE,
    SOURCES_KEY,
    TRASH,
    check_compression,
    check_parquet,
    file_name,
    hour_of_partition,
    id_range,
    parquet_options,
    partition_of,
    tmp_name,
    writer_alive,
)
from storage.outputs import Rows, conform
from storage.settings import StorageSettings

log = logging.getLogger(__name__)


@dataclass
class StoreStats:
    """Counters of the store's housekeeping (plain attributes for the collector's metrics)."""

    files_written: int = 0
    compactions: int = 0
    files_compacted: int = 0
    partitions_dropped: int = 0
    quarantined: int = 0
    recovered_journals: int = 0
    duplicate_writes: int = 0
    """Writes skipped because a merged file already holds that batch id."""
    maintenance_errors: int = 0
    quarantine_log: list[tuple[str, str]] = field(default_factory=list)
    """(relative path, reason) of every file moved to quarantine since start."""


RETENTION_SETTINGS: dict[str, Callable[[Any], int]] = {"flows": lambda config: config.store.flows_retention_days}
"""Per-table retention read from the config: table name -> function of the Config giving days (0: keep)."""


def retention_setting(table: str, days_from_config: Callable[[Any], int]) -> None:
    """Register where ``table``'s retention (days) is configured, e.g.
    ``retention_setting("ip_detail_records", lambda c: c.compliance.retention_days)``; the store the daemon builds
    (:meth:`ParquetStore.for_config`) then drops that table's expired hour partitions.
    """
    RETENTION_SETTINGS[table] = days_from_config


class _AbortCompaction(Exception):
    """A source could not be read: this compaction is abandoned (the source was quarantined)."""


class CompactionCrash(RuntimeError):
    """Raised by the test hook between compaction steps to simulate a crash."""


class ParquetStore:
    """The embedded Parquet store; implements :class:`storage.outputs.Output`.

    ``retention_days`` maps table names to days (0 or absent: keep forever); :meth:`set_retention` adds more.
    Housekeeping (compaction and retention) runs in a background thread after :meth:`start_maintenance`, or when
    :meth:`maintain` is called.

    ``row_group_rows`` bounds what compaction holds: it gathers a row group's rows before writing them, and with 1 M
    rows (213 MiB of flows) it peaked at about 510 MiB of Arrow memory, against about 220 MiB with 250,000 rows (30 %
    less CPU, the same bytes on disk: zstd compresses per 1 MiB page, not per row group).
    """

    name = "store"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        compact_after_s: float = 3600.0,
        compact_target_bytes: int = 256 * 1024 * 1024,
        retention_days: Mapping[str, int] | None = None,
        compression: str = "zstd",
        compression_level: int = 1,
        byte_stream_split: bool = True,
        row_group_rows: int = 250_000,
        recover: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        reason = check_compression(compression, compression_level)
        if reason:
            raise ValueError(f"store compression {compression!r} level {compression_level}: expected {reason}")
        self.root = Path(path)
        self.compact_after_s = compact_after_s
        self.compact_target_bytes = compact_target_bytes
        self.retention_days: dict[str, int] = dict(retention_days or {})
        self.compression = compression
        self.compression_level = compression_level
        self.byte_stream_split = byte_stream_split
        self._options: dict[Table, dict[str, Any]] = {}  # parquet_options, built once per table definition
        self.row_group_rows = row_group_rows
        self.clock = clock
        self.stats = StoreStats()
        self._lock = threading.Lock()  # serialises renames/unlinks in partitions between writer and maintenance
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._merged_cache: dict[tuple[Path, int, int], frozenset[int]] = {}
        self._settled: dict[Path, int] = {}  # partition -> directory mtime_ns when last found fully compacted
        self._crash_after_step: int | None = None  # test hook: raise CompactionCrash after this compaction step
        makedirs_durable(self.root)
        if recover:
            self.recover()

    @classmethod
    def for_config(cls, config: StorageSettings, retention_days: Mapping[str, int] | None = None, *,
                   housekeeper: bool = True, maintenance_interval_s: float = 60.0) -> ParquetStore:
        """The store described by the configuration's ``[store]`` (any :class:`~storage.settings.StorageSettings`).

        Only one process may be the ``housekeeper`` (recovery at start, compaction, retention): with several
        workers that is worker 0; the others only write (their temporary names carry their pid, so recovery leaves
        files of live writers alone).
        """
        days = {name: int(get(config)) for name, get in RETENTION_SETTINGS.items()}
        days.update(retention_days or {})
        sc = config.store
        store = cls(sc.path, compact_after_s=sc.compact_after_s, retention_days=days, recover=housekeeper,
                    compression=sc.compression, compression_level=sc.compression_level,
                    byte_stream_split=sc.byte_stream_split)
        if housekeeper:
            store.start_maintenance(maintenance_interval_s)
        return store

    # --- paths ------------------------------------------------------------------------------------------------------

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def glob(self, table: str) -> str:
        """The glob of every visible data file of ``table`` (for chDB's ``file()``)."""
        return str(self.table_dir(table).resolve() / "date=*" / "hour=*" / "*.parquet")

    def set_retention(self, table: str, days: int) -> None:
        """Keep ``table``'s partitions for ``days`` days (0: forever)."""
        self.retention_days[table] = days

    def partitions(self, table: str) -> list[tuple[int, Path]]:
        """(hour number, directory) of every partition of ``table``, oldest first."""
        out: list[tuple[int, Path]] = []
        tdir = self.table_dir(table)
        if not tdir.is_dir():
            return out
        for d in tdir.iterdir():
            if not (d.is_dir() and d.name.startswith("date=")):
                continue
            for h in d.iterdir():
                hour = hour_of_partition(d.name, h.name)
                if hour is not None and h.is_dir():
                    out.append((hour, h))
        out.sort()
        return out

    def files(self, table: str) -> list[Path]:
        """Every visible data file of ``table``."""
        return [f for _, p in self.partitions(table) for f in sorted(p.glob("*.parquet"))]

    def write_options(self, table: Table) -> dict[str, Any]:
        """The :func:`parquet_options` this store writes ``table``'s files with (data files and compaction)."""
        opts = self._options.get(table)
        if opts is None:
            opts = self._options[table] = parquet_options(table, self.compression, self.compression_level,
                                                               byte_stream_split=self.byte_stream_split)
        return opts

    # --- Output -----------------------------------------------------------------------------------------------------

    def write(self, table: Table, batch: Rows, batch_id: int) -> None:
        """Write ``batch`` durably, one file per hour partition it spans, named after ``batch_id``."""
        self._write_hours(table, batch, batch_id, only_missing=False)

    def replay(self, table: Table, batch: Rows, batch_id: int) -> bool:
        """Write the hour files of ``batch`` that are not stored yet (a crash may have cut its write between two
        hours, or before any); True when one was missing. A file with the batch's name is complete (it is renamed
        into place whole), so it is kept as it is."""
        return self._write_hours(table, batch, batch_id, only_missing=True)

    def _write_hours(self, table: Table, batch: Rows, batch_id: int, *, only_missing: bool) -> bool:
        if batch.num_rows == 0:
            return False
        batch = conform(table, batch)
        # A pa.Table (the sink's buffered batches) is written chunk by chunk, never concatenated.
        data = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        ts = data.column(table.time_column).cast(pa.int64()).to_numpy()
        hours = ts // HOUR_MS
        lo, hi = int(hours.min()), int(hours.max())
        if lo == hi:
            return self._write_file(table, lo, data, batch_id, only_missing)
        # Several hours (a batch straddling the hour, late records). Rows in time order (the usual case: a batch
        # cut across the hour) are sliced without a copy; otherwise sorted once by hour, then sliced.
        if bool(np.all(hours[1:] >= hours[:-1])):
            sorted_hours, ordered = hours, data
        else:
            order = np.argsort(hours, kind="stable")
            sorted_hours, ordered = hours[order], data.take(pa.array(order))
        bounds = np.flatnonzero(np.diff(sorted_hours)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(sorted_hours)]))
        wrote = False
        for s, e in zip(starts, ends, strict=True):
            wrote |= self._write_file(table, int(sorted_hours[s]), ordered.slice(int(s), int(e - s)), batch_id,
                                      only_missing)
        return wrote

    def _write_file(self, table: Table, hour: int, data: pa.Table, batch_id: int, only_missing: bool = False
                    ) -> bool:
        """Write one hour's file of a batch; False when it was there already (merged, or ``only_missing``)."""
        pdir = self.table_dir(table.name) / partition_of(hour)
        makedirs_durable(pdir)
        final = pdir / file_name(batch_id)
        exists = final.exists()
        if (not exists and self._merged_into(pdir, batch_id)) or (exists and only_missing):
            # A replay of a batch whose file was already written (or compacted): its rows are there.
            self.stats.duplicate_writes += 1
            log.info("store: batch %d is already stored in %s%s; not written again", batch_id, pdir,
                     "" if exists else " (merged)")
            return False
        tmp = pdir / tmp_name(final.name)
        try:
            with open(tmp, "wb") as f:
                pq.write_table(data, f, row_group_size=self.row_group_rows, **self.write_options(table))
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            # Disk full (or any failure): a partial file must not keep the space a retry needs.
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            os.replace(tmp, final)
            fsync_dir(pdir)
        self.stats.files_written += 1
        return True

    def _merged_into(self, pdir: Path, batch_id: int) -> bool:
        """Whether a merged file of ``pdir`` holds ``batch_id`` (its footer lists the batch ids it holds)."""
        if not pdir.is_dir():
            return False
        for f in pdir.glob("*-*.parquet"):
            first, last = id_range(f.name)
            if first <= batch_id <= last and batch_id in self._merged_ids(f):
                return True
        return False

    def _merged_ids(self, path: Path) -> frozenset[int]:
        """Batch ids a merged file holds (from its footer; cached by path, mtime and size)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return frozenset()
        key = (path, st.st_mtime_ns, st.st_size)
        ids = self._merged_cache.get(key)
        if ids is None:
            try:
                meta = pq.read_schema(path).metadata or {}
                ids = frozenset(json.loads(meta.get(SOURCES_KEY.encode(), b"[]")))
            except (OSError, ValueError, pa.ArrowInvalid):
                ids = frozenset()
            if len(self._merged_cache) > 4096:
                self._merged_cache.clear()
            self._merged_cache[key] = ids
        return ids

    def flush(self) -> None:
        """Nothing to do: every write is durable when it returns."""

    def drain(self, timeout: float) -> bool:
        """True at once: a written file is readable as soon as ``write`` returns (there is no spool)."""
        return True

    def close(self) -> None:
        """Stop background maintenance (the housekeeper also records a checkpoint: everything is complete)."""
        housekeeper = self._thread is not None
        self.stop_maintenance()
        if housekeeper:
            self.checkpoint()

    # --- recovery ---------------------------------------------------------------------------------------------------

    def recover(self, full: bool = False) -> None:
        """Finish or roll back interrupted compactions, then quarantine stray temporary and corrupt files.

        Only partitions changed since the last checkpoint (``.checkpoint``, touched by every maintenance round and at
        close) minus a margin are examined: an interrupted write or compaction changes its partition directory, and
        a partition untouched since then was complete. This keeps a restart fast with years of data. Without a
        checkpoint, or with ``full``, every partition is examined (reading every file's footer).
        """
        trash = self.root / TRASH
        if trash.exists():
            shutil.rmtree(trash, ignore_errors=True)
        checkpoint = self.root / CHECKPOINT
        since = None if full or not checkpoint.exists() else checkpoint.stat().st_mtime - CHECKPOINT_MARGIN_S
        for tdir in sorted(self.root.iterdir()):
            if not tdir.is_dir() or tdir.name in (QUARANTINE, TRASH) or tdir.name.startswith("."):
                continue
            # A table directory is recognised by its layout, not by the registry (a table whose module this process
            # does not import still gets recovered); other directories (spool, state) are left alone.
            for _, pdir in self.partitions(tdir.name):
                if since is None or pdir.stat().st_mtime >= since:
                    self._recover_partition(pdir)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Record that every partition not changed from now on is complete (see :meth:`recover`)."""
        (self.root / CHECKPOINT).touch()

    def _recover_partition(self, pdir: Path) -> None:
        journal = pdir / JOURNAL
        if journal.exists():
            self._resolve_journal(pdir, journal)
        for entry in sorted(pdir.iterdir()):
            name = entry.name
            if name.endswith(".tmp") and writer_alive(name):
                continue  # another worker process is writing it right now
            if name.endswith(".tmp") and "-" in name.split(".")[0]:
                # An unfinished merge (<first>-<last>.parquet...tmp): its sources are intact, it is only a copy.
                entry.unlink()
                log.warning("store: removed the unfinished compaction output %s", entry.relative_to(self.root))
                continue
            if name.endswith(".tmp") or name.endswith(".replaced"):
                self._quarantine(entry, "left over from an interrupted write")
            elif name.endswith(".parquet"):
                reason = check_parquet(entry)
                if reason:
                    self._quarantine(entry, reason)

    def _resolve_journal(self, pdir: Path, journal: Path) -> None:
        try:
            plan = json.loads(journal.read_text())
            target, sources = plan["target"], list(plan["sources"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The journal is written atomically, so this is outside damage; quarantine it and keep the files.
            self._quarantine(journal, f"unreadable compaction journal: {exc}")
            return
        if (pdir / target).exists():
            # Step 4 happened: the merged file holds every source; finish removing them.
            for s in sources:
                for p in (pdir / (s + ".replaced"), pdir / s):
                    p.unlink(missing_ok=True)
            log.info("compaction in %s finished at start: %s replaces %d files", pdir, target, len(sources))
        else:
            # Not yet in place: restore the sources and forget the merged data.
            for s in sources:
                replaced = pdir / (s + ".replaced")
                if replaced.exists():
                    os.replace(replaced, pdir / s)
            for leftover in pdir.glob(target + ".*.tmp"):
                leftover.unlink(missing_ok=True)
            log.info("compaction in %s rolled back at start (%d files restored)", pdir, len(sources))
        fsync_dir(pdir)
        journal.unlink()
        fsync_dir(pdir)
        self.stats.recovered_journals += 1

    def _quarantine(self, path: Path, reason: str) -> None:
        rel = path.relative_to(self.root)
        dest = self.root / QUARANTINE / rel
        makedirs_durable(dest.parent)
        if dest.exists():
            dest = dest.with_name(f"{dest.name}.{time.time_ns()}")
        os.replace(path, dest)
        fsync_dir(path.parent)
        self.stats.quarantined += 1
        self.stats.quarantine_log.append((str(rel), reason))
        log.error("store: moved %s to %s: %s", rel, QUARANTINE, reason)

    # --- compaction -------------------------------------------------------------------------------------------------

    def compact(self, now: float | None = None) -> int:
        """Merge small files older than ``compact_after_s`` in every partition; returns the files merged away."""
        if self.compact_after_s <= 0:
            return 0
        now = self.clock() if now is None else now
        merged = 0
        for name, table in list(TABLES.items()):
            for _, pdir in self.partitions(name):
                if self._stop.is_set():
                    return merged
                try:
                    if self._settled.get(pdir) == pdir.stat().st_mtime_ns:
                        continue  # nothing changed since it was last found fully compacted
                except FileNotFoundError:
                    continue
                groups, settled = self._compaction_groups(pdir, now)
                for group in groups:
                    done = self._compact_group(table, pdir, group)
                    merged += done
                    settled = settled and done > 0  # an abandoned merge is retried next round
                if settled:
                    self._settled[pdir] = pdir.stat().st_mtime_ns
                else:
                    self._settled.pop(pdir, None)
        return merged

    def _compaction_groups(self, pdir: Path, now: float) -> tuple[list[list[Path]], bool]:
        """Runs of small, old-enough files (in batch id order) each up to about ``compact_target_bytes``, and
        whether the partition is settled (no small file too young to merge yet, so no need to look again until the
        directory changes)."""
        if (pdir / JOURNAL).exists():
            return [], False  # an interrupted compaction waits for recover() at the next start
        candidates = []
        settled = True
        for f in sorted(pdir.glob("*.parquet")):
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            if st.st_size < self.compact_target_bytes // 2:
                if now - st.st_mtime >= self.compact_after_s:
                    candidates.append((f, st.st_size))
                else:
                    settled = False
        groups: list[list[Path]] = []
        current: list[Path] = []
        size = 0
        for f, s in candidates:
            current.append(f)
            size += s
            if size >= self.compact_target_bytes:
                groups.append(current)
                current, size = [], 0
        groups.append(current)
        return [g for g in groups if len(g) >= 2], settled

    def _read_batches(self, table: Table, src: Path) -> Iterator[pa.RecordBatch]:
        """A source file's batches in the table's schema (a whole small file; about one row group at a time)."""
        pf = pq.ParquetFile(src)
        for b in pf.iter_batches(batch_size=self.row_group_rows):
            yield conform(table, b, evolve=True)

    def _step(self, n: int) -> None:
        if self._crash_after_step == n:
            raise CompactionCrash(f"simulated crash after compaction step {n}")

    def _compact_group(self, table: Table, pdir: Path, sources: list[Path]) -> int:
        first = min(id_range(s.name)[0] for s in sources)
        last = max(id_range(s.name)[1] for s in sources)
        target = pdir / f"{first:020d}-{last:020d}.parquet"
        k = 1
        while target.exists() or target in sources:
            target = pdir / f"{first:020d}-{last:020d}.{k}.parquet"
            k += 1
        tmp = pdir / tmp_name(target.name)
        # Step 1: merged data, streamed source by source (memory stays at about one row group).
        readable: list[Path] = []
        try:
            with open(tmp, "wb") as f:
                ids: set[int] = set()
                for src in sources:
                    ids |= self._merged_ids(src) if "-" in src.name.split(".")[0] else {id_range(src.name)[0]}
                schema = table.arrow_schema.with_metadata({**(table.arrow_schema.metadata or {}),
                                                           SOURCES_KEY: json.dumps(sorted(ids))})
                with pq.ParquetWriter(f, schema, **self.write_options(table)) as writer:
                    pending: list[pa.RecordBatch] = []
                    pending_rows = 0
                    for src in sources:
                        try:
                            for b in self._read_batches(table, src):
                                pending.append(b)
                                pending_rows += b.num_rows
                                if pending_rows >= self.row_group_rows:
                                    # Whole row groups out, the remainder waits for the next file's rows.
                                    merged_part = pa.Table.from_batches(pending, schema=schema)
                                    full = merged_part.num_rows - merged_part.num_rows % self.row_group_rows
                                    writer.write_table(merged_part.slice(0, full), row_group_size=self.row_group_rows)
                                    rest = merged_part.slice(full)
                                    pending, pending_rows = rest.to_batches(), rest.num_rows
                        except (OSError, pa.ArrowInvalid, ValueError) as exc:
                            # Part of it may be in the merged file already: give up this round, set the file aside.
                            with self._lock:
                                if src.exists():
                                    self._quarantine(src, f"unreadable during compaction: {exc}")
                            raise _AbortCompaction from exc
                        readable.append(src)
                    if pending:
                        writer.write_table(pa.Table.from_batches(pending, schema=schema),
                                           row_group_size=self.row_group_rows)
                f.flush()
                os.fsync(f.fileno())
            self._step(1)
            if len(readable) < 2:
                tmp.unlink(missing_ok=True)
                return 0
            with self._lock:
                # Step 2: the journal.
                journal_tmp = pdir / tmp_name(JOURNAL)
                journal_tmp.write_text(json.dumps({"target": target.name, "sources": [s.name for s in readable]}))
                with open(journal_tmp, "rb+") as jf:
                    os.fsync(jf.fileno())
                os.replace(journal_tmp, pdir / JOURNAL)
                fsync_dir(pdir)
                self._step(2)
                # Step 3: hide the sources.
                for i, s in enumerate(readable):
                    os.replace(s, s.with_name(s.name + ".replaced"))
                    if i == 0:
                        self._step(30)  # crash with some sources hidden and some not
                fsync_dir(pdir)
                self._step(3)
                # Step 4: the merged file appears.
                os.replace(tmp, target)
                fsync_dir(pdir)
                self._step(4)
                # Step 5: clean up.
                for s in readable:
                    s.with_name(s.name + ".replaced").unlink(missing_ok=True)
                fsync_dir(pdir)
                self._step(5)
                (pdir / JOURNAL).unlink()
                fsync_dir(pdir)
        except CompactionCrash:
            raise
        except _AbortCompaction:
            tmp.unlink(missing_ok=True)
            return 0
        except BaseException:
            if not (pdir / JOURNAL).exists():
                tmp.unlink(missing_ok=True)
            raise
        self.stats.compactions += 1
        self.stats.files_compacted += len(readable)
        log.debug("store: compacted %d files of %s into %s", len(readable), pdir, target.name)
        return len(readable)

    # --- retention --------------------------------------------------------------------------------------------------

    def apply_retention(self, now: float | None = None) -> list[str]:
        """Drop partitions whose hour ended more than the table's retention ago; returns what was dropped."""
        now = self.clock() if now is None else now
        dropped = []
        for name, days in self.retention_days.items():
            if not days or days <= 0:
                continue
            cutoff_hour = int(now // 3600) - days * 24  # partitions ending at or before this hour are expired
            for hour, pdir in self.partitions(name):
                if hour + 1 > cutoff_hour:
                    break
                dropped.append(str(pdir.relative_to(self.root)))
                self._drop_dir(pdir)
            # Remove date directories left empty.
            tdir = self.table_dir(name)
            if tdir.is_dir():
                for d in tdir.iterdir():
                    if d.is_dir() and d.name.startswith("date=") and not any(d.iterdir()):
                        d.rmdir()
        self.stats.partitions_dropped += len(dropped)
        for p in dropped:
            log.info("store: retention dropped %s", p)
        return dropped

    def _drop_dir(self, pdir: Path) -> None:
        trash = self.root / TRASH
        makedirs_durable(trash)
        dest = trash / f"{time.time_ns()}"
        with self._lock:
            os.replace(pdir, dest)  # one rename: the whole partition disappears at once for readers
            fsync_dir(pdir.parent)
        shutil.rmtree(dest, ignore_errors=True)

    # --- background -------------------------------------------------------------------------------------------------

    def maintain(self, now: float | None = None) -> None:
        """One round of retention and compaction; errors are logged and counted, never raised."""
        try:
            # Taken before the work: whatever this round changes is newer than the checkpoint.
            self.checkpoint()
            self.apply_retention(now)
            self.compact(now)
        except Exception:
            self.stats.maintenance_errors += 1
            log.exception("store: maintenance failed")

    def start_maintenance(self, interval_s: float = 60.0) -> None:
        """Run :meth:`maintain` every ``interval_s`` seconds in a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            # Compaction is background work: on Linux a thread has its own nice value, so give way to the
            # receive/decode/write threads of the daemon.
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            while not self._stop.wait(interval_s):
                self.maintain()

        self._thread = threading.Thread(target=loop, name="store-maintenance", daemon=True)
        self._thread.start()

    def stop_maintenance(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
