"""The mediation pipeline for flow records: validate -> de-duplicate -> split -> correlate -> classify -> aggregate.

``Mediator.process(flows, now_ms)`` takes a ``flows`` RecordBatch and returns RecordBatches by table name
(``usage``, ``rejects``, ``reconciliation``; a table is absent when it has no rows) for the Sink. Every step is a
compiled pass over the batch (numba: :mod:`mediation.correlate` and the steps' modules) or vectorised; per batch
there is no Python loop per record.

Correlation: each part of a record (a record split at interval boundaries) is looked up in the bindings at the
part's start time, the source address and the destination address. A subscriber on the source side gets an ``up``
row, one on the destination side a ``down`` row (traffic between two subscribers counts for both), and a part
with neither is ``unattributed`` (subscriber_id ''), kept and counted like the rest.

Attribution for the compliance stage: with :attr:`Mediator.keep_attribution` the first part of each record (which
starts at the record's ``flow_start``) is looked up with binding ids, and :meth:`Mediator.take_attribution` hands
these answers (an :class:`Attribution`) to ``ComplianceStage.process``, which would otherwise look up the same
addresses at the same time again.

Multi-worker: every usage and reconciliation row carries its exporter and rows are additive, so N workers (the
kernel keeps each exporter on one worker) produce partial rows that sum to what one worker produces; readers
``GROUP BY``. Interval closing depends only on ``now_ms`` and the watermark, so it is the same in every worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import numpy as np
import pyarrow as pa

from decoders.schema import FLOWS, ipv4_mapped
from mediation.aggregate import UsageAggregator
from mediation.classify import Classifier
from mediation.correlate import (
    ROW_DTYPES,
    address_words,
    attribute,
    count_parts,
    count_rows,
    distinct_addresses,
    readonly,
    split_parts,
)
from mediation.dedup import RECORD_KEY, Deduplicator
from mediation.hashing import hash_columns
from mediation.reconcile import FIELDS, Reconciler
from mediation.settings import ClassRule, MediationConfig
from mediation.stage import Sections, Tables
from mediation.subscribers.bindings import Bindings
from mediation.tables import DIRECTIONS, RECONCILIATION, REJECTS, USAGE
from mediation.validate import REASONS, validate_all

log = logging.getLogger(__name__)

_DIRECTION_NAMES = np.array(DIRECTIONS, dtype=object)
MAX_PARTS = 2_000_000
"""Record parts handled at once: bounds memory when an exporter sends many long flows (a day-long flow is 288)."""
_REASON_NAMES = np.array(("",) + REASONS, dtype=object)


@dataclass(frozen=True)
class Attribution:
    """Who held each record's source and destination address at the record's ``flow_start``, as the Mediator
    looked them up: one entry per record *with traffic* (bytes > 0 or packets > 0) of the batches mediated, in
    batch order, i.e. one per ``ip_detail_records`` row the compliance stage writes for the same batch. Counting
    only records with traffic keeps the entries aligned when records without traffic (pure NAT events) were left
    out of the Mediator's batch.

    ``known`` is False where the Mediator did not look the record up (rejected or duplicate records): the compliance
    stage looks those up itself. Subscriber indexes and binding ids are -1 where no binding matched."""

    start: np.ndarray
    """int64 ``flow_start`` of each record (the lookup time; lets a consumer check the entries are its records)."""
    known: np.ndarray
    src_sub: np.ndarray
    src_bid: np.ndarray
    dst_sub: np.ndarray
    dst_bid: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def concat(cls, parts: list[Attribution]) -> Attribution:
        """The attribution of consecutive batches as one."""
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("start", "known", "src_sub", "src_bid", "dst_sub", "dst_bid")))


def column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A column of an Arrow batch as numpy (``S16`` addresses, int64 ms times), zero-copy where possible."""
    arr = batch.column(name)
    if pa.types.is_fixed_size_binary(arr.type):
        width = arr.type.byte_width
        buf = arr.buffers()[1]
        return np.frombuffer(buf, dtype=f"S{width}", count=len(arr), offset=arr.offset * width)
    if pa.types.is_timestamp(arr.type):
        arr = arr.view(pa.int64())
    return cast(np.ndarray, arr.to_numpy(zero_copy_only=False))


class Mediator:
    """Flow mediation for one worker; see the module docstring."""

    def __init__(self, config: MediationConfig | Sections, bindings: Bindings, *, source: str = "flow",
                 reconciliation_source: str | None = None, refresh_interval_s: float | None = None,
                 worker: int | None = None, host: int = 0) -> None:
        """``config``: the process's settings (:class:`mediation.stage.Sections`) or just a ``MediationConfig``
        (then the bindings' in-memory index is not bounded). ``worker``: this
        process's worker index (several workers), part of the usage row ids: two workers that both saw an exporter
        (SO_REUSEPORT spreads an exporter's source ports) write distinct parts, not re-sends of one row. ``host``
        (``service.host_index``) is part of them too: the collector hosts of a cluster write into one usage table.

        ``source`` goes into usage rows, ``reconciliation_source`` (default: the same) into reconciliation rows
        (``flowmed reprocess`` uses 'reprocess' so re-processed rejects balance apart from the first pass)."""
        mc = config if isinstance(config, MediationConfig) else config.mediation
        subs = None if isinstance(config, MediationConfig) else config.subscribers
        self.config = mc
        self.bindings = bindings
        self.source = source
        self.worker = worker
        self.host = host
        self.reconciliation_source = reconciliation_source or source
        self.interval_ms = int(mc.interval_s * 1000)
        self.classifier = Classifier(mc.classes, mc.default_class)
        self._class_names = list(self.classifier.names)  # + classes retired by a reload while rows still use them
        self.dedup = Deduplicator(int(mc.dedup_window_s * 1000), mc.dedup_max_keys, mc.exporter_roles)
        self.aggregator = UsageAggregator(self.interval_ms, int(mc.watermark_s * 1000),
                                          int(mc.max_lateness_s * 1000) + 86400_000)
        self.reconciler = Reconciler(self.interval_ms)
        self._limits = dict(max_future_ms=int(mc.max_future_s * 1000), max_lateness_ms=int(mc.max_lateness_s * 1000),
                            max_duration_ms=int(mc.max_flow_duration_s * 1000),
                            max_bytes_per_packet=mc.max_bytes_per_packet)
        self._exporters: list[bytes] = []
        self._exporter_index: dict[bytes, int] = {}
        self._exporter_roles: list[int] = []
        if refresh_interval_s is None:
            refresh_interval_s = subs.refresh_interval_s if subs is not None else 1.0
        self._refresh_ms = int(refresh_interval_s * 1000)
        self._last_refresh: int | None = None
        self._names_cache: tuple[int, pa.Array] | None = None
        self._set_binding_limits(config)
        self.keep_attribution = False
        """Record each batch's :class:`Attribution` for :meth:`take_attribution` (the Pipeline sets this when the
        compliance stage runs); off, the Mediator looks addresses up without binding ids."""
        self._attributions: list[Attribution] = []
        self.counters: dict[str, int] = {k: 0 for k in (
            "records_in", "bytes_in", "records_rejected", "bytes_rejected", "records_duplicate", "bytes_duplicate",
            "bytes_attributed", "bytes_unattributed", "usage_rows", "correction_rows", "late_parts",
            "unbalanced_batches", *(f"rejected_{r}" for r in REASONS))}

    # --- exporters ---
    def _exporter_indexes(self, batch: pa.RecordBatch) -> np.ndarray:
        """This Mediator's index (int32) of each record's exporter, new exporters numbered in the order they appear
        (a compiled pass numbers the batch's distinct exporters; a dictionary maps those few)."""
        addresses = column(batch, "exporter")
        words = address_words(addresses)
        ids = np.empty(len(addresses), dtype=np.int32)
        first = np.empty(len(addresses), dtype=np.int64)
        size = 64
        while size < 2 * (len(self._exporters) + 16):
            size *= 2
        while True:
            found = distinct_addresses(words, ids, first, np.empty((size, 2), dtype=np.uint64),
                                       np.full(size, -1, dtype=np.int32))
            if found >= 0:
                break
            size *= 4
        raw = np.ascontiguousarray(addresses).view(np.uint8).reshape(-1, 16)
        local = np.empty(found, dtype=np.int32)
        for k in range(found):
            value = raw[first[k]].tobytes()  # (all 16 bytes: numpy's bytes drop trailing zeros)
            idx = self._exporter_index.get(value)
            if idx is None:
                idx = self._exporter_index[value] = len(self._exporters)
                self._exporters.append(value)
                self._exporter_roles.append(self.dedup.role_of(value))
            local[k] = idx
        indexes: np.ndarray = local[ids]
        return indexes

    def reload(self, config: MediationConfig | Sections, now: int = 0, /) -> None:
        """Apply a reloaded configuration (SIGHUP): class rules, validation limits, watermark, exporter roles and the
        de-duplication window. ``interval_s`` cannot change under open intervals: that takes a restart. (``now``:
        as every stage is given it; nothing here depends on it.)"""
        mc = config if isinstance(config, MediationConfig) else config.mediation
        if int(mc.interval_s * 1000) != self.interval_ms:
            log.warning("mediation.interval_s changes take effect at the next restart")
        old_names = self._class_names
        self.classifier = Classifier(mc.classes, mc.default_class)
        names = list(self.classifier.names)
        names += [n for n in old_names if n not in names]  # rows already summed keep their class
        remap = np.array([names.index(n) for n in old_names], dtype=np.uint8)
        self.aggregator.remap("cls", remap)
        self._class_names = names
        self._limits = dict(max_future_ms=int(mc.max_future_s * 1000), max_lateness_ms=int(mc.max_lateness_s * 1000),
                            max_duration_ms=int(mc.max_flow_duration_s * 1000),
                            max_bytes_per_packet=mc.max_bytes_per_packet)
        self.aggregator.watermark_ms = int(mc.watermark_s * 1000)
        self.dedup.configure(int(mc.dedup_window_s * 1000), mc.dedup_max_keys, mc.exporter_roles)
        self._exporter_roles = [self.dedup.role_of(e) for e in self._exporters]
        self.config = mc
        if not isinstance(config, MediationConfig):
            self._refresh_ms = int(config.subscribers.refresh_interval_s * 1000)
        self._set_binding_limits(config)

    def _set_binding_limits(self, config: MediationConfig | Sections) -> None:
        """Bound the bindings' in-memory index (``subscribers.memory_horizon_s``, ``max_memory_bindings``); only
        with the whole settings (a bare MediationConfig leaves the index unbounded, as before)."""
        if not isinstance(config, MediationConfig):
            subs = config.subscribers
            self.bindings.set_memory_limits(subs.memory_horizon_ms(self.config), subs.max_memory_bindings)

    def _maybe_refresh(self, now: int) -> None:
        """Pick up binding changes of other processes every ``refresh_interval_s`` (by ``now``; a clock that went
        back refreshes at once rather than waiting for it to catch up)."""
        last = self._last_refresh
        if last is None or now - last >= self._refresh_ms or now < last:
            self._last_refresh = now
            self.bindings.refresh()

    # --- the pipeline ---
    def process(self, flows: pa.RecordBatch, now_ms: int, /) -> Tables:
        """Mediate one batch of the ``flows`` table; returns batches by table name. Reads no clock and does no I/O
        of its own: the bindings are as the last :meth:`tick` refreshed them."""
        n = flows.num_rows
        if n == 0:
            return self._emit(now_ms, force=False, rejects=None)
        cols = {name: column(flows, name) for name in (
            "time_received", "flow_start", "flow_end", "exporter", "observation_domain", "src_addr", "dst_addr",
            "src_port", "dst_port", "protocol", "bytes", "packets")}
        exporter = readonly(self._exporter_indexes(flows), np.int32)
        nbytes = readonly(cols["bytes"], np.uint64)

        reason, all_valid = validate_all(cols["time_received"], cols["flow_start"], cols["flow_end"], nbytes,
                                         cols["packets"], **self._limits)
        role = np.asarray(self._exporter_roles, dtype=np.int8)[exporter]
        valid = reason == 0
        # de-duplication: per datagram for primary exporters, per record for shared ones (mediation.dedup)
        marked = {name: cols[name] for name in RECORD_KEY}
        marked.update(datagram=column(flows, "datagram"), datagram_offset=column(flows, "datagram_offset"))
        if all_valid:
            dup = self.dedup.mark(marked, role, now_ms)
        else:
            dup = np.zeros(n, dtype=bool)
            vidx = np.flatnonzero(valid)
            dup[vidx] = self.dedup.mark({name: v[vidx] for name, v in marked.items()}, role[vidx], now_ms)
        any_dup = bool(dup.any())
        ok = readonly(np.flatnonzero(valid & ~dup) if any_dup or not all_valid else np.arange(n), np.int64)

        # split, correlate and aggregate, in chunks of at most MAX_PARTS parts (long flows make many parts)
        attributed_b = np.zeros(n, dtype=np.uint64)
        unattributed_b = np.zeros(n, dtype=np.uint64)
        usage_b = np.zeros(n, dtype=np.uint64)
        found: list[tuple[np.ndarray, ...]] | None = [] if self.keep_attribution else None
        start, end = readonly(cols["flow_start"], np.int64), readonly(cols["flow_end"], np.int64)
        total = np.empty(len(ok), dtype=np.int64)
        count_parts(ok, start, end, self.interval_ms, total)
        for a, b in self._chunk_bounds(total):
            self._correlate(cols, exporter, nbytes, ok[a:b], now_ms, attributed_b, unattributed_b, usage_b, found,
                            int(total[b - 1] - (total[a - 1] if a else 0)))
        if found is not None:
            self._attributions.append(self._attribution(cols, ok, found))

        # the balance of this batch, checked in code
        # (a field left out counts as zero: the usual batch has no rejects and no duplicates)
        per_record = {"records_in": np.ones(n, dtype=np.uint64), "bytes_in": nbytes,
                      "bytes_attributed": attributed_b, "bytes_unattributed": unattributed_b,
                      "bytes_usage": usage_b}
        zero = np.zeros(n, dtype=np.uint64)
        if not all_valid:
            per_record["bytes_rejected"] = np.where(valid, zero, nbytes)
            per_record["records_rejected"] = (~valid).astype(np.uint64)
        if any_dup:
            per_record["bytes_duplicate"] = np.where(dup, nbytes, zero)
            per_record["records_duplicate"] = dup.astype(np.uint64)
        balanced = self.reconciler.add(cols["time_received"], exporter, per_record, {}, np.zeros(0, np.int64))

        c = self.counters
        c["records_in"] += n
        c["bytes_in"] += int(nbytes.sum())
        if not all_valid:
            c["records_rejected"] += int((~valid).sum())
            c["bytes_rejected"] += int(per_record["bytes_rejected"].sum())
        if any_dup:
            c["records_duplicate"] += int(dup.sum())
            c["bytes_duplicate"] += int(per_record["bytes_duplicate"].sum())
        c["bytes_attributed"] += int(attributed_b.sum())
        c["bytes_unattributed"] += int(unattributed_b.sum())
        c["unbalanced_batches"] += 0 if balanced else 1
        rejects = None
        if not all_valid:
            bad = np.flatnonzero(~valid)
            for code, count in zip(*np.unique(reason[bad], return_counts=True), strict=True):
                c[f"rejected_{REASONS[code - 1]}"] += int(count)
            keys = self.dedup.keys({name: cols[name][bad] for name in RECORD_KEY}, role[bad])  # the reject ids
            rejects = self._rejects(flows, bad, reason[bad], keys, now_ms)
        return self._emit(now_ms, force=False, rejects=rejects)

    @staticmethod
    def _attribution(cols: dict[str, np.ndarray], ok: np.ndarray, found: list[tuple[np.ndarray, ...]]
                     ) -> Attribution:
        """The :class:`Attribution` of one batch from the lookups of records ``ok`` (``found``: per chunk of
        ``ok``, src_sub, src_bid, dst_sub, dst_bid). Copies only where records were not mediated or had no
        traffic."""
        n = len(cols["flow_start"])
        dtypes = (np.int32, np.int64, np.int32, np.int64)
        values = [np.concatenate(v) if len(found) > 1 else v[0] for v in zip(*found, strict=True)] if found else \
            [np.zeros(0, dtype=d) for d in dtypes]
        if len(ok) == n:  # every record was mediated: the lookups are in record order already
            known = np.ones(n, dtype=bool)
        else:
            known = np.zeros(n, dtype=bool)
            known[ok] = True
            full = [np.full(n, -1, dtype=d) for d in dtypes]
            for f, v in zip(full, values, strict=True):
                f[ok] = v
            values = full
        start = np.asarray(cols["flow_start"], dtype=np.int64)
        traffic = (cols["bytes"] > 0) | (cols["packets"] > 0)
        if not traffic.all():
            rows = np.flatnonzero(traffic)
            start, known, values = start[rows], known[rows], [v[rows] for v in values]
        return Attribution(start, known, *values)

    def take_attribution(self) -> Attribution | None:
        """The :class:`Attribution` of the batches processed since the last call (None when there were none), in
        the order they were processed; forgets them."""
        parts, self._attributions = self._attributions, []
        return Attribution.concat(parts) if parts else None

    def _chunks(self, start: np.ndarray, end: np.ndarray) -> list[np.ndarray]:
        """Index ranges of the records such that each range splits into at most MAX_PARTS parts."""
        total = np.empty(len(start), dtype=np.int64)
        count_parts(readonly(np.arange(len(start)), np.int64), readonly(start, np.int64), readonly(end, np.int64),
                    self.interval_ms, total)
        return [np.arange(a, b) for a, b in self._chunk_bounds(total)]

    @staticmethod
    def _chunk_bounds(total: np.ndarray) -> list[tuple[int, int]]:
        """``[a, b)`` ranges of the records, from ``total`` (the parts of the records up to each, see
        :func:`count_parts`), such that each range splits into at most MAX_PARTS parts (but a record of more parts
        alone); empty without records."""
        if not len(total):
            return []
        if total[-1] <= MAX_PARTS:
            return [(0, len(total))]
        cuts = np.searchsorted(total, np.arange(MAX_PARTS, int(total[-1]), MAX_PARTS), side="right")
        bounds = np.unique(np.concatenate(([0], cuts, [len(total)]))).tolist()
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]

    def _correlate(self, cols: dict[str, np.ndarray], exporter: np.ndarray, nbytes: np.ndarray, ok: np.ndarray,
                   now_ms: int, attributed_b: np.ndarray, unattributed_b: np.ndarray, usage_b: np.ndarray,
                   found: list[tuple[np.ndarray, ...]] | None, nparts: int) -> None:
        """Split records ``ok`` (``nparts`` parts) at interval boundaries, look up both addresses at each part's
        start, classify and aggregate; add each record's attributed / unattributed / usage bytes into the given
        arrays, and with ``found`` append the first parts' answers with binding ids (src_sub, src_bid, dst_sub,
        dst_bid of records ``ok``)."""
        record, istart, pstart = (np.empty(nparts, dtype=np.int64) for _ in range(3))
        values = np.empty((nparts, 3), dtype=np.uint64)  # bytes, packets, flows
        src_hi, src_lo, dst_hi, dst_lo = (np.empty(nparts, dtype=np.uint64) for _ in range(4))
        first = np.empty(len(ok), dtype=np.int64)
        split_parts(ok, readonly(cols["flow_start"], np.int64), readonly(cols["flow_end"], np.int64),
                    self.interval_ms, nbytes, readonly(cols["packets"], np.uint64), address_words(cols["src_addr"]),
                    address_words(cols["dst_addr"]), record, istart, pstart, values, src_hi, src_lo, dst_hi, dst_lo,
                    first)
        if found is None:
            src_sub, _ = self.bindings.lookup_split(src_hi, src_lo, pstart, ids=False)
            dst_sub, _ = self.bindings.lookup_split(dst_hi, dst_lo, pstart, ids=False)
        else:
            src_sub, first_src_sub, first_src_bid = self._lookup_first_with_ids(src_hi, src_lo, pstart, first)
            dst_sub, first_dst_sub, first_dst_bid = self._lookup_first_with_ids(dst_hi, dst_lo, pstart, first)
            found.append((first_src_sub, first_src_bid, first_dst_sub, first_dst_bid))
        src_sub = np.ascontiguousarray(src_sub, dtype=np.int32)
        dst_sub = np.ascontiguousarray(dst_sub, dtype=np.int32)
        rows = {c: np.empty(count_rows(src_sub, dst_sub), dtype=t) for c, t in ROW_DTYPES.items()}
        attribute(record, istart, values, src_hi, src_lo, dst_hi, dst_lo, src_sub, dst_sub,
                  readonly(cols["src_port"], np.uint16), readonly(cols["dst_port"], np.uint16),
                  readonly(cols["protocol"], np.uint8), exporter, rows["interval_start"], rows["sub"],
                  rows["direction"], rows["exporter"], rows["bytes"], rows["packets"], rows["flows"],
                  rows["remote_hi"], rows["remote_lo"], rows["remote_port"], rows["protocol"], attributed_b,
                  unattributed_b, usage_b)
        rows["cls"] = self.classifier.classify(rows.pop("remote_hi"), rows.pop("remote_lo"), rows.pop("remote_port"),
                                               rows.pop("protocol"))
        self.aggregator.add(rows, now_ms)

    def _lookup_first_with_ids(self, hi: np.ndarray, lo: np.ndarray, pstart: np.ndarray, first: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Subscriber of every part, and subscriber and binding id of each record's first part (``first``): the
        first parts looked up with binding ids, the later parts of split records without."""
        if len(first) == len(hi):  # the common case: no record was split
            sub, bid = self.bindings.lookup_split(hi, lo, pstart, ids=True)
            return sub, sub, cast(np.ndarray, bid)  # asked with ids
        fsub, fbid = self.bindings.lookup_split(hi[first], lo[first], pstart[first], ids=True)
        later = np.ones(len(hi), dtype=bool)
        later[first] = False
        later = np.flatnonzero(later)
        lsub, _ = self.bindings.lookup_split(hi[later], lo[later], pstart[later], ids=False)
        sub = np.empty(len(hi), dtype=np.result_type(fsub, lsub))
        sub[first], sub[later] = fsub, lsub
        return sub, fsub, cast(np.ndarray, fbid)  # asked with ids

    def tick(self, now_ms: int, /) -> Tables:
        """Call about once a second: picks up binding changes made by other processes (every
        ``subscribers.refresh_interval_s``), closes the intervals whose watermark has passed when no flows arrive,
        and drops long-closed bindings from the in-memory index (hourly, in the background)."""
        self._maybe_refresh(now_ms)
        self.bindings.maybe_prune(now_ms)
        return self._emit(now_ms, force=False, rejects=None)

    def close(self, now_ms: int, /) -> Tables:
        """Emit every open interval and every pending reconciliation row (shutdown)."""
        return self._emit(now_ms, force=True, rejects=None)

    def close_all(self, now_ms: int) -> Tables:
        """:meth:`close` (the name its tools and tests know)."""
        return self.close(now_ms)

    # --- output batches ---
    def _rejects(self, flows: pa.RecordBatch, rows: np.ndarray, reason: np.ndarray, keys: np.ndarray,
                 now_ms: int) -> pa.RecordBatch:
        taken = flows.take(pa.array(rows))
        arrays = []
        for col in REJECTS.columns:
            if col.name == "reason":
                arrays.append(pa.array(_REASON_NAMES[reason], type=pa.string()))
            elif col.name == "rejected_at":
                arrays.append(pa.array(np.full(len(rows), now_ms, dtype=np.int64)).cast(col.arrow_type))
            elif col.name == "reject_id":
                arrays.append(pa.array(keys, type=pa.uint64()))
            else:
                arrays.append(taken.column(col.name).cast(col.arrow_type))
        return pa.RecordBatch.from_arrays(arrays, schema=REJECTS.arrow_schema)

    def _emit(self, now_ms: int, force: bool, rejects: pa.RecordBatch | None) -> dict[str, pa.RecordBatch]:
        out: dict[str, pa.RecordBatch] = {}
        rows = self.aggregator.emit(now_ms, force=force)
        self.counters["late_parts"] = self.aggregator.late_parts
        if rows is not None and len(rows["bytes"]):
            out["usage"] = self._usage_batch(rows, now_ms)
        if rejects is not None and rejects.num_rows:
            out["rejects"] = rejects
        recon = self.reconciler.emit(now_ms, force=force)
        if recon:
            out["reconciliation"] = self._reconciliation_batch(recon, now_ms)
        return out

    def _exporter_array(self) -> np.ndarray:
        return np.array(self._exporters, dtype="S16") if self._exporters else np.zeros(1, dtype="S16")

    def _usage_batch(self, rows: dict[str, np.ndarray], now_ms: int) -> pa.RecordBatch:
        names, hashes = self.bindings.subscriber_arrays()
        sub = rows["sub"].astype(np.int64)  # -1 -> the extra last entry: ''
        exporter = self._exporter_array()[rows["exporter"]]
        created = np.full(len(sub), now_ms, dtype=np.int64)
        parts = [hashes[sub], rows["interval_start"], rows["direction"], rows["cls"], exporter, rows["correction"],
                 created]
        if self.worker is not None:
            parts.append(np.full(len(sub), self.worker, dtype=np.uint64))
        if self.host:  # host 0 keeps the ids of a single host
            parts.append(np.full(len(sub), self.host << 8, dtype=np.uint64))
        row_id = hash_columns(*parts, seed=0xF10)
        self.counters["usage_rows"] += len(sub)
        self.counters["correction_rows"] += int((rows["correction"] > 0).sum())
        batch = USAGE.to_arrow({
            "interval_start": rows["interval_start"], "interval_end": rows["interval_start"] + self.interval_ms,
            "bytes": rows["bytes"], "packets": rows["packets"], "flows": rows["flows"], "exporter": exporter,
            "correction": rows["correction"], "created": created, "row_id": row_id,
        })
        # strings by index into small Arrow arrays: no Python object per row
        strings = {
            "subscriber_id": self._arrow_names(names).take(pa.array(np.where(sub < 0, len(names) - 1, sub))),
            "direction": pa.array(DIRECTIONS, pa.string()).take(pa.array(rows["direction"])),
            "traffic_class": pa.array(self._class_names, pa.string()).take(pa.array(rows["cls"])),
            "source": pa.array([self.source] * len(sub), pa.string()),
        }
        arrays = [strings.get(name, batch.column(name)) for name in USAGE.column_names]
        return pa.RecordBatch.from_arrays(arrays, schema=USAGE.arrow_schema)

    def _arrow_names(self, names: np.ndarray) -> pa.Array:
        cached = self._names_cache
        if cached is None or cached[0] != len(names):
            cached = self._names_cache = (len(names), pa.array(names.tolist(), pa.string()))
        return cached[1]

    def _reconciliation_batch(self, recon: list[tuple[int, int, np.ndarray, bool]], now_ms: int) -> pa.RecordBatch:
        exporters = self._exporter_array()
        cols: dict[str, np.ndarray] = {
            "interval_start": np.array([x[0] for x in recon], dtype=np.int64),
            "exporter": exporters[np.array([x[1] for x in recon], dtype=np.int64)],
            "balanced": np.array([x[3] for x in recon], dtype=np.uint8),
        }
        cols["interval_end"] = cols["interval_start"] + self.interval_ms
        values = np.stack([x[2] for x in recon])
        for i, f in enumerate(FIELDS):
            cols[f] = values[:, i]
        cols["source"] = np.full(len(recon), self.reconciliation_source, dtype=object)
        cols["created"] = np.full(len(recon), now_ms, dtype=np.int64)
        return RECONCILIATION.to_arrow(cols)


def warm_up() -> None:
    """Compile the Mediator's kernels now (or load them from numba's disk cache), so the first batch of a mediating
    daemon does not wait for them: a small batch through a Mediator (a record split over three intervals between
    two subscribers, an unattributed one of another exporter and receive interval, a rejected one) takes every
    kernel with the signature real batches use. The lookup, record key and de-duplication kernels are
    :func:`mediation.dedup.warm_up`'s."""
    t0 = 1_764_000_000_000
    bindings = Bindings()
    bindings.open("a", "10.0.0.1", t0 - 3_600_000)
    bindings.open("b", "10.0.0.2", t0 - 3_600_000)
    bindings.commit()
    cols = FLOWS.empty_columns(3)
    cols["src_addr"] = ipv4_mapped(np.array([0x0A000001, 0x08080808, 0x0A000001], dtype=np.uint32))
    cols["dst_addr"] = ipv4_mapped(np.array([0x0A000002, 0x08080404, 0x0A000002], dtype=np.uint32))
    cols["exporter"] = ipv4_mapped(np.array([0xC0000201, 0xC0000202, 0xC0000201], dtype=np.uint32))
    cols["flow_start"] = np.array([t0 - 100_000, t0, t0], dtype=np.int64)
    cols["flow_end"] = np.array([t0 + 350_000, t0 + 1000, t0 + 1000], dtype=np.int64)
    cols["time_received"] = np.array([t0 + 351_000, t0 + 2000, t0 + 2000], dtype=np.int64)
    cols["bytes"] = np.array([4500, 300, 0], dtype=np.uint64)
    cols["packets"] = np.array([45, 3, 0], dtype=np.uint64)
    m = Mediator(MediationConfig(classes=[ClassRule("web", ports=[443])]), bindings)
    m.process(FLOWS.to_arrow(cols), t0 + 351_000)
    m.close_all(t0 + 351_000)
