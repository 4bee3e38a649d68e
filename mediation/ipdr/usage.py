"""SAMIS cumulative service-flow counters -> usage deltas, exactly once, with state that survives restarts.

ServiceOctetsPassed/ServicePktsPassed count from the creation of a service flow (SF). A usage delta is the
difference between successive records of the same **SF instance**, keyed by ``(CmtsHostName, CmMacAddr,
ServiceIdentifier, ServiceDirection, ServiceTimeCreated)`` (SFIDs are reused; the creation time tells instances
apart). Per record, in ``RecCreationTime`` order:

* ``stale``: not newer than what the state holds for the instance (a redelivery after reconnect or failover, an old
  record replayed): delta 0, state unchanged. A Stop leaves a tombstone, so a replayed record of a deleted flow is
  stale too (tombstones are forgotten after ``tombstone_retention_s``).
* ``duplicate``: same instance and same RecCreationTime as the record before it: delta 0.
* ``first``: no previous record: the delta is the whole counter (since the flow's creation), unless the flow was
  created before flowmed's first session with that CMTS (``preexisting="baseline"``: the record only sets the
  baseline, delta 0, ``baseline``). "Before" is judged against when flowmed first started a flow (FLOW_START) on a
  connection to that exporter (:meth:`IpdrUsage.session_started`, kept in ``first_sessions.json`` from then on,
  across restarts), never against the first record's time: a CMTS reports every 5 to 60 minutes, and flows created
  during the first interval are new. A creation time up to ``CREATED_AHEAD_CS`` after the record's own sysUpTime
  (clock granularity) is taken as "just now", not as 497 days ago through the 2^32 wrap.
* ``delta``: counter grew: current - previous.
* ``reboot``: CmtsSysUpTime does not agree with the time elapsed since the previous record (it went back or jumped):
  the CMTS restarted, counters restarted: delta = current.
* ``wrap`` / ``wrap32``: counter went down without a reboot: a 64-bit wrap (a 32-bit one when the previous value was
  in [2^31, 2^32), for CMTSs still wrapping at 32 bits). ``reset``: a "64-bit wrap" of more than 2^56 octets is taken as
  a counter reset the sysUpTime check could not see (e.g. a template without CmtsSysUpTime): delta = current.
* A Stop record (RecType 2) gives its delta, then leaves a tombstone; a later record with the same key and a newer
  time is a new instance. Instances not seen for ``tombstone_retention_s`` (tombstones, and flows that vanished
  without a Stop, as in a CMTS reboot) are forgotten when the journal is compacted.
* Missing interims (suppressed, lost) need nothing: the next delta covers the gap.

Usage rows: a delta covers the period since the previous record (or since the flow's creation, or the CMTS's boot
after a reboot); it is spread over the usage intervals of that period in proportion to time (integer parts that sum
exactly to the delta), so time-of-day rating sees traffic where it happened, as far as the SAMIS interval tells.

Exactly once: the caller writes the usage rows, makes them durable (``Sink.flush()``), then :meth:`IpdrUsage.commit`
appends the changed state (SF baselines and per-session DSN watermarks) to a journal and fsyncs it, and only then
acknowledges to the CMTS. A record redelivered after a collector restart is below the watermark (dropped) or stale
(delta 0). The remaining window — a crash after the usage is durable but before the journal is — reproduces the
same rows with the same ``row_id`` (and ``created``), which the ReplacingMergeTree collapses on a server.

Hot path: everything is numpy on the batch except one dict lookup per record (``dict.get`` over a list of keys,
~0.1 µs) to find the instance's state row.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from decoders.ipdr.samis import CANONICAL, REC_STOP, samis_kind
from decoders.ipdr.session import RecordsReceived
from mediation.hashing import hash_columns, string_hash
from mediation.ipdr.columns import (
    Coded,
    Const,
    empty_columns,
    fields_json,
    fill_samis,
    mac_column,
    string_codes,
    to_batch,
    to_column,
)
from mediation.ipdr.journal import STATE_DTYPE, StateJournal
from mediation.ipdr.subscribers import CmSubscribers
from mediation.ipdr.tables import IPDR_RECORDS
from mediation.stage import Sections, Tables
from mediation.tables import USAGE

log = logging.getLogger(__name__)

AddressLookup = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(addresses S16, times ms) -> subscriber ids`` (object array, '' where unknown)."""

REBOOT_TOLERANCE_CS = 6000  # 60 s of sysUpTime drift before calling it a reboot
PREEXISTING_TOLERANCE_MS = 60_000  # flows created this little before the first session still count (clock skew)
CREATED_AHEAD_CS = 6000  # ServiceTimeCreated this far past the record's sysUpTime is "now", not a 2^32 wrap
U32 = np.uint64(2**32)


@dataclass(frozen=True)
class IpdrRecords:
    """The input of :class:`IpdrUsage` as a stage: one :class:`RecordsReceived` of a session and its exporter."""

    event: RecordsReceived
    exporter: str
    """The CMTS's name (config name or address), for the DSN watermark."""
    exporter_ip: bytes
    """Its S16 address, for the ``exporter`` columns."""
    session_name: str = ""


@dataclass
class UsageResult:
    """What one batch of records produced."""

    ipdr_records: pa.RecordBatch
    usage: pa.RecordBatch
    counters: dict[str, int] = field(default_factory=dict)


class IpdrUsage:
    """Turns decoded SAMIS records into ``ipdr_records`` and ``usage`` batches; holds the durable delta state.

    Args:
        state_dir: where the state lives (None: in memory only, for tests and benchmarks).
        subscribers: CM MAC -> subscriber map.
        interval_s: usage interval (the mediation's), aligned to the epoch; a delta goes to the interval that holds
            the record's creation time (the end of the period it covers).
        preexisting: ``"baseline"`` (flows created before flowmed's first session with the CMTS only set a
            baseline) or ``"count"``.
        address_lookup: optional ``(addresses S16, times ms) -> subscriber ids`` (object array, '' unknown) used
            for records whose CM MAC is not in the static map (the address bindings, by CmIpv4Addr).
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, subscribers: CmSubscribers | None = None, *,
                 interval_s: int = 300, preexisting: str = "baseline", tombstone_retention_s: float = 7 * 86400,
                 compact_rows: int = 1_000_000,
                 address_lookup: AddressLookup | None = None, max_span_s: float = 86400.0) -> None:
        self.state = StateJournal(Path(state_dir) if state_dir is not None else None)
        self._checkpoint: tuple[Any, ...] | None = None
        """The state before the last :meth:`mediate` call, for :meth:`undo_last`."""
        self.subscribers = subscribers or CmSubscribers(None)
        self.interval_ms = int(interval_s * 1000)
        self.preexisting = preexisting
        self.tombstone_retention_ms = int(tombstone_retention_s * 1000)
        self.compact_rows = compact_rows
        self.address_lookup = address_lookup
        self.max_span_ms = int(max_span_s * 1000)
        self.counters: dict[str, int] = {}

    def _count(self, name: str, n: int) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + int(n)

    def session_started(self, exporter: str, now_ms: int) -> int:
        """flowmed starts a session (FLOW_START) with ``exporter`` at ``now_ms`` (wall clock). Only the first time
        counts, durable at once and kept across restarts: flows created before it are pre-existing. Returns it."""
        return self.state.record_first_session(exporter, now_ms)

    # -- watermarks -------------------------------------------------------------------------------------------

    @staticmethod
    def _wm_key(exporter: str, ev: RecordsReceived) -> str:
        return f"{exporter}|{ev.session_id}|{ev.exporter_boot_time}"

    def process(self, records: IpdrRecords, now: int, /) -> Tables:
        """:meth:`mediate` as a :class:`mediation.stage.Stage`: the ``usage`` and ``ipdr_records`` batches (those
        with rows)."""
        result = self.mediate(records.event, records.exporter, records.exporter_ip, now, records.session_name)
        return {name: batch for name, batch in (("usage", result.usage), ("ipdr_records", result.ipdr_records))
                if batch.num_rows}

    def mediate(self, ev: RecordsReceived, exporter: str, exporter_ip: bytes, now_ms: int,
                session_name: str = "") -> UsageResult:
        """Turn one :class:`RecordsReceived` into table batches and update the (uncommitted) state.

        ``exporter`` names the CMTS (config name or address) for the DSN watermark; ``exporter_ip`` is its S16
        address for the ``exporter`` columns. Records at or below the session's durable DSN watermark were already
        processed before a reconnect or restart and are dropped (counted as ``redelivered``).
        """
        self._checkpoint = self.state.checkpoint()
        recs = ev.records
        n = len(recs)
        wm_key = self._wm_key(exporter, ev)
        watermark = self.state.meta["watermarks"].get(wm_key)
        keep = np.ones(n, dtype=bool) if watermark is None else ev.dsn > np.uint64(watermark)
        self._count("redelivered", n - int(keep.sum()))
        if n:
            marks = self.state.meta["watermarks"]
            if wm_key not in marks:  # a new exporter boot: keep only the two latest boots of this session
                prefix = wm_key.rpartition("|")[0] + "|"
                older = sorted((k for k in marks if k.startswith(prefix)), key=lambda k: int(k.rpartition("|")[2]))
                for k in older[:-1]:
                    del marks[k]
            marks[wm_key] = max(int(ev.dsn.max()), watermark or 0)
        cols = {CANONICAL.get(k.lower(), k): v for k, v in recs.columns.items()}
        if not keep.all():
            idx = np.flatnonzero(keep)
            cols = {k: (v.take(pa.array(idx)) if isinstance(v, pa.Array) else v[idx]) for k, v in cols.items()}
        m = int(keep.sum())
        dsn, dup = ev.dsn[keep], ev.duplicate[keep]
        kind = samis_kind(recs.template, session_name)
        out = empty_columns(IPDR_RECORDS, m)
        out["time_received"][:] = now_ms
        out["exporter"][:] = exporter_ip
        out["session_id"][:] = ev.session_id
        out["document_id"] = Const(str(uuid.UUID(bytes=bytes(ev.document_id))))
        out["dsn"] = dsn.astype(np.uint64)
        out["duplicate"] = dup.astype(np.uint8)
        out["template"] = Const(recs.template.type_name)
        usage = empty_columns(USAGE, 0)
        if m and kind:
            fill_samis(out, cols)
            usage = self._deltas(out, cols, exporter_ip, exporter, now_ms)
        elif m:
            types = {f.name.lower(): f.type_id for f in recs.template.fields}
            out["fields"] = fields_json(cols, m, {CANONICAL.get(k, k).lower(): v for k, v in types.items()})
            out["delta_reason"] = Const("not_samis")
            for name, col in (("cmts_host", "CmtsHostName"), ("rec_creation_time", "RecCreationTime")):
                if col in cols:
                    out[name] = to_column(cols[col], IPDR_RECORDS.column(name))
            if "CmMacAddr" in cols:
                out["cm_mac"] = mac_column(cols["CmMacAddr"])
        self._count("records", m)
        return UsageResult(to_batch(IPDR_RECORDS, out, m), to_batch(USAGE, usage, len(usage["bytes"])),
                           dict(self.counters))

    # -- deltas -----------------------------------------------------------------------------------------------

    def _deltas(self, out: dict[str, Any], cols: dict[str, Any], exporter_ip: bytes, exporter: str,
                now_ms: int) -> dict[str, Any]:
        n = len(out["dsn"])
        if not all(c in cols for c in ("CmMacAddr", "ServiceIdentifier", "ServiceDirection",
                                       "ServiceOctetsPassed")):
            out["delta_reason"] = Const("not_samis")
            self._count("missing_fields", n)
            return empty_columns(USAGE, 0)
        host_codes, host_names = string_codes(out["cmts_host"], n)
        mac = np.asarray(cols["CmMacAddr"], dtype=np.uint64)
        sfid = out["service_identifier"].astype(np.uint64)
        direction = out["service_direction"]
        created = out["service_time_created"].astype(np.int64)
        octets, packets = out["service_octets_passed"], out["service_pkts_passed"]
        rec_time, rec_type = out["rec_creation_time"], out["rec_type"]
        sys_up = out["cmts_sys_up_time"].astype(np.int64)
        has_up = "CmtsSysUpTime" in cols
        host_hash = np.array([string_hash(h) for h in host_names], dtype=np.uint64)[host_codes]
        keys = hash_columns(host_hash, mac, sfid, direction.astype(np.int64), created)

        st = self.state
        rows = st.lookup(keys)
        srow = st.rows[np.maximum(rows, 0)]
        known = rows >= 0
        # stale: not newer than the state (redelivery, replay, or a record of a flow already stopped)
        stale = known & (rec_time <= srow["rec_time"])
        live = ~stale
        idx = np.flatnonzero(live)
        order = idx[np.lexsort((rec_time[idx], keys[idx]))]
        k = keys[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = k[1:] != k[:-1]
        prev_octets = np.zeros(len(order), np.uint64)
        prev_packets = np.zeros(len(order), np.uint64)
        prev_time = np.zeros(len(order), np.int64)
        prev_up = np.zeros(len(order), np.int64)
        has_prev = np.zeros(len(order), dtype=bool)
        # previous record: from the state for the first occurrence of a key, else the record before it in the batch
        s = srow[order]
        from_state = first & known[order] & (s["stopped"] == 0)
        has_prev[from_state] = True
        prev_octets[from_state], prev_packets[from_state] = s["octets"][from_state], s["packets"][from_state]
        prev_time[from_state], prev_up[from_state] = s["rec_time"][from_state], s["sys_up"][from_state]
        inner = np.flatnonzero(~first)
        before = order[inner - 1]
        ok = rec_type[before] != REC_STOP  # after a Stop, the same key starts a new instance
        has_prev[inner[ok]] = True
        prev_octets[inner] = octets[before]
        prev_packets[inner] = packets[before]
        prev_time[inner] = rec_time[before]
        prev_up[inner] = sys_up[before]

        cur_o, cur_p, t = octets[order], packets[order], rec_time[order]
        duplicate = has_prev & (t == prev_time)
        if has_up:
            elapsed_cs = (t - prev_time) // 10
            advanced_cs = (sys_up[order] - prev_up) % (1 << 32)
            reboot = has_prev & ~duplicate & (np.abs(advanced_cs - elapsed_cs) > np.maximum(REBOOT_TOLERANCE_CS,
                                                                                             elapsed_cs // 10))
        else:
            reboot = np.zeros(len(order), dtype=bool)
        cont = has_prev & ~duplicate & ~reboot
        with np.errstate(over="ignore"):
            d_o = np.where(cont, cur_o - prev_octets, cur_o)
            d_p = np.where(cont, cur_p - prev_packets, cur_p)
            wrapped = cont & (cur_o < prev_octets)
            wrap32 = wrapped & (prev_octets < U32) & (prev_octets >= U32 // np.uint64(2))
            d_o = np.where(wrap32, d_o + U32, d_o)
            wrap32_p = cont & (cur_p < prev_packets) & (prev_packets < U32) & (prev_packets >= U32 // np.uint64(2))
            d_p = np.where(wrap32_p, d_p + U32, d_p)
        # A "64-bit wrap" of more than 2^56 octets (72 PB in one interval) is a counter reset the sysUpTime check
        # could not see (no CmtsSysUpTime in the template, or a reset without a reboot): count from zero.
        reset = wrapped & ~wrap32 & (d_o > np.uint64(2**56))
        d_o = np.where(reset, cur_o, d_o)
        d_p = np.where(reset, cur_p, d_p)
        d_o[duplicate] = 0
        d_p[duplicate] = 0
        fresh = ~has_prev
        reason = np.where(duplicate, R_DUPLICATE, np.where(reboot, R_REBOOT, np.where(reset, R_RESET, np.where(
            wrap32, R_WRAP32, np.where(wrapped, R_WRAP, np.where(fresh, R_FIRST, R_DELTA)))))).astype(np.int8)
        # When the flow was created (from sysUpTime, which wraps at 2^32 hundredths): where a first delta starts. A
        # creation a little after the record's own sysUpTime (clock granularity) is now, not 497 days ago.
        age_cs = (sys_up[order] - created[order]) % (1 << 32)
        age_cs[age_cs > (1 << 32) - CREATED_AHEAD_CS] = 0
        created_at = t - age_cs * 10 if has_up else t
        # The period a delta covers: since the previous record, or since the flow (or the rebooted CMTS) started.
        span = np.where(cont, prev_time, np.where(reboot, t - sys_up[order] * 10 if has_up else t, created_at))
        out_span = np.asarray(rec_time, dtype=np.int64).copy()
        out_span[order] = span
        if self.preexisting == "baseline" and fresh.any():
            # Flows created before flowmed's first session with this CMTS: their counters hold usage from before.
            since = self._since(host_codes[order], host_names, t, exporter, now_ms)
            base = fresh & (created_at < since - PREEXISTING_TOLERANCE_MS)
            d_o[base] = 0
            d_p[base] = 0
            reason[base] = R_BASELINE

        # new state: the last record of every key in the batch
        last = np.ones(len(order), dtype=bool)
        last[:-1] = k[1:] != k[:-1]
        lo = order[last]
        values = np.zeros(len(lo), dtype=STATE_DTYPE)
        values["key"], values["octets"], values["packets"] = keys[lo], octets[lo], packets[lo]
        values["rec_time"], values["sys_up"] = rec_time[lo], sys_up[lo]
        values["stopped"] = rec_type[lo] == REC_STOP
        st.upsert(rows[lo], values)

        out["delta_octets"][order] = d_o
        out["delta_packets"][order] = d_p
        codes = np.full(n, R_STALE, dtype=np.int8)
        codes[order] = reason
        out["delta_reason"] = Coded(codes, REASONS)
        for name, mask in (("stale", stale), ("duplicate", duplicate), ("reboot", reboot), ("wrap", wrapped),
                           ("first", fresh), ("baseline", reason == R_BASELINE)):
            self._count(name, int(mask.sum()))
        return self._usage(out, mac, exporter_ip, keys, out_span)

    def _since(self, codes: np.ndarray, names: list[str], t: np.ndarray, exporter: str, now_ms: int) -> np.ndarray:
        """When collection from each CMTS host began, per record: fixed when the host is first seen, to the first
        session with the exporter delivering it (the processing time if no session was ever recorded, as when this
        class is used without the collector).

        A host name that first appears on an exporter that already delivered other host names (a CMTS renamed, a new
        CMTS behind an IPDR proxy) starts at its first record instead: every flow of a renamed CMTS looks new under
        its new name, and counting their whole counters again would bill their history twice."""
        since = self.state.meta["since_ms"]
        owner = self.state.meta.setdefault("since_exporter", {})
        had_hosts = exporter in owner.values()
        first = self.session_started(exporter, now_ms)
        values = []
        for i, h in enumerate(names):
            if h not in since:
                mine = t[codes == i]
                since[h] = int(mine.min()) if had_hosts and len(mine) else first
                owner[h] = exporter
            values.append(since[h])
        since_ms: np.ndarray = np.array(values, dtype=np.int64)[codes]
        return since_ms

    def _usage(self, out: dict[str, Any], mac: np.ndarray, exporter_ip: bytes, keys: np.ndarray,
               span_start: np.ndarray) -> dict[str, Any]:
        billed = np.flatnonzero((out["delta_octets"] > 0) | (out["delta_packets"] > 0))
        rec_time = out["rec_creation_time"][billed]
        names = list(self.subscribers.names)
        sub_idx = self.subscribers.lookup_index(mac[billed])
        unknown = len(names) - 1  # the map's last name is ''
        if self.address_lookup is not None:
            missing = np.flatnonzero(sub_idx == unknown)
            if len(missing):
                found = np.asarray(self.address_lookup(out["cm_ipv4"][billed][missing], rec_time[missing]),
                                   dtype=object)
                extra, inv = np.unique(found.astype(str), return_inverse=True)
                sub_idx[missing] = np.where(found == "", unknown, len(names) + inv)
                names.extend(extra.tolist())
        all_idx = np.full(len(out["dsn"]), unknown, dtype=np.int64)
        all_idx[billed] = sub_idx
        out["subscriber_id"] = Coded(all_idx, names)
        direction = out["service_direction"][billed]
        dir_code = np.where(direction == 1, 0, np.where(direction == 2, 1, 2)).astype(np.int8)
        no_sub = sub_idx == unknown
        dir_code[no_sub] = 2
        row_id = hash_columns(keys[billed], rec_time, out["rec_type"][billed].astype(np.int64), seed=0x1BD8)
        out["usage_row_id"][billed] = row_id
        piece, iv_start, octets, packets, last = _split(span_start[billed], rec_time, out["delta_octets"][billed],
                                                        out["delta_packets"][billed], self.interval_ms,
                                                        self.max_span_ms)
        # The part in the record's own interval keeps the record's row id; earlier parts get ids derived from it.
        ids = np.where(last, row_id[piece], hash_columns(row_id[piece], iv_start, seed=0x5EED))
        u = empty_columns(USAGE, len(piece))
        u["interval_start"], u["interval_end"] = iv_start, iv_start + self.interval_ms
        u["subscriber_id"] = Coded(sub_idx[piece], names)
        u["direction"] = Coded(dir_code[piece], ["down", "up", "unattributed"])
        u["traffic_class"] = Const("all")
        u["bytes"], u["packets"] = octets, packets
        u["flows"] = last.astype(np.uint64)  # a record counts in one interval only
        u["source"] = Const("ipdr")
        u["exporter"][:] = exporter_ip
        u["created"] = rec_time[piece]  # deterministic, so a re-derived row is identical (see module docstring)
        u["row_id"] = ids
        self._count("usage_rows", len(piece))
        self._count("unattributed_rows", int(no_sub.sum()))
        return u

    def undo_last(self) -> None:
        """Undo the state changes of the last :meth:`mediate` call (its batches could not be handed over)."""
        token = self._checkpoint
        if token is not None:
            self.state.rollback(token)
            self._checkpoint = None

    # -- durability -------------------------------------------------------------------------------------------

    def commit(self, now_ms: int | None = None) -> None:
        """Make the state changed since the last commit durable (call after the batches are durable, before the
        DATA_ACK). Compacts the journal when it has grown past ``compact_rows``."""
        self.state.commit()
        if self.state.journal_rows > max(self.compact_rows, 2 * self.state.n):
            now_ms = int(time.time() * 1000) if now_ms is None else now_ms
            self.state.compact(now_ms - self.tombstone_retention_ms)

    def discard_uncommitted(self) -> None:
        """Drop uncommitted changes (after a failed flush): re-read the durable state."""
        if self.state.dir is None:
            return
        self.state.close()
        self.state = StateJournal(self.state.dir)

    def tick(self, now: int, /) -> Tables:
        """Picks up a changed CM MAC -> subscriber file (a malformed one is logged and the old map kept)."""
        self.subscribers.reload()
        return {}

    def reload(self, settings: Sections, now: int, /) -> None:
        """Nothing of ``[ipdr]`` changes while running (interval, state and file take a restart; the CM MAC file
        itself is re-read by :meth:`tick` when it changes)."""

    def close(self, now: int | None = None, /) -> Tables:
        """Close the state files (what is not committed is not kept: its records were not acknowledged)."""
        self.state.close()
        return {}


def _split(start: np.ndarray, end: np.ndarray, octets: np.ndarray, packets: np.ndarray, interval_ms: int,
           max_span_ms: int) -> tuple[np.ndarray, ...]:
    """Spread each delta over the usage intervals its period ``(start, end]`` covers, in proportion to time.

    Returns ``(record index, interval start, octets, packets, is_last_part)`` per part. Integer and exact: the part
    totals are differences of ``floor(total * covered_fraction)``, so the parts of a record sum to its delta. A
    period longer than ``max_span_ms`` (a collector outage) is spread over its last ``max_span_ms``; deltas above
    2^53 (beyond float precision) stay whole in the record's interval.
    """
    n = len(end)
    end = np.asarray(end, dtype=np.int64)
    start = np.clip(np.asarray(start, dtype=np.int64), end - max_span_ms, end)
    big = (octets > np.uint64(2**53)) | (packets > np.uint64(2**53))
    start = np.where(big, end, start)
    last_iv = (end - 1) // interval_ms
    first_iv = np.where(start < end, start // interval_ms, last_iv)
    k = last_iv - first_iv + 1
    piece = np.repeat(np.arange(n), k)
    offset = np.arange(len(piece)) - np.repeat(np.cumsum(k) - k, k)
    iv = first_iv[piece] + offset
    is_last = iv == last_iv[piece]
    dur = np.maximum(end - start, 1)[piece]
    covered = np.minimum(end[piece], (iv + 1) * interval_ms) - start[piece]
    frac = covered / dur

    def parts(total: np.ndarray) -> np.ndarray:
        t = total[piece]
        cum = np.where(is_last, t, np.floor(t.astype(np.float64) * frac).astype(np.uint64))
        cum = np.minimum(cum, t)
        prev = np.zeros(len(piece), dtype=np.uint64)
        prev[1:] = cum[:-1]
        prev[offset == 0] = 0
        part: np.ndarray = cum - prev
        return part

    o, p = parts(octets), parts(packets)
    keep = (o > 0) | (p > 0) | is_last  # no empty parts (a period that only grazes an interval)
    return piece[keep], iv[keep] * interval_ms, o[keep], p[keep], is_last[keep]


REASONS = ["stale", "first", "delta", "wrap", "wrap32", "reboot", "duplicate", "baseline", "reset"]
R_STALE, R_FIRST, R_DELTA, R_WRAP, R_WRAP32, R_REBOOT, R_DUPLICATE, R_BASELINE, R_RESET = range(len(REASONS))
