"""``FlowDecoder``: NetFlow v5, v9 and IPFIX datagrams in, ``flows`` columns and counters out (sans-I/O).

The façade (h11's ``Connection``): it holds the :class:`~decoders.netflow.state.DecoderState` and orchestrates;
each concern has its own module. Theory of operation: :meth:`FlowDecoder.decode` takes a batch of datagrams and
works in passes:

0. **Per batch**, first (:mod:`decoders.netflow.fast_path`): the headers and set headers of all datagrams are
   walked at once by a compiled kernel (:mod:`decoders.netflow.kernel`), where they lie in the batch's buffer
   (:class:`decoders.received.Received`: a listener's receive buffer, or tuples joined). Runs of plain data
   datagrams (v5, and v9/IPFIX data sets of known fixed-length flow templates, one set or several: almost all data
   datagrams) are taken as blocks, with no Python step per datagram. Every other datagram takes pass 1 at its place
   in the batch, so the result is exactly that of decoding the datagrams one by one.
1. **Per datagram** (:mod:`decoders.netflow.datagram`; a Python loop over datagrams and their sets, never over
   records): parse the header, learn or withdraw templates, apply options data, hold data sets whose template is
   unknown, note the sequence number, and append each data set's bytes to the *group* of its compiled template
   (:mod:`decoders.netflow.batch`).
2. **Per group** (:mod:`decoders.netflow.groups`): find the records of variable-length sets, account sequence
   numbers, gather each group's records at once (a compiled pass over the records, :mod:`decoders.netflow.kernel`)
   and concatenate the columns.

State and its limits are :mod:`decoders.netflow.state` (templates: :mod:`decoders.netflow.template_store`); saving
and loading it, :mod:`decoders.netflow.persistence`. Errors are counted per (exporter, reason) and cost only the
set (or datagram header) they are in; ``decode`` never raises for bad input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from decoders.netflow import fast_path, persistence, templated
from decoders.netflow.batch import Batch
from decoders.netflow.datagram import decode_one
from decoders.netflow.groups import finish
from decoders.netflow.persistence import StateChanges
from decoders.netflow.state import DecoderLimits, DecoderState, ExporterState, count_dropped_held
from decoders.received import Datagram, Received
from decoders.result import DecodeResult, ExporterReason
from decoders.sampling import SamplingPolicy

__all__ = ["DecoderLimits", "FlowDecoder"]


class FlowDecoder:
    """Decodes NetFlow v5, v9 and IPFIX datagrams of many exporters; holds their templates and sampling state."""

    def __init__(self, limits: DecoderLimits | None = None, sampling: SamplingPolicy | None = None) -> None:
        self.state = DecoderState(limits or DecoderLimits(), sampling or SamplingPolicy())
        self._joiner = templated.Joiner()

    @property
    def exporters(self) -> dict[str, ExporterState]:
        """The exporters known, by address (read-only use)."""
        return self.state.exporters

    def decode(self, datagrams: Received | Iterable[Datagram]) -> DecodeResult:
        """Decode a batch (a :class:`decoders.received.Received`, or ``(payload, exporter, received_ms)`` tuples);
        never raises for bad input. ``Received.oversized`` is not counted here (:class:`decoders.dispatch.
        DispatchDecoder` does)."""
        state = self.state
        batch = Batch()
        rec = datagrams if isinstance(datagrams, Received) else self._received(datagrams)
        if isinstance(rec, Received):
            scanned = fast_path.scan(rec) if len(rec) >= fast_path.FAST_MIN_RUN else None
            if scanned is None:
                for i in range(len(rec)):
                    decode_one(state, batch, *rec.datagram(i))
            else:
                fast_path.decode_scanned(state, batch, rec, scanned)
            latest = int(rec.received_ms.max()) if len(rec) else None
        else:  # odd items (not (bytes, str, int)): one by one, counting what is wrong
            latest = None
            for payload, exporter, received_ms in rec:
                if latest is None or received_ms > latest:
                    latest = received_ms
                decode_one(state, batch, payload, exporter, received_ms)
        if latest is not None:
            count_dropped_held(batch.result, state.pending.expire(latest), "pending_expired")
        finish(state, batch)
        return batch.result

    def _received(self, datagrams: Iterable[Datagram]) -> Received | list[Datagram]:
        """Tuples as one batch, joined into the reused buffer; the list itself when they are not all well-formed."""
        items = list(datagrams)
        if len(items) < fast_path.FAST_MIN_RUN:
            return items  # (not worth a join: one by one)
        try:
            return Received.of(items, self._joiner.join)
        except Exception:
            return items

    def templates_known(self) -> dict[str, int]:
        """Templates (incl. options templates) currently known, per exporter."""
        return {name: len(st.templates) for name, st in self.state.exporters.items() if st.templates}

    def pending_bytes(self) -> int:
        """Bytes held for missing templates (payload plus bookkeeping)."""
        return self.state.pending.bytes

    def template_memory(self) -> int:
        """What the templates of all exporters cost (within ``template_max_bytes``)."""
        return self.state.budget.template_bytes

    def expire(self, now_ms: int) -> Counter[ExporterReason]:
        """Drop stale held data, templates (``template_timeout_ms``) and idle exporters.

        Returns ``Counter[(exporter, reason)]`` with reasons ``pending_expired``, ``template_expired`` and
        ``exporter_expired``.
        """
        return self.state.expire(now_ms)

    def set_sampling(self, sampling: SamplingPolicy) -> None:
        """Replace the configured sampling policy (SIGHUP); applies to the next decoded records."""
        self.state.set_sampling(sampling)

    def save_state(self) -> bytes:
        """Everything worth keeping over a restart, as one state file (:mod:`decoders.netflow.saved_state`):
        templates, sampling rates, system init times and data held for a template. For tools and tests; the daemon
        saves incrementally (:meth:`state_changes`)."""
        return persistence.save_state(self.state)

    def state_changes(self) -> StateChanges:
        """What changed since the last call, for an incremental save; cheap enough for the event loop.
        :meth:`StateChanges.records` makes the records, on the writer's thread."""
        return persistence.state_changes(self.state)

    def load_state(self, data: bytes, *, mark: bool = False) -> int:
        """Restore a state file (:meth:`save_state`, or a log of :meth:`state_changes`); see
        :func:`decoders.netflow.persistence.load_state`. Returns the templates refused; raises
        :class:`decoders.errors.SavedStateError` when ``data`` is not decoder state."""
        return persistence.load_state(self.state, data, mark=mark)
