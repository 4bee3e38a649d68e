"""The rating job: read closed usage from the store, rate it, write what changed.

One run (:meth:`RatingJob.run`):

1. takes the lease in the store (:mod:`rating.lease`): one rating job at a time, whatever host it runs on;
2. decides the period: whole billing cycles, from the start of the cycle ``lookback_cycles`` before the current one
   (``rate``) or the cycles overlapping ``--from/--to`` (``rerate``), up to ``closed_until`` = now minus
   ``mediation.watermark_s`` minus ``rating.extra_lateness_s`` (only closed intervals are rated);
3. reads the usage of that period through :class:`storage.query.QueryEngine`, summed per key over every collector
   host, worker and correction row (``GROUP BY``), for the billed ``source`` only;
4. rates it (:func:`rating.engine.rate`, a pure function: the same usage always gives the same records);
5. reads the current state of ``rated_usage`` for the same scope (newest version per record) and writes only the
   difference: new records as version 1, changed ones as version + 1, records that disappeared as a void version.
   A second run over unchanged usage writes nothing; a late correction row changes exactly the affected records;
6. writes the events the same way, a ``rating_runs`` row, and releases the lease.

Writes go through the configured outputs (embedded Parquet store, ClickHouse), and a run waits until ClickHouse has
them (its spool drained), so the next run (or the BSS) reads what this one wrote.

Over 500 lines because the run's steps share one lease and one view of what is stored; they are
steps of one transaction-like sequence, read top to bottom.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import mediation.tables  # noqa: F401  (registers usage, which the job reads)
from decoders.schema import Table
from rating import tables as rt
from rating.assignments import AssignmentFile, Assignments
from rating.engine import EVENT_BUCKET_MS, EVENT_SCHEMA, RECORD_SCHEMA, idle_minimum_records, prepare_usage, rate
from rating.lease import StoreLease
from rating.plans import PlanBook, load_plans
from rating.settings import RatingSettings
from rating.timebase import Instant, cycle_bounds, cycle_labels, cycle_window, cycles, resolve

if TYPE_CHECKING:  # imported where used: reading the store is not needed to import the job
    from storage.outputs import Output
    from storage.query import QueryEngine

log = logging.getLogger(__name__)

COMPARED = ("void", "subscriber_id", "plan_id", "plan_version", "rate_card", "interval_end", "bytes",
            "billable_quantity", "quantity_unit", "allowance_quantity", "cycle_to_date", "amount_micros", "currency",
            "cycle")
Totals = dict[tuple[str, str], tuple[int, int]]
"""Per (subscriber, currency): the amounts (micro-units) before and after a run."""

EVENT_COMPARED = ("kind", "reason", "subscriber_id", "plan_id", "cycle", "event_time", "bytes", "detail")


def sql_time(ms: int) -> str:
    """A UTC instant (whole seconds) as SQL that every backend compares with DateTime and DateTime64 columns."""
    return f"toDateTime({int(ms) // 1000}, 'UTC')"


def sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunReport:
    run_id: str
    kind: str
    period_from: int
    period_to: int
    closed_until: int
    usage_rows: int = 0
    records_new: int = 0
    records_changed: int = 0
    records_voided: int = 0
    records_unchanged: int = 0
    events_written: int = 0
    unrated_bytes: int = 0
    per_subscriber: Totals = field(default_factory=dict)
    """(subscriber, currency) -> (amount before, amount after) in micro-units, for subscribers whose total changed."""
    cycles: dict[str, list[str]] = field(default_factory=dict)
    """Per plan calendar (``"Europe/Berlin (cycle day 1)"``), the labels of the cycles this run rated."""

    @property
    def amount_delta(self) -> int:
        return sum(after - before for before, after in self.per_subscriber.values())

    def changes(self) -> dict[str, int]:
        """The records the run compared, by what changed (the ``change`` label of ``flowmed_rating_records``)."""
        return {"new": self.records_new, "changed": self.records_changed, "voided": self.records_voided,
                "unchanged": self.records_unchanged}


class RatingJob:
    """The rating job for one configuration. ``engine``/``outputs`` default to those the configuration describes."""

    def __init__(self, config: RatingSettings, *, engine: QueryEngine | None = None,
                 outputs: list[Output] | None = None, clock: Callable[[], float] = time.time,
                 owner: str | None = None, plans: PlanBook | None = None,
                 assignments: Assignments | None = None) -> None:
        from storage.factory import build_outputs
        from storage.outputs import BatchIdGenerator
        from storage.query import QueryEngine

        self.config = config
        self.clock = clock
        self._own_engine = engine is None
        self.engine = engine if engine is not None else QueryEngine.for_config(config, config.rating.target)
        self._own_outputs = outputs is None
        # the rating job writes as one more process: its own ClickHouse spool, never the store's housekeeper
        self.outputs = outputs if outputs is not None else build_outputs(config, process="rating", housekeeper=False)
        self._plans = plans
        self._windows: dict[tuple[str, int], tuple[int, int]] = {}
        self._injected_plans = plans  # given by the caller: never read from the plans file
        self._plans_stamp: tuple[int, int] | None = None
        self._assignments = assignments
        self._assignment_file = None if assignments is not None else AssignmentFile(
            config.data_path(config.rating.assignments_file))
        # 255: never a collector worker; the host bits keep the rating hosts of a cluster apart.
        self.batch_ids = BatchIdGenerator(worker=255, host=config.service.host_index)
        self.lease = StoreLease(self._lease_reader(), self._write_visible, owner=owner,
                                ttl_s=config.rating.lease_ttl_s, clock=clock)

    def _lease_reader(self) -> Callable[[str], pa.Table]:
        """How the lease reads: on a replicated ClickHouse cluster the connected replica first catches up with
        every lease row acknowledged anywhere (read-your-writes across rating hosts); elsewhere a plain query."""
        from storage.clickhouse.query import ClickHouseBackend

        backend = self.engine.backend
        if isinstance(backend, ClickHouseBackend) and backend.replicated:
            return lambda sql: backend.query(sql, sync=rt.RATING_LEASE.name)
        return self.engine.query

    # --- inputs -----------------------------------------------------------------------------------------------------

    @property
    def plans(self) -> PlanBook:
        """The plans file, re-read when it changes (a file that fails validation keeps the previous plans)."""
        if self._injected_plans is not None:
            return self._injected_plans
        path = self.config.data_path(self.config.rating.plans_file)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._plans is None or stamp != self._plans_stamp:
            try:
                self._plans = load_plans(path)
            except Exception:
                if self._plans is None:
                    raise
                log.exception("plans file %s is invalid; keeping the previous plans", path)
            self._plans_stamp = stamp
        return self._plans

    @property
    def assignments(self) -> Assignments:
        if self._assignments is not None:
            return self._assignments
        assert self._assignment_file is not None
        return self._assignment_file.current()

    def closed_until(self, now_ms: int) -> int:
        lateness = self.config.mediation.watermark_s + self.config.rating.extra_lateness_s
        return (now_ms - int(lateness * 1000)) // 1000 * 1000

    def _calendars(self) -> set[tuple[str, int]]:
        return {(v[0].timezone, v[0].cycle_day) for v in self.plans.plans.values()}

    def period_for_rate(self, closed_until: int) -> tuple[int, int]:
        """From the start of the cycle ``lookback_cycles`` before the current one (earliest over plan calendars)."""
        windows = {}
        for tz, day in self._calendars():
            _, _, idx, labels = cycles(tz, day, np.array([max(closed_until - 1, 0)]))
            y, m = map(int, labels[int(idx[0])].split("-"))
            m -= self.config.rating.lookback_cycles
            while m < 1:
                y, m = y - 1, m + 12
            windows[(tz, day)] = (cycle_bounds(tz, day, f"{y:04d}-{m:02d}")[0], closed_until)
        return self._set_windows(windows, (closed_until, closed_until))

    def period_for_range(self, from_: Instant, to: Instant, closed_until: int) -> tuple[int, int]:
        """The whole cycles overlapping [from, to), in each plan calendar on its own, up to closed_until.

        A :class:`~rating.timebase.WallTime` bound is read in each calendar's time zone (``--to 2026-11-01`` is the
        local midnight starting November 1 there, so a Berlin plan's November is not touched); UTC ms are the same
        instant everywhere. Raises ValueError when ``to`` is not after ``from`` in some calendar.
        """
        windows = {}
        for tz, day in self._calendars() or {("UTC", 1)}:
            lo, hi = resolve(from_, tz), resolve(to, tz)
            if hi <= lo:
                raise ValueError(f"--to ({iso(hi)} in {tz}) must be after --from ({iso(lo)})")
            windows[(tz, day)] = cycle_window(tz, day, lo, hi)
        start, end = self._set_windows(windows, (0, 0))
        return start, min(end, closed_until)

    def _set_windows(self, windows: dict[tuple[str, int], tuple[int, int]], default: tuple[int, int]
                     ) -> tuple[int, int]:
        """Remember, per plan calendar, the cycles a run rates: those starting in ``[lo, hi)``; returns the period
        to read (earliest ``lo``, latest ``hi``).

        With several calendars (cycle days or time zones) no instant starts a cycle in all of them, so usage is read
        from the earliest start to the latest end and, per calendar, only its own cycles are rated and compared
        (:meth:`_complete`): those are read whole. The cycles of other calendars that the read range cuts are left
        as they are.
        """
        self._windows = dict(windows)
        if not windows:
            return default
        return min(lo for lo, _ in windows.values()), max(hi for _, hi in windows.values())

    def _complete(self, t: pa.Table) -> pa.Table:
        """Rows of records (or events) whose cycle, in their plan's calendar, is one this run rates (read whole)."""
        if t.num_rows == 0 or len(set(self._windows.values())) <= 1:
            return t
        plan_ids = t["plan_id"].to_pylist()
        labels = t["cycle"].to_pylist()
        keep_pair: dict[tuple[str, str], bool] = {}
        keep = []
        for pid, label in zip(plan_ids, labels, strict=True):
            k = (pid, label)
            if k not in keep_pair:
                versions = self.plans.plans.get(pid)
                if not versions or not label:
                    keep_pair[k] = True  # unrated usage events: no cycle
                else:
                    cal = (versions[0].timezone, versions[0].cycle_day)
                    start = cycle_bounds(cal[0], cal[1], label)[0]
                    lo, hi = self._windows.get(cal, (start, start + 1))
                    keep_pair[k] = lo <= start < hi
            keep.append(keep_pair[k])
        return t.filter(pa.array(keep, pa.bool_()))

    # --- reading ----------------------------------------------------------------------------------------------------

    def _usage_where(self, period: tuple[int, int], subscriber: str | None, part: str) -> str:
        sub = f" AND subscriber_id = {sql_string(subscriber)}" if subscriber else ""
        return (f"source = {sql_string(self.config.rating.source)} AND direction IN ('up', 'down') "
                f"AND subscriber_id != '' AND interval_start >= {sql_time(period[0])} "
                f"AND interval_end <= {sql_time(period[1])}{sub}{part}")

    def count_subscribers(self, period: tuple[int, int], subscriber: str | None = None) -> int:
        t = self.engine.query(f"SELECT uniqExact(subscriber_id) AS n FROM usage "
                              f"WHERE {self._usage_where(period, subscriber, '')}")
        return int(t.column("n")[0].as_py()) if t.num_rows else 0

    def read_usage(self, period: tuple[int, int], subscriber: str | None = None, part: str = "") -> pa.Table:
        """Usage of closed intervals in ``period``, summed per key over all collectors, workers and corrections.

        ``part`` is an extra SQL condition (`` AND ...``) selecting a slice of subscribers.
        """
        final = " FINAL" if self.engine.target == "clickhouse" else ""  # usage is a ReplacingMergeTree there
        sql = (
            "SELECT subscriber_id, interval_start, interval_end, direction, traffic_class, sum(bytes) AS bytes "
            f"FROM usage{final} WHERE {self._usage_where(period, subscriber, part)} "
            "GROUP BY subscriber_id, interval_start, interval_end, direction, traffic_class")
        t = self.engine.query(sql)
        if t.num_rows == 0:
            return pa.table({"subscriber_id": pa.array([], pa.string()), "interval_start": pa.array([], pa.int64()),
                             "interval_end": pa.array([], pa.int64()), "direction": pa.array([], pa.string()),
                             "traffic_class": pa.array([], pa.string()), "bytes": pa.array([], pa.int64())})
        return t

    def _scope(self, column: str, period: tuple[int, int], subscriber: str | None, part: str = "") -> str:
        cond = f"{column} >= {sql_time(period[0])} AND {column} < {sql_time(period[1])}"
        return cond + (f" AND subscriber_id = {sql_string(subscriber)}" if subscriber else "") + part

    def read_current(self, period: tuple[int, int], subscriber: str | None = None, part: str = "") -> pa.Table:
        """Newest version of every rated record in scope, void ones included."""
        t = self.engine.query(rt.current_sql(self._scope("interval_start", period, subscriber, part),
                                             include_void=True))
        return _normalise(t, rt.RATED_USAGE)

    def read_current_events(self, period: tuple[int, int], subscriber: str | None = None, part: str = ""
                            ) -> pa.Table:
        t = self.engine.query(
            f"SELECT * FROM rating_events WHERE {self._scope('period_start', period, subscriber, part)} "
            "ORDER BY event_id, version DESC LIMIT 1 BY event_id")
        return _normalise(t, rt.RATING_EVENTS)

    # --- the run ----------------------------------------------------------------------------------------------------

    def run(self, kind: str = "rate", *, from_: Instant | None = None, to: Instant | None = None,
            subscriber: str | None = None, now_ms: int | None = None) -> RunReport:
        """One run under the lease: ``rate`` (current and lookback cycles) or ``rerate`` (the cycles overlapping
        [from_, to) in each plan calendar; a :class:`~rating.timebase.WallTime` bound is read in each plan's time
        zone, UTC ms are an instant)."""
        now = int(self.clock() * 1000) if now_ms is None else now_ms
        closed = self.closed_until(now)
        if kind == "rerate":
            if from_ is None or to is None:
                raise ValueError("rerate needs --from and --to")
            period = self.period_for_range(from_, to, closed)
        else:
            period = self.period_for_rate(closed)
        run_id = f"{kind}-{iso(now).replace(':', '').replace('-', '')}-{self.lease.owner.rsplit(':', 1)[-1]}"
        report = RunReport(run_id, kind, period[0], period[1], closed)
        report.cycles = {f"{tz} (cycle day {day})": cycle_labels(tz, day, lo, min(hi, period[1]))
                         for (tz, day), (lo, hi) in sorted(self._windows.items())}
        self.lease.acquire()
        try:
            if period[1] > period[0]:
                self._rate_period(report, period, subscriber, now)
            self._write_visible(rt.RATING_RUNS, rt.RATING_RUNS.to_arrow({
                "run_id": [run_id], "kind": [kind], "owner": [self.lease.owner], "started": [now],
                "finished": [int(self.clock() * 1000)], "period_from": [period[0]], "period_to": [period[1]],
                "closed_until": [closed], "subscriber_filter": [subscriber or ""], "usage_rows": [report.usage_rows],
                "records_new": [report.records_new], "records_changed": [report.records_changed],
                "records_voided": [report.records_voided], "records_unchanged": [report.records_unchanged],
                "events_written": [report.events_written], "unrated_bytes": [report.unrated_bytes],
                "amount_delta_micros": [report.amount_delta]}))
        finally:
            self.lease.release()
        log.info("rating run %s: period %s..%s, %d usage rows, %d new, %d changed, %d voided, %d unchanged records",
                 run_id, iso(period[0]), iso(period[1]), report.usage_rows, report.records_new,
                 report.records_changed, report.records_voided, report.records_unchanged)
        return report

    def _rate_period(self, report: RunReport, period: tuple[int, int], subscriber: str | None, now: int) -> None:
        """Rate the period slice by slice of subscribers (rating is independent per subscriber), which bounds the
        memory of a run: ``cityHash64(subscriber_id) % slices = k`` picks the same subscribers in the usage, the
        current records and the events."""
        slices = max(1, -(-self.count_subscribers(period, subscriber) // self.config.rating.slice_subscribers))
        self.lease.renew()
        totals: Totals = {}
        seen: set[tuple[str, int]] = set()
        for k in range(slices):
            part = f" AND cityHash64(subscriber_id) % {slices} = {k}" if slices > 1 else ""
            self._rate_slice(report, period, subscriber, part, now, totals, seen)
            self.lease.renew()
        self._idle_minimums(report, period, subscriber, now, totals, seen)
        report.per_subscriber = {k: v for k, v in sorted(totals.items()) if v[0] != v[1]}

    def _idle_minimums(self, report: RunReport, period: tuple[int, int], subscriber: str | None, now: int,
                       totals: Totals, seen: set[tuple[str, int]]) -> None:
        """Minimum charges of closed segments without any usage (subscribers who used nothing)."""
        new = idle_minimum_records(self.plans, self.assignments, period, period[1], seen, subscriber)
        current = self.engine.query(rt.current_sql(self._scope("interval_start", period, subscriber) +
                                                   " AND band = 'minimum'", include_void=True))
        current = _normalise(current, rt.RATED_USAGE)
        if current.num_rows:  # segments with usage were settled by their slice
            keep = [(s, t) not in seen for s, t in zip(current["subscriber_id"].to_pylist(),
                                                       current["interval_start"].to_pylist(), strict=True)]
            current = current.filter(pa.array(keep, pa.bool_()))
        self._apply(report, self._complete(new), self._complete(current), now, totals)

    def _rate_slice(self, report: RunReport, period: tuple[int, int], subscriber: str | None, part: str,
                    now: int, totals: Totals, seen: set[tuple[str, int]]) -> None:
        usage = prepare_usage(self.read_usage(period, subscriber, part))
        result = rate(usage, self.plans, self.assignments, closed_until_ms=period[1], presummed=True)
        report.usage_rows += result.usage_rows
        report.unrated_bytes += result.unrated_bytes
        seen |= result.segments
        current = self.read_current(period, subscriber, part)
        if current.num_rows:
            # Minimum records of segments without usage belong to the idle pass (_idle_minimums), not to this one.
            is_min = pc.equal(current["band"], "minimum").to_numpy(zero_copy_only=False)
            if is_min.any():
                subs = current["subscriber_id"].to_pylist()
                starts = current["interval_start"].to_pylist()
                keep = [not m or (subs[i], starts[i]) in result.segments for i, m in enumerate(is_min)]
                current = current.filter(pa.array(keep, pa.bool_()))
        self._apply(report, self._complete(result.records), self._complete(current), now, totals)
        events = self._complete(_bucket_events(result.events, period))
        ev_writes = diff_events(events, self._complete(self.read_current_events(period, subscriber, part)))
        report.events_written += ev_writes.num_rows
        if ev_writes.num_rows:
            self._write_visible(rt.RATING_EVENTS, _finish(ev_writes, rt.RATING_EVENTS, report.run_id, now))

    def _apply(self, report: RunReport, new: pa.Table, current: pa.Table, now: int, totals: Totals) -> None:
        """Write the difference between ``new`` and ``current``; count it; add up the per-subscriber totals."""
        writes, counts, sub_totals = diff_records(new, current)
        report.records_new += counts[0]
        report.records_changed += counts[1]
        report.records_voided += counts[2]
        report.records_unchanged += counts[3]
        for key, (before, after) in sub_totals.items():
            b0, a0 = totals.get(key, (0, 0))
            totals[key] = (b0 + before, a0 + after)
        if writes.num_rows:
            self._write_visible(rt.RATED_USAGE, _finish(writes, rt.RATED_USAGE, report.run_id, now))

    # --- writing ----------------------------------------------------------------------------------------------------

    def _write_visible(self, table: Table, data: pa.Table | pa.RecordBatch) -> None:
        """Write through every output and wait until the rows are readable (ClickHouse spool drained)."""
        from storage.outputs import conform, with_batch_id

        if isinstance(data, pa.Table):
            data = data.combine_chunks()
            batches = data.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.arrow_schema)]
            batch = batches[0] if len(batches) == 1 else pa.Table.from_batches(batches).combine_chunks().to_batches(
                max_chunksize=data.num_rows)[0]
        else:
            batch = data
        batch_id = self.batch_ids.next()
        batch = with_batch_id(table, conform(table, batch), batch_id)  # as the Sink does (rating_runs, rating_lease)
        for out in self.outputs:
            out.write(table, batch, batch_id)
        for out in self.outputs:
            out.flush()
        for out in self.outputs:  # the store returns at once; ClickHouse waits until its spool is delivered
            if not out.drain(120.0):
                raise RuntimeError(f"output {out.name}: rated records not delivered within 120 s (still spooled)")

    def close(self) -> None:
        if self._own_outputs:
            for out in self.outputs:
                out.close()
        if self._own_engine:
            self.engine.close()


# --- diffing --------------------------------------------------------------------------------------------------------


def _normalise(t: pa.Table, table: Table) -> pa.Table:
    """A query result with the table's columns, times as int64 ms, strings as strings (empty when no rows)."""
    cols = {}
    for c in table.columns:
        if c.name not in t.column_names:
            raise ValueError(f"{table.name}: query result lacks column {c.name}")
        arr = t.column(c.name)
        if c.kind == "timestamp_ms":
            arr = pc.cast(arr, pa.int64()) if not pa.types.is_integer(arr.type) else arr
        elif c.kind == "string":
            arr = pc.cast(arr, pa.string())
        else:
            arr = pc.cast(arr, c.arrow_type)
        cols[c.name] = arr
    return pa.table(cols)


def _finish(t: pa.Table, table: Table, run_id: str, now: int) -> pa.Table:
    n = t.num_rows
    cols = {}
    for c in table.columns:
        if c.name == "rating_run_id":
            cols[c.name] = pa.array([run_id] * n, pa.string())
        elif c.name == "rated_at":
            cols[c.name] = pa.array(np.full(n, now, dtype=np.int64)).cast(c.arrow_type)
        else:
            arr = t.column(c.name)
            cols[c.name] = arr.cast(c.arrow_type)
    return pa.table(cols, schema=table.arrow_schema)


def _cast_like(t: pa.Table, schema: pa.Schema) -> pa.Table:
    return pa.table({f.name: t.column(f.name).cast(f.type) for f in schema})


def _match(keys: pa.ChunkedArray | pa.Array, against: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For each key, its row in ``against`` (unique keys), or -1: one hash lookup per key, no join."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(against) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    idx = pc.index_in(keys, value_set=pa.chunked_array(against).combine_chunks()
                      if isinstance(against, pa.ChunkedArray) else against)
    rows: np.ndarray = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return rows


def diff_records(new: pa.Table, current: pa.Table) -> tuple[pa.Table, tuple[int, int, int, int], Totals]:
    """What to write so that the current state becomes ``new``: (rows with version and void, counts, per-subscriber
    before/after totals of every subscriber in either). Counts are (new, changed, voided, unchanged).

    Records are matched by ``record_id`` with hash lookups (``pc.index_in``) both ways and compared column by column
    on the matched rows only.
    """
    new = _cast_like(new, RECORD_SCHEMA).append_column("void", pa.array(np.zeros(new.num_rows, dtype=np.uint8)))
    pos = _match(new["record_id"], current["record_id"])          # new row -> current row
    in_cur = pos >= 0
    matched = np.flatnonzero(in_cur)
    same = np.zeros(new.num_rows, dtype=bool)
    cur_version = np.zeros(new.num_rows, dtype=np.uint64)
    if len(matched):
        take_new = pa.array(matched)
        take_cur = pa.array(pos[matched])
        eq = np.ones(len(matched), dtype=bool)
        for c in COMPARED:
            a = new[c].take(take_new)
            b = current[c].take(take_cur).cast(a.type)
            eq &= pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
        same[matched] = eq
        cur_version[matched] = current["version"].take(take_cur).to_numpy().astype(np.uint64)
    gone = np.ones(current.num_rows, dtype=bool)  # current rows no new record matched (record ids are unique)
    gone[pos[matched]] = False
    cur_void = current["void"].to_numpy().astype(bool) if current.num_rows else np.zeros(0, dtype=bool)
    write_void = gone & ~cur_void
    write_new = ~(in_cur & same)
    counts = (int((~in_cur).sum()), int((in_cur & ~same).sum()), int(write_void.sum()), int((in_cur & same).sum()))
    parts = []
    idx_new = np.flatnonzero(write_new)
    if len(idx_new):
        t = new.take(pa.array(idx_new))
        parts.append(t.append_column("version", pa.array(cur_version[idx_new] + 1)))
    idx_void = np.flatnonzero(write_void)
    if len(idx_void):
        t = current.take(pa.array(idx_void))
        m = len(idx_void)
        cols = {}
        for f in RECORD_SCHEMA:
            if f.name in ("bytes", "billable_quantity", "allowance_quantity", "cycle_to_date"):
                cols[f.name] = pa.array(np.zeros(m, dtype=np.uint64))
            elif f.name == "amount_micros":
                cols[f.name] = pa.array(np.zeros(m, dtype=np.int64))
            else:
                cols[f.name] = t[f.name].cast(f.type)
        cols["void"] = pa.array(np.ones(m, dtype=np.uint8))
        cols["version"] = pa.array(t["version"].to_numpy().astype(np.uint64) + 1)
        parts.append(pa.table(cols))
    writes = pa.concat_tables([_cast_like(p, parts[0].schema) for p in parts]) if parts else pa.table({})
    per_sub = _per_subscriber(new, current)
    return writes, counts, per_sub


def _totals(t: pa.Table) -> dict[tuple[str, str], int]:
    if t.num_rows == 0:
        return {}
    g = t.group_by(["subscriber_id", "currency"]).aggregate([("amount_micros", "sum")])
    return {(s, c): int(a) for s, c, a in zip(g["subscriber_id"].to_pylist(), g["currency"].to_pylist(),
                                                g["amount_micros_sum"].to_pylist(), strict=True)}


def _per_subscriber(new: pa.Table, current: pa.Table) -> Totals:
    live = current.filter(pc.equal(current["void"], 0)) if current.num_rows else current
    before, after = _totals(live), _totals(new)
    return {k: (before.get(k, 0), after.get(k, 0)) for k in sorted(set(before) | set(after))}


def _bucket_events(events: pa.Table, period: tuple[int, int]) -> pa.Table:
    """Events with their ``period_start``: the segment start (fair usage) or the 15-minute bucket (unrated)."""
    n = events.num_rows
    t = events.cast(EVENT_SCHEMA)
    kind = t["kind"].to_numpy(zero_copy_only=False)
    et = t["event_time"].to_numpy()
    ids = t["event_id"].to_pylist()
    ps = np.where(kind == "fair_usage",
                  np.array([int(i.rsplit("/", 1)[1]) if k == "fair_usage" else 0 for i, k in zip(ids, kind,
                                                                                                  strict=True)],
                           dtype=np.int64), et // EVENT_BUCKET_MS * EVENT_BUCKET_MS) if n else np.zeros(0, np.int64)
    return t.append_column("period_start", pa.array(ps, pa.int64()))


def diff_events(new: pa.Table, current: pa.Table) -> pa.Table:
    """Events to write (new or changed, with versions); events that disappeared get a withdrawn version."""
    pos = _match(new["event_id"], current["event_id"])
    in_cur = pos >= 0
    matched = np.flatnonzero(in_cur)
    same = np.zeros(new.num_rows, dtype=bool)
    version = np.zeros(new.num_rows, dtype=np.uint64)
    if len(matched):
        tn, tc = pa.array(matched), pa.array(pos[matched])
        eq = np.ones(len(matched), dtype=bool)
        for c in EVENT_COMPARED:
            a = new[c].take(tn)
            eq &= pc.fill_null(pc.equal(a, current[c].take(tc).cast(a.type)), False).to_numpy(zero_copy_only=False)
        same[matched] = eq
        version[matched] = current["version"].take(tc).to_numpy().astype(np.uint64)
    parts = []
    w = np.flatnonzero(~(in_cur & same))
    if len(w):
        t = new.take(pa.array(w)).select([*EVENT_SCHEMA.names, "period_start"])
        parts.append(t.append_column("version", pa.array(version[w] + 1)))
    if current.num_rows:
        gone = np.ones(current.num_rows, dtype=bool)
        gone[pos[matched]] = False
        withdrawn = pc.fill_null(pc.equal(current["detail"], "withdrawn"), False).to_numpy(zero_copy_only=False)
        g = np.flatnonzero(gone & ~withdrawn)
        if len(g):
            t = current.take(pa.array(g))
            cols = {name: t[name].cast(EVENT_SCHEMA.field(name).type) for name in EVENT_SCHEMA.names}
            cols["bytes"] = pa.array(np.zeros(len(g), dtype=np.uint64))
            cols["detail"] = pa.array(["withdrawn"] * len(g))
            cols["period_start"] = t["period_start"]
            cols["version"] = pa.array(t["version"].to_numpy().astype(np.uint64) + 1)
            parts.append(pa.table(cols))
    if not parts:
        return pa.table({})
    return pa.concat_tables([_cast_like(p, parts[0].schema) for p in parts])
