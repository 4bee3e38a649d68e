"""The batching sink: collects table batches from the pipeline and hands them to every output from one thread.

The event loop calls :meth:`Sink.add` (cheap: it appends to a per-table list) and :meth:`Sink.maybe_flush`; a
table's buffer is cut into one batch when it holds ``flush_rows`` rows or ``flush_bytes`` bytes, or its oldest rows
are ``flush_interval_s`` old. Cut batches go to a queue drained by a single writer thread, which stamps the batch id
on the buffered batches (the chunks of one ``pa.Table``, not concatenated: no copy, no second instance of the rows)
and calls ``write`` on each output in turn, so disk and network waits never reach the event loop.

Memory is bounded by ``max_pending_rows`` and ``max_pending_bytes`` (rows buffered, queued and being written, and
the Arrow buffers they hold; a ``flows`` row is about 210 bytes): beyond either :meth:`Sink.add` refuses a batch of a
``droppable`` table (raw ``flows`` by default), counts its rows in ``dropped_rows`` and logs,
rather than blocking the loop or growing without bound. Rows of the other tables (usage, rated usage: money) are
always accepted; they are a small fraction of the volume, and the raw flows make room for them. ``backlogged`` tells
the caller when it is getting close.

Each batch gets its id (:class:`storage.outputs.BatchIdGenerator`; ``worker`` goes into its bits so worker
processes never issue the same id) once, when it is cut; a failed write is retried
with the same id (``retries`` times, with backoff), which the outputs make idempotent. A batch an output still cannot
take after the last retry is counted in that output's ``dropped_rows`` and logged; the other outputs still get it.

With a :class:`storage.handoff.HandoffJournal` (the daemon gives one when it has more than one output) the writer
records each batch durably before the first output gets it and forgets it once every output is done with it; at
start the recorded batches are replayed (``Output.replay``) into the outputs that lack them, so a SIGKILL between two
outputs never leaves a batch in one and not the other. Replays are logged and counted (``OutputStats.replayed_*``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from decoders.schema import TABLES, Table
from storage.clickhouse.spool import SpoolCorrupt
from storage.handoff import HandoffJournal
from storage.outputs import BatchIdGenerator, Output, OutputStats, Rows, buffered, conform, with_batch_id

log = logging.getLogger(__name__)

STALL_RETRY_S = 5.0
"""Longest wait between two attempts at a money-table batch an output refuses with an OSError (disk full)."""


@dataclass
class _Buffer:
    batches: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    since: float = 0.0  # monotonic time of the oldest buffered batch


@dataclass
class _Job:
    table: Table | None  # None: a flush marker
    batches: list[pa.RecordBatch]
    rows: int
    batch_id: int
    bytes: int = 0  # Arrow buffer bytes of the batches (what the job holds in memory)
    done: threading.Event | None = None  # set by the writer when this job (and all before it) is done
    replay: bool = False  # a batch of the handoff journal found at start: Output.replay, not Output.write


WriteCallback = Callable[[str, str, int, float], None]
"""``(output_name, table_name, rows, seconds)`` after each durable write."""
ErrorCallback = Callable[[str, str, BaseException], None]
"""``(output_name, table_name, exception)`` after each failed write attempt."""
ReplayCallback = Callable[[str, str, int], None]
"""``(output_name, table_name, rows)`` after a journal replay gave an output a batch it lacked."""
StepHook = Callable[[str, int], None]
"""``(step, batch_id)`` at each step of a handoff: ``journaled``, ``wrote:<output>`` per output, ``done``."""


class Sink:
    """Per-table batching in front of the outputs, with one writer thread (see the module docstring)."""

    def __init__(
        self,
        outputs: Iterable[Output],
        flush_rows: int = 500_000,
        flush_interval_s: float = 5.0,
        max_pending_rows: int = 4_000_000,
        *,
        droppable: Collection[str] = ("flows",),
        flush_bytes: int = 64 * 2**20,
        max_pending_bytes: int = 512 * 2**20,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
        worker: int = 0,
        id_generator: BatchIdGenerator | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_write: WriteCallback | None = None,
        on_error: ErrorCallback | None = None,
        journal: HandoffJournal | None = None,
        unjournaled: Collection[str] = (),
        on_replay: ReplayCallback | None = None,
    ) -> None:
        self.outputs = list(outputs)
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_pending_rows = max_pending_rows
        self.flush_bytes = flush_bytes
        """A table's buffer is cut once its batches hold this many bytes (whatever its rows)."""
        self.max_pending_bytes = max_pending_bytes
        """Like ``max_pending_rows``, in bytes of the batches' Arrow buffers."""
        self.droppable = frozenset(droppable)
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.ids = id_generator or BatchIdGenerator(worker)
        self.clock = clock
        self.on_write = on_write
        self.on_error = on_error
        self.journal = journal
        """Where each batch is recorded before any output gets it (None: outputs are written without a record)."""
        self.unjournaled = frozenset(unjournaled)
        """Tables only one output takes (ClickHouse with ``flows = false``): nothing to keep in step, no record."""
        self.on_replay = on_replay
        self.step_hook: StepHook | None = None
        """Test hook (fault injection): called at each step of every handoff, e.g. to SIGKILL the process there."""
        self.journal_errors = 0
        """Batches handed to the outputs without a journal record because the disk refused it."""
        self.replays = 0
        """Journal records found at start (batches whose handoff a crash cut short)."""
        self.stats: dict[str, OutputStats] = {o.name: OutputStats() for o in self.outputs}
        """Counters per output name (rows, batches, errors, drops, time)."""
        self.rows_in: dict[str, int] = {}
        """Rows accepted by :meth:`add`, per table."""
        self.dropped_rows: dict[str, int] = {}
        """Rows refused by :meth:`add` because ``max_pending_rows`` was reached, per table."""
        self.pending_rows = 0
        """Rows buffered, queued or being written right now."""
        self.pending_bytes = 0
        """Arrow buffer bytes of those rows."""
        self.batches_cut = 0
        self._buffers: dict[str, _Buffer] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        if journal is not None:
            self._queue_replays(journal)
        self._thread = threading.Thread(target=self._run, name="sink-writer", daemon=True)
        self._thread.start()

    def _queue_replays(self, journal: HandoffJournal) -> None:
        """Queue every batch the journal still holds (a crash cut its handoff) ahead of any new batch."""
        tables = TABLES
        rows = 0
        for entry in journal.entries():
            table = tables.get(entry.table)
            try:
                if table is None:
                    raise ValueError(f"table {entry.table} is unknown to this flowmed version")
                batch = conform(table, journal.read(entry), evolve=True)
            except (SpoolCorrupt, ValueError) as exc:
                log.error("handoff: batch %d of %s (%d rows) cannot be replayed; outputs that lack it lose it: %s",
                          entry.batch_id, entry.table, entry.rows, exc)
                journal.set_aside_entry(entry, str(exc))
                continue
            size = batch.get_total_buffer_size()
            self._queue.put(_Job(table, [batch], batch.num_rows, entry.batch_id, size, replay=True))
            self.pending_rows += batch.num_rows
            self.pending_bytes += size
            self.replays += 1
            rows += batch.num_rows
        if self.replays:
            log.warning("handoff: %d batches (%d rows) were not acknowledged by every output before the last stop; "
                        "giving them to the outputs that lack them", self.replays, rows)

    def _step(self, step: str, batch_id: int) -> None:
        if self.step_hook is not None:
            self.step_hook(step, batch_id)

    @property
    def backlogged(self) -> bool:
        """True when more than half of ``max_pending_rows`` or of ``max_pending_bytes`` is in use (the writer is
        falling behind)."""
        return self.pending_rows > self.max_pending_rows // 2 or self.pending_bytes > self.max_pending_bytes // 2

    @property
    def journal_set_aside(self) -> int:
        """Unreadable handoff journal records moved aside at start (0 without a journal)."""
        return self.journal.set_aside if self.journal is not None else 0

    # --- event loop side --------------------------------------------------------------------------------------------

    def add(self, table_name: str, batch: pa.RecordBatch) -> bool:
        """Buffer ``batch`` for ``table_name``; returns False (and counts the rows) when it was refused because
        ``max_pending_rows`` or ``max_pending_bytes`` are pending and the table is ``droppable``.

        Raises KeyError for a table that is not registered and ValueError for a batch that does not fit the table's
        schema (both are bugs of the caller, not bad input).
        """
        if self._closed:
            raise RuntimeError("sink is closed")
        table = TABLES[table_name]
        n = batch.num_rows
        if n == 0:
            return True
        batch = conform(table, batch)
        # Every buffer the batch references, whole (a slice keeps its parent's buffers alive): what it holds in
        # memory, and about a hundred times cheaper than RecordBatch.nbytes.
        size = batch.get_total_buffer_size()
        with self._lock:
            if table_name in self.droppable and (self.pending_rows + n > self.max_pending_rows
                                                 or self.pending_bytes + size > self.max_pending_bytes):
                self.dropped_rows[table_name] = self.dropped_rows.get(table_name, 0) + n
                log.error("sink: %d %s rows dropped: %d rows (%d MiB) already pending (max_pending_rows, "
                          "max_pending_bytes)", n, table_name, self.pending_rows, self.pending_bytes >> 20)
                return False
            self.pending_rows += n
            self.pending_bytes += size
            self.rows_in[table_name] = self.rows_in.get(table_name, 0) + n
            buf = self._buffers.get(table_name)
            if buf is None:
                buf = self._buffers[table_name] = _Buffer()
            if not buf.batches:
                buf.since = self.clock()
            buf.batches.append(batch)
            buf.rows += n
            buf.bytes += size
            if buf.rows >= self.flush_rows or buf.bytes >= self.flush_bytes:
                self._cut(table, buf)
        return True

    def maybe_flush(self, now: float | None = None) -> None:
        """Cut every table buffer whose oldest rows waited ``flush_interval_s`` (``now``: the sink's clock)."""
        now = self.clock() if now is None else now
        with self._lock:
            for name, buf in self._buffers.items():
                if buf.batches and now - buf.since >= self.flush_interval_s:
                    self._cut(TABLES[name], buf)

    def _cut(self, table: Table, buf: _Buffer) -> None:
        # Called with the lock held: the batch id is assigned here, once, in cut order.
        job = _Job(table, buf.batches, buf.rows, self.ids.next(), buf.bytes)
        buf.batches, buf.rows, buf.bytes = [], 0, 0
        self.batches_cut += 1
        self._queue.put(job)

    # --- synchronous ------------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Cut every buffer and return once every output has all of it durable (blocks: not for the event loop)."""
        done = threading.Event()
        with self._lock:
            for name, buf in self._buffers.items():
                if buf.batches:
                    self._cut(TABLES[name], buf)
            self._queue.put(_Job(None, [], 0, 0, done=done))  # a marker after everything cut so far
        while not done.wait(1.0):
            if not self._thread.is_alive():
                raise RuntimeError("sink writer thread is not running")

    def close(self) -> None:
        """Flush, stop the writer thread and close the outputs."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        for output in self.outputs:
            try:
                output.close()
            except Exception:
                log.exception("sink: closing output %s failed", output.name)

    # --- writer thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.table is None:  # flush marker: everything before it is written
                for output in self.outputs:
                    try:
                        output.flush()
                    except Exception:
                        log.exception("sink: flushing output %s failed", output.name)
                assert job.done is not None
                job.done.set()
                continue
            try:
                self._write(job)
            except Exception:  # never let the writer thread die: log and move on
                log.exception("sink: writing a %s batch failed", job.table.name)
            finally:
                with self._lock:
                    self.pending_rows -= job.rows
                    self.pending_bytes -= job.bytes

    def _write(self, job: _Job) -> None:
        table = job.table
        assert table is not None  # flush markers are handled by the writer loop
        # The buffered batches as the chunks of one table: no copy (a concatenation held the GIL for about a fifth of
        # the writer's time and doubled the batch's memory while it was written).
        batch = with_batch_id(table, buffered(table, job.batches), job.batch_id)
        job.batches = []  # the table holds them; nothing else should keep them alive past this write
        recorded = job.replay  # a replayed batch is recorded already
        if self.journal is not None and not job.replay and table.name not in self.unjournaled:
            try:
                self.journal.record(table.name, job.batch_id, batch)
                recorded = True
            except OSError as exc:
                # The disk refuses (full, read-only): the outputs still get the batch, each retrying on its own,
                # but a crash before all of them have it can leave them apart. Said and counted.
                self.journal_errors += 1
                log.error("handoff: cannot record %s batch %d (%s); handing it to the outputs without a record",
                          table.name, job.batch_id, exc)
        self._step("journaled", job.batch_id)
        for output in self.outputs:
            self._write_one(output, job, table, batch)
            self._step(f"wrote:{output.name}", job.batch_id)
        if self.journal is not None and recorded:
            self.journal.remove(table.name, job.batch_id, batch.num_rows)
        self._step("done", job.batch_id)

    def _write_one(self, output: Output, job: _Job, table: Table, batch: Rows) -> None:
        """Give ``batch`` to ``output`` (``write``, or ``replay`` for a journal replay), with retries."""
        name = output.name
        stats = self.stats[name]
        for attempt in itertools.count():
            t0 = time.perf_counter()
            try:
                if job.replay:
                    took = output.replay(table, batch, job.batch_id)
                else:
                    output.write(table, batch, job.batch_id)
            except Exception as exc:
                dt = time.perf_counter() - t0
                stats.write_seconds += dt
                stats.errors += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
                if self.on_error:
                    self.on_error(name, table.name, exc)
                if attempt < self.retries:
                    log.warning("sink: %s write of %s batch %d failed (attempt %d), retrying: %s", name,
                                table.name, job.batch_id, attempt + 1, exc)
                    time.sleep(self.retry_backoff_s * (2**attempt))
                    continue
                if isinstance(exc, OSError) and table.name not in self.droppable:
                    # Money tables (usage, rated usage) are never given up for a disk or network error (disk
                    # full, read-only, a full spool with the server gone): retry until it heals. Batches behind
                    # this one wait, raw flows are refused at max_pending_rows meanwhile (counted), and flush(),
                    # which RADIUS waits on before dropping its journal, returns only once the rows are durable.
                    if attempt == self.retries or attempt % 20 == 0:
                        log.error("sink: %s cannot take %s batch %d (%d rows), retrying until it can: %s", name,
                                  table.name, job.batch_id, job.rows, exc)
                    time.sleep(min(STALL_RETRY_S, self.retry_backoff_s * (2 ** min(attempt, 16))))
                    continue
                stats.dropped_batches += 1
                stats.dropped_rows += job.rows
                log.error("sink: %s gave up on %s batch %d (%d rows) after %d attempts: %s", name,
                          table.name, job.batch_id, job.rows, attempt + 1, exc)
                return
            dt = time.perf_counter() - t0
            stats.write_seconds += dt
            if job.replay:
                if took:
                    stats.replayed_batches += 1
                    stats.replayed_rows += job.rows
                    if self.on_replay:
                        self.on_replay(name, table.name, job.rows)
                log.warning("handoff: %s batch %d (%d rows) replayed into %s: %s", table.name, job.batch_id,
                            job.rows, name, "it lacked (some of) it" if took else "it had it already")
                return
            stats.rows += job.rows
            stats.batches += 1
            stats.rows_by_table[table.name] = stats.rows_by_table.get(table.name, 0) + job.rows
            if self.on_write:
                self.on_write(name, table.name, job.rows, dt)
            return
