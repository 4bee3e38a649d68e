"""The compliance stage of the daemon: ``flows`` batches -> ``nat_events`` and ``ip_detail_records``.

:class:`ComplianceStage` runs after decoding beside the Mediator (``collector.server.Pipeline``), vectorised per
batch:

* every record with a natEvent becomes a ``nat_events`` row (:mod:`mediation.nat` reads the code in the configured
  dialect; port blocks from IEs 361-364); a flow that carries its own post-NAT source (IEs 225/227) also logs the
  translation it shows (action ``observed``, with ``compliance.nat_from_flows``);
* every record with traffic becomes one ``ip_detail_records`` row, attributed at its start time through the same
  subscriber bindings the Mediator uses (longest prefix: IPv4 addresses and IPv6 prefixes; RADIUS or static), first
  by source address, else by destination; no match keeps the record as ``unattributed``.

Static bindings live only in the bindings database; so that ``flowmed trace`` finds them as it finds RADIUS
sessions (in the ``bindings`` table of the store or server), the stage that owns the static file (the single process
or worker 0) mirrors their changes to the ``bindings`` table on :meth:`tick`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from mediation.bindings import Bindings, split_addresses
from mediation.compliance_tables import ATTRIBUTION, IP_DETAIL_RECORDS, NAT_EVENTS
from mediation.mediator import column
from mediation.nat import END, OBSERVED, S_FLOW, S_SESSION, SCOPES, START, classify, port_range

log = logging.getLogger(__name__)

_ZERO16 = b"\0" * 16
_MAPPED_ZERO = b"\0" * 10 + b"\xff\xff" + b"\0" * 4
"""0.0.0.0 as an IPv4-mapped address: what an IPv4 post-NAT field holds when the record was not translated."""


def translated(addresses: np.ndarray) -> np.ndarray:
    """True where a post-NAT address is set (neither all zero nor 0.0.0.0)."""
    return (addresses != _ZERO16) & (addresses != _MAPPED_ZERO)
_BINDING_CACHE_MAX = 1_000_000


class ComplianceStage:
    """``flows`` -> ``nat_events`` + ``ip_detail_records`` for one process (see the module docstring)."""

    def __init__(self, config, bindings: Bindings, *, mirror_static: bool = False) -> None:
        cc = config.compliance
        self.dialect = cc.nat_event_codes
        self.nat_from_flows = cc.nat_from_flows
        self.bindings = bindings
        self.mirror_static = mirror_static
        self._static_seq = 0
        self._binding_info: dict[int, tuple[str, str]] = {}
        self._names: pa.Array | None = None
        self.counters: dict[str, int] = {k: 0 for k in (
            "nat_events", "nat_nsel", "nat_observed", "nat_other", "records", "records_attributed",
            "records_attributed_destination", "records_unattributed")}

    def reload(self, config) -> None:
        """Apply a reloaded configuration (SIGHUP): the natEvent dialect and nat_from_flows take effect at once."""
        self.dialect = config.compliance.nat_event_codes
        self.nat_from_flows = config.compliance.nat_from_flows

    # --- per batch ---------------------------------------------------------------------------------------------------
    def process(self, flows: pa.RecordBatch, now_ms: int) -> dict[str, pa.RecordBatch]:
        """The compliance tables of one ``flows`` batch (a table is absent when it has no rows)."""
        out: dict[str, pa.RecordBatch] = {}
        if flows.num_rows == 0:
            return out
        c = {name: column(flows, name) for name in (
            "time_received", "flow_start", "flow_end", "exporter", "observation_domain", "src_addr", "dst_addr",
            "src_port", "dst_port", "protocol", "bytes", "packets", "post_nat_src_addr", "post_nat_src_port",
            "nat_event", "port_range_start", "port_range_end", "port_range_step", "port_range_ports",
            "nat_pool_id", "firewall_event")}
        nat = self._nat_events(c)
        if nat is not None:
            out["nat_events"] = nat
        traffic = np.flatnonzero((c["bytes"] > 0) | (c["packets"] > 0))
        if len(traffic):
            out["ip_detail_records"] = self._records(c, traffic)
        return out

    def _nat_events(self, c: dict[str, np.ndarray]) -> pa.RecordBatch | None:
        code = c["nat_event"]
        has_range = (c["port_range_start"] > 0) | (c["port_range_end"] > 0) | (c["port_range_ports"] > 0)
        events = np.flatnonzero(code > 0)
        action, scope = classify(code[events], has_range[events], self.dialect)
        # Cisco NSEL (ASA): no natEvent; firewallEvent 1 (flow created) / 2 (flow deleted) with the translation in
        # IEs 225/227 (NF_F_XLATE_SRC_*) start and end a NAT session
        fw = c["firewall_event"]
        is_nat = translated(c["post_nat_src_addr"])
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
        cols = {
            "time": c["flow_start"][rows], "time_end": time_end, "exporter": c["exporter"][rows],
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

    def _records(self, c: dict[str, np.ndarray], rows: np.ndarray) -> pa.RecordBatch:
        t = c["flow_start"][rows].astype(np.int64)
        shi, slo = split_addresses(c["src_addr"][rows])
        dhi, dlo = split_addresses(c["dst_addr"][rows])
        ssub, sbid = self.bindings.lookup_split(shi, slo, t)
        dsub, dbid = self.bindings.lookup_split(dhi, dlo, t)
        status = np.where(ssub >= 0, 0, np.where(dsub >= 0, 1, 2)).astype(np.int64)
        sub = np.where(ssub >= 0, ssub, dsub)
        bid = np.where(ssub >= 0, sbid, np.where(dsub >= 0, dbid, -1)).astype(np.int64)
        names, _ = self.bindings.subscriber_arrays()
        source, session = self._binding_arrays(bid)
        n = len(rows)
        self.counters["records"] += n
        for i, name in enumerate(ATTRIBUTION):
            self.counters[f"records_{name}"] += int((status == i).sum())
        is_nat = translated(c["post_nat_src_addr"][rows])
        batch = IP_DETAIL_RECORDS.to_arrow({
            "flow_start": t, "flow_end": c["flow_end"][rows], "protocol": c["protocol"][rows],
            "src_addr": c["src_addr"][rows], "src_port": c["src_port"][rows],
            "nat_addr": np.where(is_nat, c["post_nat_src_addr"][rows], _ZERO16).astype("S16"),
            "nat_port": np.where(is_nat, c["post_nat_src_port"][rows], 0).astype(np.uint16),
            "dst_addr": c["dst_addr"][rows], "dst_port": c["dst_port"][rows], "exporter": c["exporter"][rows],
            "bytes": c["bytes"][rows], "packets": c["packets"][rows], "binding_id": np.maximum(bid, 0),
            "time_received": c["time_received"][rows],
        })
        strings = {
            "subscriber_id": self._arrow_names(names).take(pa.array(np.where(sub < 0, len(names) - 1, sub))),
            "binding_source": source, "session_id": session,
            "status": pa.array(ATTRIBUTION, pa.string()).take(pa.array(status)),
        }
        arrays = [strings.get(name, batch.column(name)) for name in IP_DETAIL_RECORDS.column_names]
        return pa.RecordBatch.from_arrays(arrays, schema=IP_DETAIL_RECORDS.arrow_schema)

    def _arrow_names(self, names: np.ndarray) -> pa.Array:
        """Subscriber names as an Arrow array, rebuilt only when new subscribers appeared (names only grow)."""
        if self._names is None or len(self._names) != len(names):
            self._names = pa.array(names.tolist(), pa.string())
        return self._names

    def _binding_arrays(self, bid: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """Source and session id per record from its binding id: one SQLite query per batch for unseen ids."""
        uniq, inverse = np.unique(bid, return_inverse=True)
        missing = [int(b) for b in uniq if b >= 0 and int(b) not in self._binding_info]
        if missing:
            if len(self._binding_info) > _BINDING_CACHE_MAX:
                self._binding_info.clear()
            for start in range(0, len(missing), 900):  # SQLite's bound-variable limit
                part = missing[start:start + 900]
                marks = ",".join("?" * len(part))
                for b, src, sid in self.bindings.conn.execute(
                        f"SELECT id, source, session_id FROM bindings WHERE id IN ({marks})", part).fetchall():
                    self._binding_info[int(b)] = (src, sid)
        info = [self._binding_info.get(int(b), ("", "")) if b >= 0 else ("", "") for b in uniq]
        take = pa.array(inverse.astype(np.int64))
        return (pa.array([i[0] for i in info], pa.string()).take(take),
                pa.array([i[1] for i in info], pa.string()).take(take))

    # --- once a second -----------------------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> dict[str, pa.RecordBatch]:
        """Static binding changes since the last call as a ``bindings`` batch (only with ``mirror_static``)."""
        if not self.mirror_static:
            return {}
        rows = self.bindings._fetch("source='static' AND seq>?", (self._static_seq,))
        if not rows:
            return {}
        self._static_seq = max(r[10] for r in rows)
        return {"bindings": Bindings._to_batch(rows)}


def make_compliance(config, mediator: Any = None, worker: int | None = None) -> ComplianceStage | None:
    """The stage for the daemon when ``[compliance] enabled`` and mediation is on (it shares the Mediator's
    bindings), else None. The process that owns the static file mirrors static bindings to the ``bindings`` table."""
    if not config.compliance.enabled or mediator is None or not hasattr(mediator, "bindings"):
        return None
    owns_static = bool(config.subscribers.static_file) and worker in (None, 0)
    return ComplianceStage(config, mediator.bindings, mirror_static=owns_static)
