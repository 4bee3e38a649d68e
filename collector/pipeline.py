"""The daemon's work on one batch of datagrams: admission → decoder → mediation stages → Sink (:class:`Pipeline`).

Kept apart from the sockets and the lifecycle (:mod:`collector.server`) so that tools and tests drive exactly the code
the daemon runs. The parts come built (:class:`collector.components.Components`); the Pipeline decides nothing about
flows itself: what to mediate is the stages' (:mod:`mediation.flow_stages`). It also turns the decoder's and the
stages' counters into metrics and the status board.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TypeVar

import pyarrow as pa

from collector import metrics as metrics_mod
from collector import status as status_mod
from collector.admission import admit, make_admission
from collector.components import Components, DecoderPort, SinkPort, make_decoder, now_ms
from collector.config import Config
from collector.logging import RateLimiter, log
from decoders.dispatch import DispatchResult
from decoders.received import Datagram, Received
from decoders.schema import FLOWS
from decoders.sflow.tables import INTERFACE_COUNTERS
from mediation.compliance.stage import ComplianceStage
from mediation.flow_stages import NamedStages
from mediation.mediator import Mediator
from mediation.subscribers.static import StaticBindings

K = TypeVar("K")


class Pipeline:
    """Decoder → mediation stages → Sink for one process; :meth:`process` takes one batch of datagrams.

    The stages (:func:`mediation.flow_stages.flow_stages`: the Mediator, the compliance stage) run in order on each
    batch's flows; what they decide about flows is theirs. Kept apart from the socket handling so tools and tests can
    drive exactly the code the daemon runs.
    """

    def __init__(self, config: Config, metrics: metrics_mod.Metrics, sink: SinkPort, mediator: Mediator | None = None,
                 decoder: DecoderPort | None = None, *, compliance: ComplianceStage | None = None,
                 static: StaticBindings | None = None) -> None:
        """A pipeline over parts built elsewhere (a tool, a test); the daemon uses :meth:`of`."""
        parts = Components.assemble(config, decoder if decoder is not None else make_decoder(config), sink, mediator,
                                    compliance=compliance, static=static)
        self._init(config, metrics, parts)

    @classmethod
    def of(cls, config: Config, metrics: metrics_mod.Metrics, parts: Components) -> Pipeline:
        """The pipeline that runs ``parts`` (:meth:`collector.components.Components.build`)."""
        pipeline = cls.__new__(cls)
        pipeline._init(config, metrics, parts)
        return pipeline

    def _init(self, config: Config, metrics: metrics_mod.Metrics, parts: Components) -> None:
        self.config = config
        self.metrics = metrics
        self.parts = parts
        self.decoder = parts.decoder
        self.mediator = parts.mediator
        self.compliance = parts.compliance
        """nat_events and ip_detail_records, when enabled (make_compliance)."""
        self.stages: NamedStages = parts.stages
        self.sink = parts.sink
        self.board = status_mod.StatusBoard(config.decoder.max_exporters)
        self.errors_log = RateLimiter(60.0)
        self.admission = make_admission(config)
        """Exporter allowlist and per-exporter rate limit (collector.admission), None when both are off."""
        self.datagrams = 0
        self.flows = 0
        self._usage_seen: dict[str, int] = {}

    def process(self, batch: Received | list[Datagram]) -> int:
        """Decode ``batch`` (a listener's :class:`decoders.received.Received`, or tuples from a tool or test), mediate
        and hand the tables to the sink; returns the number of flows decoded."""
        if not len(batch):
            return 0
        m = self.metrics
        if self.admission is not None:
            # (per datagram, as tuples: only with an allowlist or a rate limit configured)
            items = list(batch)
            kept = admit(self.admission, items, m, self.errors_log)
            if not kept:
                return 0
            if len(kept) != len(items):
                oversized = batch.oversized if isinstance(batch, Received) else None
                batch = Received.of(kept)
                if oversized:
                    batch.oversized = oversized
        t0 = time.perf_counter()
        try:
            result = self.decoder.decode(batch)
        except Exception as exc:  # the decoder must not raise for bad input: this is a bug, keep the daemon up
            m.pipeline_errors.labels("decode").inc()
            log("error", "decoder failed on a batch", datagrams=len(batch), error=repr(exc))
            return 0
        flows = FLOWS.to_arrow(result.flows)
        received = now_ms()
        self.account(result, received)
        n: int = flows.num_rows
        tables: dict[str, pa.RecordBatch] = {"flows": flows} if n else {}
        if result.n_counters:  # sFlow counter samples
            tables["interface_counters"] = INTERFACE_COUNTERS.to_arrow(result.interface_counters)
        for name, stage in self.stages if n else ():
            try:
                tables.update(stage.process(flows, received))
            except Exception as exc:  # a stage's bug must not stop the raw flows and the other stages' tables
                m.pipeline_errors.labels(name).inc()
                log("error", f"{name} failed on a batch", flows=n, error=repr(exc))
        for name, table_batch in tables.items():
            if table_batch is not None and table_batch.num_rows:
                try:
                    self.sink.add(name, table_batch)  # False when refused: counted by the sink (dropped_rows)
                except Exception as exc:  # a batch that does not fit its table is a bug; the others still go
                    m.pipeline_errors.labels("sink").inc()
                    log("error", "batch refused by the sink", table=name, rows=table_batch.num_rows,
                        error=repr(exc))
        self.datagrams += len(batch)
        self.flows += n
        m.decode_batches.inc()
        m.batch_datagrams.observe(len(batch))
        m.decode_seconds.observe(time.perf_counter() - t0)
        return n

    def account(self, result: DispatchResult, received_ms: int) -> None:
        """Per-exporter counters of a DecodeResult into metrics and the status board (a loop per exporter only)."""
        m, label, board = self.metrics, self.metrics.exporter_label, self.board
        for (exporter, version), count in _nonzero(result.datagrams):
            m.datagrams.labels(label(exporter), str(version)).inc(count)
            entry = board.exporter(exporter, received_ms)
            entry.datagrams += count
            if version:  # 0: not a NetFlow/IPFIX version (counted as an error)
                entry.versions.add(int(version))
        for (exporter, version), count in _nonzero(result.records):
            m.records.labels(label(exporter), str(version)).inc(count)
            board.exporter(exporter, received_ms).records += count
        for (exporter, reason), count in _nonzero(result.errors):
            m.decode_errors.labels(label(exporter), reason).inc(count)
            board.exporter(exporter, received_ms).errors += count
            self.errors_log.log("warning", "bad export data", key=(exporter, reason), count=count,
                                exporter=exporter, reason=reason)
        for key, count in _nonzero(result.sequence_lost):
            exporter = key[0] if isinstance(key, tuple) else key
            m.sequence_lost.labels(label(exporter)).inc(count)
            board.exporter(exporter, received_ms).sequence_lost += count
        for (exporter, limit), count in _nonzero(result.limit_hits):
            m.limit_hits.labels(label(exporter), limit).inc(count)
            self.errors_log.log("warning", "decoder limit reached", key=(exporter, limit), count=count,
                                exporter=exporter, limit=limit)
        # sFlow loss accounting: samples missing by their data sources' sequence numbers, what the sampled
        # interfaces saw (sample pools) and what the agents themselves dropped
        for (exporter, kind), count in _nonzero(result.samples):
            m.sflow_samples.labels(label(exporter), kind).inc(count)
        for exporter, count in _nonzero(result.samples_lost):
            m.sflow_samples_lost.labels(label(exporter)).inc(count)
        for exporter, count in _nonzero(result.sample_pool):
            m.sflow_sample_pool.labels(label(exporter)).inc(count)
        for exporter, count in _nonzero(result.agent_drops):
            m.sflow_agent_drops.labels(label(exporter)).inc(count)
            self.errors_log.log("warning", "sFlow agent dropped samples (its sampling outran its export)",
                                key=(exporter, "agent_drops"), count=count, exporter=exporter)
        for (exporter, structure), count in _nonzero(result.skipped):
            m.sflow_skipped.labels(label(exporter), structure).inc(count)

    def sync_templates(self) -> dict[str, int]:
        """Templates known per exporter, copied onto the status board; returns them."""
        known = self.decoder.templates_known()
        for exporter, entry in self.board.exporters.items():
            entry.templates = known.get(exporter, 0)
        return known

    def refresh_gauges(self, now: int) -> None:
        """Once a tick: template counts and held bytes from the decoder; expiry of stale decoder state."""
        m, label = self.metrics, self.metrics.exporter_label
        try:
            expired = self.decoder.expire(now)
        except Exception as exc:  # a bug; expiry is housekeeping, the daemon goes on
            log("error", "decoder expiry failed", error=repr(exc))
            expired = {}
        for (exporter, reason), count in expired.items():
            if reason == "pending_expired":  # data lost for want of a template
                m.decode_errors.labels(label(exporter), reason).inc(count)
                self.errors_log.log("warning", "data dropped: its template never arrived", key=(exporter, reason),
                                    count=count, exporter=exporter, reason=reason)
            elif reason == "exporter_expired":
                log("info", "exporter forgotten after being idle", exporter=exporter)
        for exporter, count in self.sync_templates().items():
            m.templates.labels(label(exporter)).set(count)
        m.exporters.set(len(self.decoder.exporters))
        if self.mediator is not None:
            counters = self.mediator.counters
            for result in ("attributed", "unattributed", "rejected", "duplicate"):
                value = int(counters.get(f"bytes_{result}", 0))
                delta = value - self._usage_seen.get(result, 0)
                if delta > 0:
                    m.usage_bytes.labels(result).inc(delta)
                self._usage_seen[result] = value
            self._count_rejects(counters)
        if self.compliance is not None:  # cumulative counters of the compliance stage -> Prometheus counters
            compliance = self.compliance.counters
            for metric, key, label_value in (
                    *((m.compliance_records, f"records_{s}", s) for s in
                      ("attributed", "attributed_destination", "unattributed")),
                    (m.nat_events, "nat_events", "event"), (m.nat_events, "nat_other", "other"),
                    (m.nat_events, "nat_observed", "observed")):
                value = int(compliance.get(key, 0))
                delta = value - self._usage_seen.get(key, 0)
                if delta > 0:
                    metric.labels(label_value).inc(delta)
                self._usage_seen[key] = value
        m.pending_bytes.set(self.decoder.pending_bytes())
        m.template_bytes.set(self.decoder.template_memory())


    def _count_rejects(self, counters: dict[str, int]) -> None:
        """The Mediator's ``rejected_<reason>`` counters into ``flowmed_rejects_total``, with a warning per reason at
        most once a minute while records keep being rejected for it (how many, and what usually causes it)."""
        for reason, total in self.rejects().items():
            key = f"rejected_{reason}"
            delta = total - self._usage_seen.get(key, 0)
            if delta > 0:
                self.metrics.rejects.labels(reason).inc(delta)
                self.errors_log.log("warning", "flow records rejected by mediation", key=("rejects", reason),
                                    count=delta, reason=reason, hint=REJECT_HINTS.get(reason, ""))
            self._usage_seen[key] = total

    def rejects(self) -> dict[str, int]:
        """Records the Mediator rejected so far, per reason (the reasons with at least one)."""
        if self.mediator is None:
            return {}
        return {k.removeprefix("rejected_"): int(v) for k, v in self.mediator.counters.items()
                if k.startswith("rejected_") and int(v) > 0}


REJECT_HINTS = {
    "future": "flow end later than its receive time plus mediation.max_future_s: the exporter's clock is ahead",
    "too_old": "flow end earlier than its receive time minus mediation.max_lateness_s: a replayed old capture, or "
               "an exporter clock far behind",
    "impossible_timestamp": "flow times before 2000 or after 2100: an exporter clock at zero or a broken template",
    "end_before_start": "flow end before its start: the exporter's times are broken",
    "too_long": "flow longer than mediation.max_flow_duration_s",
    "zero_counters": "records with no bytes or no packets",
    "absurd_counters": "more bytes per packet than mediation.max_bytes_per_packet, or fewer bytes than packets",
}
"""What usually causes each mediation reject reason (in the rate-limited warning)."""


def _nonzero(counts: Mapping[K, int]) -> list[tuple[K, int]]:
    """The non-zero entries of a DecodeResult counter."""
    return [(k, int(v)) for k, v in counts.items() if v]
