"""``DispatchDecoder``: one decoder for every flow protocol a listener may receive (sans-I/O).

A batch (:class:`decoders.received.Received`, or ``(payload, exporter, received_ms)`` tuples) is split by
:func:`decoders.sflow.is_sflow` (an sFlow datagram starts with a uint32 version, whose two high bytes are zero;
NetFlow v5/v9 and IPFIX start with a uint16 version): the sFlow v5 datagrams go to
:class:`decoders.sflow.decoder.SflowDecoder`, the rest to :class:`decoders.netflow.decoder.FlowDecoder`, each in one
call, and the two results are merged into one :class:`DispatchResult`: the ``flows`` columns concatenated (NetFlow
rows first), the per-exporter counters added. For a ``Received`` the two-byte test is one numpy pass; records never
leave the columns.

Every state an exporter can make either decoder hold stays bounded by that decoder's limits (each has its own
``max_exporters``); templates, held data and saved state are the NetFlow decoder's alone (sFlow has none).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from decoders.netflow.decoder import FlowDecoder
from decoders.netflow.persistence import StateChanges
from decoders.received import OVERSIZED, Datagram, Received
from decoders.result import DecodeResult
from decoders.sampling import SamplingPolicy
from decoders.sflow import is_sflow
from decoders.sflow.decoder import SflowDecoder, SflowResult

__all__ = ["DispatchDecoder", "DispatchResult"]

_COUNTERS = tuple(f.name for f in fields(DecodeResult) if f.name not in ("flows", "n_flows"))
"""The per-exporter counters of a DecodeResult, summed over both decoders."""
_SFLOW_COUNTERS = ("samples", "samples_lost", "sample_pool", "agent_drops", "skipped")
"""The counters only sFlow has (:class:`decoders.sflow.decoder.SflowResult`)."""


@dataclass
class DispatchResult(DecodeResult):
    """A :class:`decoders.netflow.decoder.DecodeResult` over both protocols (sFlow rows have version
    ``decoders.sflow.SFLOW_VERSION``) plus what only sFlow has: see :class:`decoders.sflow.decoder.SflowResult`.
    The sFlow ``extras`` are not carried: the ``flows`` table has no column for them."""

    interface_counters: dict[str, np.ndarray] = field(default_factory=dict)
    """Columns of the ``interface_counters`` table (every column but ``batch_id``); empty when no sFlow came."""
    n_counters: int = 0
    samples: Counter[Any] = field(default_factory=Counter)
    """(exporter, "flow" | "counter") -> sFlow samples decoded."""
    samples_lost: Counter[Any] = field(default_factory=Counter)
    """exporter -> sFlow samples missing by the sample sequence numbers of their data sources."""
    sample_pool: Counter[Any] = field(default_factory=Counter)
    """exporter -> packets the sampled interfaces saw (growth of the sample pools)."""
    agent_drops: Counter[Any] = field(default_factory=Counter)
    """exporter -> samples the sFlow agents could not send (growth of their drop counters)."""
    skipped: Counter[Any] = field(default_factory=Counter)
    """(exporter, "sample" | "flow_record" | "counter_record") -> sFlow structures of formats not decoded."""


class DispatchDecoder:
    """NetFlow v5/v9/IPFIX and sFlow v5 datagrams of many exporters, from any listener, through one interface (the
    one :class:`decoders.netflow.decoder.FlowDecoder` has)."""

    def __init__(self, netflow: FlowDecoder | None = None, sflow: SflowDecoder | None = None) -> None:
        self.netflow = netflow if netflow is not None else FlowDecoder()
        self.sflow = sflow if sflow is not None else SflowDecoder()

    def decode(self, datagrams: Received | Iterable[Datagram]) -> DispatchResult:
        """Decode a batch of any protocol (a :class:`decoders.received.Received`, or ``(payload, exporter,
        received_ms)`` tuples); never raises for bad input. The datagrams a listener received cut, too large for its
        buffer (``Received.oversized``), are counted as datagrams of version 0 with the error ``datagram_too_large``."""
        if isinstance(datagrams, Received):
            out = self._decode_received(datagrams)
            for exporter, count in datagrams.oversized.items():
                out.datagrams[(exporter, 0)] += count
                out.errors[(exporter, OVERSIZED)] += count
            return out
        items = datagrams if isinstance(datagrams, list | tuple) else list(datagrams)
        n = len(items)
        is_sf = np.fromiter(map(is_sflow, (i[0] for i in items)), dtype=bool, count=n)
        sflow_count = int(is_sf.sum())
        if sflow_count == 0:
            return _merge(self.netflow.decode(items), None)
        if sflow_count == n:
            return _merge(None, self.sflow.decode(items))
        netflow_items = [items[i] for i in np.flatnonzero(~is_sf).tolist()]
        sflow_items = [items[i] for i in np.flatnonzero(is_sf).tolist()]
        return _merge(self.netflow.decode(netflow_items), self.sflow.decode(sflow_items))

    def _decode_received(self, rec: Received) -> DispatchResult:
        head = rec.first_bytes(2)
        is_sf = (rec.lens >= 2) & (head[:, 0] == 0) & (head[:, 1] == 0)  # decoders.sflow.is_sflow, vectorised
        sflow_count = int(is_sf.sum())
        if sflow_count == 0:
            return _merge(self.netflow.decode(rec), None)
        sflow_items = list(rec.select(is_sf))  # (the sFlow decoder takes tuples)
        if sflow_count == len(rec):
            return _merge(None, self.sflow.decode(sflow_items))
        return _merge(self.netflow.decode(rec.select(~is_sf)), self.sflow.decode(sflow_items))

    @property
    def exporters(self) -> dict[str, Any]:
        """Exporters either decoder tracks (one that sends both protocols is listed once)."""
        return {**self.sflow.exporters, **self.netflow.exporters}

    def set_sampling(self, sampling: SamplingPolicy) -> None:
        """Replace the configured sampling policy of both decoders (SIGHUP)."""
        self.netflow.set_sampling(sampling)
        self.sflow.set_sampling(sampling)

    def expire(self, now_ms: int) -> Counter[tuple[str, str]]:
        """Expiry of both decoders' stale state: ``Counter[(exporter, reason)]``."""
        return self.netflow.expire(now_ms) + self.sflow.expire(now_ms)

    def templates_known(self) -> dict[str, int]:
        """Templates known per exporter (NetFlow v9/IPFIX only)."""
        return self.netflow.templates_known()

    def pending_bytes(self) -> int:
        """Bytes held for missing templates (NetFlow v9/IPFIX only)."""
        return self.netflow.pending_bytes()

    def template_memory(self) -> int:
        """What the templates cost in bytes, against ``template_max_bytes`` (NetFlow v9/IPFIX only)."""
        return self.netflow.template_memory()

    def agents_known(self) -> dict[str, int]:
        """sFlow (agent, sub-agent) pairs tracked, per exporter."""
        return self.sflow.agents_known()

    def save_state(self) -> bytes:
        """The NetFlow decoder's state file (sFlow keeps nothing worth a restart)."""
        return self.netflow.save_state()

    def state_changes(self) -> StateChanges:
        """What changed in the NetFlow decoder's state since the last call."""
        return self.netflow.state_changes()

    def load_state(self, data: bytes, *, mark: bool = False) -> int:
        """Restore the NetFlow decoder's state; returns the templates refused."""
        return self.netflow.load_state(data, mark=mark)


def _merge(netflow: DecodeResult | None, sflow: SflowResult | None) -> DispatchResult:
    """One result from the two decoders' (either may be None): columns concatenated, counters added."""
    parts = [r for r in (netflow, sflow) if r is not None]
    if len(parts) == 1:
        flows = parts[0].flows
    else:
        assert netflow is not None and sflow is not None
        flows = {name: np.concatenate((col, sflow.flows[name])) for name, col in netflow.flows.items()}
    out = DispatchResult(flows=flows, n_flows=sum(r.n_flows for r in parts))
    for name in _COUNTERS:
        counter: Counter[Any] = getattr(out, name)
        for r in parts:
            counter.update(getattr(r, name))
    if sflow is not None:
        out.interface_counters = sflow.interface_counters
        out.n_counters = sflow.n_counters
        for name in _SFLOW_COUNTERS:
            setattr(out, name, getattr(sflow, name))
    return out
