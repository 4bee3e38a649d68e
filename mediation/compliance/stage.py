"""The compliance stage of the daemon: ``flows`` batches -> ``nat_events`` and ``ip_detail_records``.

:class:`ComplianceStage` runs after decoding beside the Mediator (:mod:`mediation.flow_stages`), per batch, its
per-record work in compiled passes (:mod:`mediation.compliance.kernels`: one scan of the batch, one pass making the
``ip_detail_records`` columns, one finding the binding strings) and Arrow ``take`` for the string columns:

* every record with a natEvent becomes a ``nat_events`` row (:mod:`mediation.compliance.nat` reads the code in the
configured
  dialect; port blocks from IEs 361-364); a flow that carries its own post-NAT source (IEs 225/227) also logs the
  translation it shows (action ``observed``, with ``compliance.nat_from_flows``);
* every record with traffic becomes one ``ip_detail_records`` row, attributed at its start time through the same
  subscriber bindings the Mediator uses (longest prefix: IPv4 addresses and IPv6 prefixes; RADIUS or static), first
  by source address, else by destination; no match keeps the record as ``unattributed``. In the daemon the Mediator
  has already looked these addresses up at the same times: :mod:`mediation.flow_stages` hands its answers over
  (:class:`mediation.mediator.Attribution`) and the stage looks up only the records the Mediator did not (rejected
  and duplicate records); alone (tools, tests) it looks every record up itself.

Static bindings live only in the bindings database; so that ``flowmed trace`` finds them as it finds RADIUS
sessions (in the ``bindings`` table of the store or server), the stage that owns the static file (the single process
or worker 0) mirrors their changes to the ``bindings`` table on :meth:`tick`.
"""

from __future__ import annotations

import itertools
import logging
from typing import cast

import numpy as np
import pyarrow as pa

from mediation.compliance.kernels import binding_slots, ipdr_rows, scan
from mediation.compliance.nat import END, OBSERVED, S_FLOW, S_SESSION, SCOPES, START, classify, port_range
from mediation.compliance.tables import ATTRIBUTION, IP_DETAIL_RECORDS, NAT_EVENTS
from mediation.correlate import address_words, readonly
from mediation.mediator import Attribution, Mediator, column
from mediation.stage import Sections, Tables
from mediation.subscribers.bindings import Bindings, split_addresses

log = logging.getLogger(__name__)

_MAPPED_ZERO = b"\0" * 10 + b"\xff\xff" + b"\0" * 4
"""0.0.0.0 as an IPv4-mapped address: what an IPv4 post-NAT field holds when the record was not translated."""
_MAPPED_ZERO_LO = np.frombuffer(_MAPPED_ZERO[8:], dtype="<u8")[0]
"""Its low half as a little-endian uint64 (its high half is zero)."""


def translated(addresses: np.ndarray) -> np.ndarray:
    """True where a post-NAT address (``S16``) is set (neither all zero nor 0.0.0.0)."""
    halves = np.ascontiguousarray(addresses).view("<u8").reshape(-1, 2)  # integer compares, not bytes compares
    hi, lo = halves[:, 0], halves[:, 1]
    is_set: np.ndarray = (hi != 0) | ((lo != 0) & (lo != _MAPPED_ZERO_LO))
    return is_set


def _msec(ms: np.ndarray) -> np.ndarray:
    """Milliseconds within the second (0-999) of UTC millisecond times: the ``*_msec`` columns that keep the order
    of events within a second on servers that store whole seconds."""
    return (np.asarray(ms, dtype=np.int64) % 1000).astype(np.uint16)


_BINDING_CACHE_MAX = 1_000_000
_COPIED = ("flow_start", "flow_end", "protocol", "src_addr", "src_port", "dst_addr", "dst_port", "exporter", "bytes",
           "packets", "time_received")
"""ip_detail_records columns that are the flows column of the same name (same Arrow type), taken as they are."""


_NO_DENSE = np.zeros(0, dtype=np.int32)
_STATUS = pa.array(ATTRIBUTION, pa.string())
"""``ip_detail_records.status`` by code (:data:`mediation.compliance.kernels.SRC`, ``DST``, ``NONE``)."""


class BindingStrings:
    """Binding id -> source and session id as Arrow strings, per batch without a Python object per record or per
    binding: an id maps to a slot (a dense table indexed by id while the cached ids are dense enough, as SQLite's
    sequential ids are; a sorted search otherwise), the slot to its session id (an Arrow string array) and source
    (a code into the few source names). Ids not seen before are read from the bindings database, one query per 900
    ids. A binding's source and session id never change, so entries stay valid; the cache is emptied when it would
    hold more than ``max_entries``."""

    def __init__(self, bindings: Bindings, max_entries: int = _BINDING_CACHE_MAX) -> None:
        self.bindings = bindings
        self.max_entries = max_entries
        self._clear()

    def _clear(self) -> None:
        self._ids = np.zeros(0, dtype=np.int64)  # sorted
        self._slots = np.zeros(0, dtype=np.int64)  # of each id, its slot
        self._dense: np.ndarray | None = None  # slot by id - _base (0: not cached)
        self._base = 0
        self._session = pa.array([""], pa.string())  # by slot; slot 0: no binding (or an id the database lacks)
        self._source_code = np.zeros(1, dtype=np.int32)  # by slot: index into _source_names
        self._source_names: list[str] = [""]
        self._source_array = pa.array(self._source_names, pa.string())

    def __len__(self) -> int:
        return len(self._ids)

    def _find(self, bid: np.ndarray) -> np.ndarray:
        """Slot of each id (0 where not cached or negative)."""
        if self._dense is not None:
            rel = bid - self._base
            inside = (rel >= 0) & (rel < len(self._dense))
            return np.where(inside, self._dense[np.where(inside, rel, 0)], 0)
        if not len(self._ids):
            return np.zeros(len(bid), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._ids, bid), len(self._ids) - 1)
        return np.where(self._ids[pos] == bid, self._slots[pos], 0)

    def _locate(self, bid: np.ndarray, slot: np.ndarray, code: np.ndarray) -> int:
        """Each id's slot and source code into ``slot`` and ``code`` (one compiled pass); returns how many ids >= 0
        are not cached."""
        dense = _NO_DENSE if self._dense is None else self._dense
        return int(binding_slots(bid, dense, self._base, self._ids, self._slots, self._source_code, slot, code))

    def columns(self, bid: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """Source and session id (Arrow strings, '' for -1) of each binding id in ``bid`` (int64)."""
        bid = np.ascontiguousarray(bid, dtype=np.int64)
        slot, code = np.empty(len(bid), dtype=np.int32), np.empty(len(bid), dtype=np.int32)
        if self._locate(bid, slot, code):
            missing = np.unique(bid[(slot == 0) & (bid >= 0)])
            if len(self._ids) + len(missing) > self.max_entries:
                self._clear()
            if self._add(missing):
                self._locate(bid, slot, code)
        return self._source_array.take(pa.array(code)), self._session.take(pa.array(slot))

    def _add(self, ids: np.ndarray) -> int:
        """Read ``ids`` (sorted, unique) from the database into the cache; returns how many it had. Ids close
        together are read as one primary-key range, with the ids between them (a daemon that starts with 100,000
        static bindings fills the cache in one query, not in one per 900 ids for each batch)."""
        rows: list[tuple[int, str, str]] = []
        lo, hi = int(ids[0]), int(ids[-1])
        span = hi - lo + 1
        if len(ids) > 900 and span <= 4 * len(ids) and len(self._ids) + span <= self.max_entries:
            rows = self.bindings.conn.execute("SELECT id, source, session_id FROM bindings WHERE id BETWEEN ? AND ?",
                                              (lo, hi)).fetchall()
        else:
            wanted = ids.tolist()
            for start in range(0, len(wanted), 900):  # SQLite's bound-variable limit
                part = wanted[start:start + 900]
                marks = ",".join("?" * len(part))
                rows += self.bindings.conn.execute(
                    f"SELECT id, source, session_id FROM bindings WHERE id IN ({marks})", part).fetchall()
        if not rows:
            return 0
        new_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        fresh = self._find(new_ids) == 0  # a range also holds ids already cached
        if not fresh.all():
            rows = list(itertools.compress(rows, fresh.tolist()))
            new_ids = new_ids[fresh]
            if not rows:
                return 0
        new_slots = np.arange(len(self._session), len(self._session) + len(rows), dtype=np.int64)
        names = self._source_names
        codes = {name: i for i, name in enumerate(names)}
        for r in rows:  # per new binding only (a few names: radius, static)
            if r[1] not in codes:
                codes[r[1]] = len(names)
                names.append(r[1])
        self._source_array = pa.array(names, pa.string())
        self._source_code = np.concatenate([self._source_code, np.fromiter((codes[r[1]] for r in rows),
                                                                           dtype=np.int32, count=len(rows))])
        self._session = pa.concat_arrays([self._session, pa.array([r[2] for r in rows], pa.string())])
        ids_all = np.concatenate([self._ids, new_ids])
        slots_all = np.concatenate([self._slots, new_slots])
        order = np.argsort(ids_all, kind="stable")
        self._ids, self._slots = ids_all[order], slots_all[order]
        self._update_dense(new_ids, new_slots)
        return len(rows)

    def _update_dense(self, new_ids: np.ndarray, new_slots: np.ndarray) -> None:
        """Keep the dense table while the cached ids span at most 4 entries per id (+ 64 Ki): new ids above the
        table grow it (doubling), ids below it rebuild it."""
        lo, hi = int(self._ids[0]), int(self._ids[-1])
        if hi - lo + 1 > 4 * len(self._ids) + 65536:
            self._dense = None
            return
        dense = self._dense
        if dense is None or lo < self._base:
            self._base = lo
            self._dense = np.zeros(2 * (hi - lo + 1), dtype=np.int32)
            self._dense[self._ids - lo] = self._slots
            return
        if hi - self._base >= len(dense):
            grown = np.zeros(2 * (hi - self._base + 1), dtype=np.int32)
            grown[:len(dense)] = dense
            self._dense = dense = grown
        dense[new_ids - self._base] = new_slots


class _Columns(dict[str, np.ndarray]):
    """The columns of a ``flows`` batch as numpy, each read when first used (a batch without NAT rows, the usual
    one, needs half of them; reading one costs microseconds, which small batches notice)."""

    def __init__(self, flows: pa.RecordBatch) -> None:
        super().__init__()
        self.flows = flows

    def __missing__(self, name: str) -> np.ndarray:
        values = self[name] = column(self.flows, name)
        return values


class ComplianceStage:
    """``flows`` -> ``nat_events`` + ``ip_detail_records`` for one process (see the module docstring)."""

    def __init__(self, config: Sections, bindings: Bindings, *, mirror_static: bool = False) -> None:
        cc = config.compliance
        self.dialect = cc.nat_event_codes
        self.nat_from_flows = cc.nat_from_flows
        self.bindings = bindings
        self.mirror_static = mirror_static
        self._static_seq = 0
        self._binding_strings = BindingStrings(bindings)
        self._names: pa.Array | None = None
        self._zero_buffer = pa.py_buffer(b"")
        self.counters: dict[str, int] = {k: 0 for k in (
            "nat_events", "nat_nsel", "nat_observed", "nat_other", "records", "records_attributed",
            "records_attributed_destination", "records_unattributed", "records_looked_up")}
        """``records_looked_up``: records the stage looked up in the bindings itself (not given by the Mediator)."""

    def reload(self, config: Sections, now: int = 0, /) -> None:
        """Apply a reloaded configuration (SIGHUP): the natEvent dialect and nat_from_flows take effect at once."""
        self.dialect = config.compliance.nat_event_codes
        self.nat_from_flows = config.compliance.nat_from_flows

    # --- per batch ---------------------------------------------------------------------------------------------------
    def process(self, flows: pa.RecordBatch, now_ms: int, attribution: Attribution | None = None, /) -> Tables:
        """The compliance tables of one ``flows`` batch (a table is absent when it has no rows).

        ``attribution``: the Mediator's lookups for this same batch (``Mediator.take_attribution``); its answers are
        used instead of looking the addresses up again. Without it (or when it does not match the batch's records
        with traffic) every record is looked up here; the rows are the same either way."""
        out: dict[str, pa.RecordBatch] = {}
        if flows.num_rows == 0:
            return out
        c = _Columns(flows)
        # one compiled pass: the records with traffic, which are translated (for both tables), and whether there
        # is any NAT row to make at all (the usual batch has none: its numpy passes are skipped)
        n = flows.num_rows
        c["nat_words"] = address_words(c["post_nat_src_addr"])
        traffic, c["translated"] = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_)
        k, events, nsel, seen = scan(readonly(c["bytes"], np.uint64), readonly(c["packets"], np.uint64),
                                     readonly(c["nat_event"], np.uint8), readonly(c["firewall_event"], np.uint8),
                                     c["nat_words"], traffic, c["translated"])
        if events or nsel or (seen and self.nat_from_flows):
            nat = self._nat_events(c)
            if nat is not None:
                out["nat_events"] = nat
        if k:
            out["ip_detail_records"] = self._records(flows, c, traffic[:k], attribution)
        return out

    def _nat_events(self, c: dict[str, np.ndarray]) -> pa.RecordBatch | None:
        code = c["nat_event"]
        has_range = (c["port_range_start"] > 0) | (c["port_range_end"] > 0) | (c["port_range_ports"] > 0)
        events = np.flatnonzero(code > 0)
        action, scope = classify(code[events], has_range[events], self.dialect)
        # Cisco NSEL (ASA): no natEvent; firewallEvent 1 (flow created) / 2 (flow deleted) with the translation in
        # IEs 225/227 (NF_F_XLATE_SRC_*) start and end a NAT session
        fw = c["firewall_event"]
        is_nat = c["translated"]
        nsel = np.flatnonzero((code == 0) & ((fw == 1) | (fw == 2)) & is_nat)
        if len(nsel):
            events = np.concatenate([events, nsel])
            action = np.concatenate([action, np.where(fw[nsel] == 1, START, END).astype(np.uint8)])
            scope = np.concatenate([scope, np.full(len(nsel), S_SESSION, np.uint8)])
            self.counters["nat_nsel"] += len(nsel)
        rows = events
        time_end = c["flow_start"][events]
        if self.nat_from_flows:
            traffic = (c["bytes"] > 0) | (c["packets"] > 0)
            seen = np.flatnonzero((code == 0) & (fw != 1) & (fw != 2) & is_nat & traffic)
            if len(seen):
                rows = np.concatenate([events, seen])
                action = np.concatenate([action, np.full(len(seen), OBSERVED, np.uint8)])
                scope = np.concatenate([scope, np.full(len(seen), S_FLOW, np.uint8)])
                time_end = np.concatenate([time_end, c["flow_end"][seen]])
                self.counters["nat_observed"] += len(seen)
        if not len(rows):
            return None
        first, last, step = port_range(c["port_range_start"][rows], c["port_range_end"][rows],
                                       c["port_range_step"][rows], c["port_range_ports"][rows])
        block = scope == SCOPES.index("block")
        public_port = c["post_nat_src_port"][rows].astype(np.uint16)
        address = scope == SCOPES.index("address")
        self.counters["nat_events"] += len(events)
        self.counters["nat_other"] += int((action[: len(events)] == 0).sum())
        time = c["flow_start"][rows]
        cols = {
            "time": time, "time_end": time_end, "time_msec": _msec(time), "time_end_msec": _msec(time_end),
            "exporter": c["exporter"][rows],
            "observation_domain": c["observation_domain"][rows], "nat_event": code[rows], "action": action,
            "firewall_event": c["firewall_event"][rows],
            "protocol": np.where(block | address, 0, c["protocol"][rows]).astype(np.uint8),
            "private_addr": c["src_addr"][rows],
            "private_port": np.where(block | address, 0, c["src_port"][rows]).astype(np.uint16),
            "public_addr": c["post_nat_src_addr"][rows],
            "public_port_start": np.where(block, first, np.where(address, 0, public_port)).astype(np.uint16),
            "public_port_end": np.where(block, last, np.where(address, 0, public_port)).astype(np.uint16),
            "port_step": np.where(block, step, 1).astype(np.uint16),
            "dst_addr": c["dst_addr"][rows], "dst_port": c["dst_port"][rows],
            "nat_pool_id": c["nat_pool_id"][rows], "time_received": c["time_received"][rows],
        }
        batch = NAT_EVENTS.to_arrow(cols)
        names = pa.array(SCOPES, pa.string()).take(pa.array(scope))
        arrays = [names if n == "scope" else batch.column(n) for n in NAT_EVENTS.column_names]
        return pa.RecordBatch.from_arrays(arrays, schema=NAT_EVENTS.arrow_schema)

    def _attribute(self, c: dict[str, np.ndarray], rows: np.ndarray, t: np.ndarray,
                   attribution: Attribution | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Subscriber index and binding id (-1: none) of the source and destination address of records ``rows`` at
        times ``t``: the Mediator's answers where ``attribution`` has them, looked up here otherwise."""
        if attribution is not None and len(attribution) == len(rows) and np.array_equal(attribution.start, t):
            a = attribution
            todo = np.flatnonzero(~a.known)
            if not len(todo):
                return a.src_sub, a.src_bid, a.dst_sub, a.dst_bid
            ssub, sbid, dsub, dbid = a.src_sub.copy(), a.src_bid.copy(), a.dst_sub.copy(), a.dst_bid.copy()
        else:
            if attribution is not None:  # not this batch's records: a caller's bug, but the rows must stay right
                log.warning("compliance: attribution of %d records ignored for a batch of %d", len(attribution),
                            len(rows))
            todo = None
        picked = rows if todo is None else rows[todo]
        tt = t if todo is None else t[todo]
        self.counters["records_looked_up"] += len(picked)
        shi, slo = split_addresses(c["src_addr"][picked])
        dhi, dlo = split_addresses(c["dst_addr"][picked])
        s_sub, s_bid = self.bindings.lookup_split(shi, slo, tt)
        d_sub, d_bid = self.bindings.lookup_split(dhi, dlo, tt)
        s_bid, d_bid = cast(np.ndarray, s_bid), cast(np.ndarray, d_bid)  # asked with ids
        if todo is None:
            return s_sub, s_bid, d_sub, d_bid
        ssub[todo], sbid[todo], dsub[todo], dbid[todo] = s_sub, s_bid, d_sub, d_bid
        return ssub, sbid, dsub, dbid

    def _records(self, flows: pa.RecordBatch, c: dict[str, np.ndarray], rows: np.ndarray,
                 attribution: Attribution | None = None) -> pa.RecordBatch:
        n = len(rows)
        start, end = readonly(c["flow_start"], np.int64), readonly(c["flow_end"], np.int64)
        ssub, sbid, dsub, dbid = self._attribute(c, rows, start[rows], attribution)
        names, _ = self.bindings.subscriber_arrays()
        # every per-row column in one compiled pass (status, subscriber, binding, msec, post-NAT address and port)
        status, name = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
        bid, binding_id = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.uint64)
        start_msec, end_msec, nat_port = (np.empty(n, dtype=np.uint16) for _ in range(3))
        nat_addr = np.empty((n, 2), dtype=np.uint64)
        counts = np.zeros(len(ATTRIBUTION), dtype=np.int64)
        ipdr_rows(rows, start, end, c["nat_words"], readonly(c["post_nat_src_port"], np.uint16), c["translated"],
                  readonly(ssub, np.int32), readonly(sbid, np.int64), readonly(dsub, np.int32),
                  readonly(dbid, np.int64), self.bindings.id_base, len(names) - 1, status, name, bid, binding_id,
                  start_msec, end_msec, nat_addr, nat_port, counts)
        source, session = self._binding_strings.columns(bid)
        self.counters["records"] += n
        for i, count in enumerate(counts.tolist()):
            self.counters[f"records_{ATTRIBUTION[i]}"] += count
        # the flows columns as they are (Arrow, no copy) when every record has traffic, else taken by row
        take = None if n == flows.num_rows else pa.array(rows)
        arrays: dict[str, pa.Array] = {
            name: flows.column(name) if take is None else flows.column(name).take(take) for name in _COPIED}
        arrays.update({
            "flow_start_msec": pa.array(start_msec), "flow_end_msec": pa.array(end_msec),
            "nat_addr": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(nat_addr)]),
            "nat_port": pa.array(nat_port), "binding_id": pa.array(binding_id), "batch_id": self._zeros(n),
            "subscriber_id": self._arrow_names(names).take(pa.array(name)),
            "binding_source": source, "session_id": session,
            "status": _STATUS.take(pa.array(status)),
        })
        schema = IP_DETAIL_RECORDS.arrow_schema
        return pa.RecordBatch.from_arrays([arrays[f.name].cast(f.type) if arrays[f.name].type != f.type
                                           else arrays[f.name] for f in schema], schema=schema)

    def _zeros(self, n: int) -> pa.Array:
        """``n`` uint64 zeros (the ``batch_id`` the sink fills in) over one buffer kept between batches."""
        if self._zero_buffer.size < 8 * n:
            self._zero_buffer = pa.py_buffer(np.zeros(max(n, 2 * self._zero_buffer.size // 8), dtype=np.uint64))
        return pa.Array.from_buffers(pa.uint64(), n, [None, self._zero_buffer])

    def _arrow_names(self, names: np.ndarray) -> pa.Array:
        """Subscriber names as an Arrow array, rebuilt only when new subscribers appeared (names only grow)."""
        if self._names is None or len(self._names) != len(names):
            self._names = pa.array(names.tolist(), pa.string())
        return self._names

    # --- once a second -----------------------------------------------------------------------------------------------
    def tick(self, now_ms: int, /) -> Tables:
        """Static binding changes since the last call as a ``bindings`` batch (only with ``mirror_static``)."""
        if not self.mirror_static:
            return {}
        # by the seq index: written as "source='static' AND seq>?" SQLite scans the table in id order (its
        # ORDER BY), 9 ms a second with 100,000 bindings, for nothing most seconds
        rows = self.bindings._fetch("id IN (SELECT id FROM bindings WHERE seq>?) AND source='static'",
                                    (self._static_seq,))
        if not rows:
            return {}
        self._static_seq = max(r[10] for r in rows)
        return {"bindings": self.bindings.to_batch(rows)}

    def close(self, now_ms: int, /) -> Tables:
        """Nothing is held between batches: no tables."""
        return {}


def make_compliance(config: Sections, mediator: Mediator | None = None, worker: int | None = None
                    ) -> ComplianceStage | None:
    """The stage for the daemon when ``[compliance] enabled`` and mediation is on (it shares the Mediator's
    bindings), else None. The process that owns the static file mirrors static bindings to the ``bindings`` table."""
    if not config.compliance.enabled or mediator is None:
        return None
    owns_static = bool(config.subscribers.static_file) and worker in (None, 0)
    return ComplianceStage(config, mediator.bindings, mirror_static=owns_static)
