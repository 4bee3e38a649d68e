"""The daemon: listeners → batches of datagrams → DispatchDecoder (NetFlow/IPFIX and sFlow) → (Mediator) → Sink, plus
its lifecycle.

Shape (after uvicorn's ``Server``): :meth:`Server.startup` binds the listeners, loads template state, opens the
outputs and only then says ``READY=1``; :meth:`Server.main_loop` ticks once a second (template expiry, state save,
flush deadlines, kernel drop counters, metrics, status, watchdog); :meth:`Server.shutdown` stops receiving, drains
the sockets, decodes what is left, flushes every output and saves state, within ``service.shutdown_timeout_s``.

The event loop stays free of per-record work: the read callback only appends ``(payload, exporter, received_ms)``
to a list (see :mod:`collector.listener`); a batch is cut at ``listen.batch_datagrams`` datagrams or after
``listen.batch_interval_ms`` and decoded column-wise in one call; writes happen on the Sink's writer thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
from prometheus_client import CollectorRegistry

from collector import config as config_mod
from collector import metrics as metrics_mod
from collector import status as status_mod
from collector.admission import admit, make_admission
from collector.components import (
    Components,
    DecoderPort,
    MediatorArg,
    SinkPort,
    make_decoder,
    now_ms,
    sampling_policy,
)
from collector.config import Config
from collector.configtree import ConfigError
from collector.exporter_stats import ExporterStatsRecorder
from collector.listener import Datagram, ListenError, UdpListener
from collector.logging import RateLimiter, log, set_level
from collector.logging import setup as setup_logging
from collector.statefile import StateWriter
from collector.storelock import StoreLock
from collector.systemd import Notifier, watchdog_interval_s
from decoders.dispatch import DispatchResult
from decoders.schema import FLOWS
from decoders.sflow.tables import INTERFACE_COUNTERS
from mediation.compliance.stage import ComplianceStage
from mediation.flow_stages import NamedStages
from mediation.mediator import Mediator
from mediation.subscribers.static import StaticBindings
from storage.clickhouse.output import ClickHouseOutput
from storage.outputs import OutputStats

if TYPE_CHECKING:
    from collector.ipdr import IpdrCollector
    from collector.radius_listener import RadiusServer

K = TypeVar("K")
TICK_S = 1.0
LEGACY_STATE_MAX_BYTES = 64 * 1024 * 1024
"""A JSON state file of the format before the log is loaded only up to this size: one written under a template
flood could hold hundreds of MB (a minute to load), more than any budget keeps."""
STATUS_LINE_INTERVAL_S = 10.0


def status_line(snapshot: dict[str, Any]) -> str:
    """The short summary systemd shows (``systemctl status``) from a status snapshot."""
    drops = sum(li.get("kernel_drops", 0) for li in snapshot.get("listeners", []))
    return (f"{len(snapshot.get('exporters', []))} exporters, {snapshot.get('datagrams', 0)} datagrams, "
            f"{snapshot.get('flows', 0)} flows, {drops} kernel drops")


def spool_summary(sink: SinkPort | None) -> dict[str, Any]:
    """Bytes, batches, rows, rows dropped and age of the oldest batch over the spools of the sink's outputs (the
    ClickHouse outputs: the only ones with a spool)."""
    out: dict[str, Any] = {"bytes": 0, "batches": 0, "rows": 0, "dropped_rows": 0, "oldest_age_s": 0.0}
    for o in sink.outputs if sink is not None else ():
        if not isinstance(o, ClickHouseOutput):
            continue
        st = o.status()
        out["bytes"] += int(st.get("spool_bytes", 0))
        out["batches"] += int(st.get("spool_batches", 0))
        out["rows"] += int(st.get("spool_rows", 0))
        out["dropped_rows"] += int(st.get("dropped_rows", 0))
        out["oldest_age_s"] = max(out["oldest_age_s"], float(st.get("spool_oldest_age_s", 0.0)))
    return out


def rows_flushed(sink: SinkPort | None) -> int:
    """Rows this process made durable in the store (written, or replayed from the handoff journal): what
    ``/status`` reports as ``rows_flushed``. Without a store, the rows handed durably to the first output."""
    stats = sink.stats if sink is not None else {}
    if not stats:
        return 0
    st = stats.get("store") or next(iter(stats.values()))
    return int(st.rows + st.replayed_rows)


def count_kernel_drops(lst: UdpListener, m: metrics_mod.Metrics) -> None:
    """Add a listener's new kernel drops (from /proc/net/udp) to the counter, with a warning."""
    drops = lst.new_kernel_drops()
    if drops and m.socket_drops is not None:
        m.socket_drops.labels(lst.endpoint).inc(drops)
        log("warning", "kernel dropped datagrams: receive buffer full", listener=lst.endpoint, drops=drops)


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

    def process(self, batch: list[Datagram]) -> int:
        """Decode ``batch``, mediate and hand the tables to the sink; returns the number of flows decoded."""
        if not batch:
            return 0
        m = self.metrics
        if self.admission is not None:
            batch = admit(self.admission, batch, m, self.errors_log)
            if not batch:
                return 0
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


def state_path(config: Config, worker: int | None) -> Path:
    """Where this process keeps its template state: one file per worker, so workers never overwrite each other."""
    p = config.data_path(config.decoder.state_file)
    return p if worker is None else p.with_name(f"{p.name}.worker{worker}")


class Server:
    """One receiving process: its listeners, pipeline, HTTP endpoint (unless a supervisor serves it) and lifecycle.

    ``worker`` is None for a single-process daemon, else this worker's index under the supervisor, which passes the
    already-bound sockets in ``listen_fds`` (one per endpoint of ``listen.udp`` then ``listen.sflow``, in order).
    """

    def __init__(self, config: Config, config_path: str | None = None, overrides: tuple[str, ...] = (),
                 worker: int | None = None, listen_fds: list[int] | None = None,
                 registry: CollectorRegistry | None = None, sink: SinkPort | None = None,
                 decoder: DecoderPort | None = None, mediator: MediatorArg = "auto") -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.worker = worker
        self.listen_fds = listen_fds
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        role = "single" if worker is None else "worker"
        self.metrics = metrics_mod.install(metrics_mod.Metrics(self.registry, config.metrics.max_exporter_labels, role))
        self._sink_arg, self._decoder_arg, self._mediator_arg = sink, decoder, mediator
        self.notifier = Notifier()
        self.pending: list[Datagram] = []
        self.listeners: list[UdpListener] = []
        self.pipeline: Pipeline | None = None
        self.http: status_mod.HttpServer | None = None
        self.snapshot: dict[str, Any] = {}
        self.started = time.time()
        self.stop_event: asyncio.Event | None = None
        self.reload_requested = False
        self._batch_timer: asyncio.TimerHandle | None = None
        self._batch_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_state_save = time.monotonic()
        self.state_writer: StateWriter | None = None
        self.rows_flushed = 0
        self.radius: RadiusServer | None = None
        self._dropped_seen: dict[tuple[str, str], int] = {}
        self._last_status_line = time.monotonic()
        self.ipdr: IpdrCollector | None = None
        self.store_lock = StoreLock(config.store.path)
        self.exporter_stats = ExporterStatsRecorder(worker)  # per-minute exporter history (exporter_stats table)

    # --- lifecycle -------------------------------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        self._loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        # Handlers first: a SIGTERM right after READY=1 (or during start) must flush, not kill.
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_stop, sig)
        self._loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            self.startup()
            await self.start_side_listeners()
        except (OSError, ValueError) as exc:  # address in use, store in use or unwritable, broken static bindings file
            log("error", "cannot start", error=str(exc))
            self.close_listeners()
            await self.stop_side_listeners()
            if self.http is not None:
                self.http.close()
            self.store_lock.release()
            return 1
        self.log_started()
        self.notifier.notify("READY=1", f"STATUS=receiving on {', '.join(lst.address for lst in self.listeners)}",
                             *([f"FLOWMED_WORKER={self.worker}"] if self.worker is not None else []))
        await self.main_loop()
        return await self.shutdown()

    def startup(self) -> None:
        """Lock the store, bind, load state, open outputs, start reading (READY=1 follows once RADIUS/IPDR are up)."""
        cfg = self.config
        if self.worker is None:  # a worker runs under its supervisor, which holds the lock
            self.store_lock.acquire()
        for i, endpoint in enumerate(cfg.listen.endpoints()):
            lst = UdpListener(endpoint, self.pending, self._on_data, cfg.listen.rcvbuf_bytes,
                              max_per_event=cfg.listen.batch_datagrams, purpose=cfg.listen.purpose(endpoint))
            if self.listen_fds is not None:
                lst.adopt(self.listen_fds[i])
            else:
                lst.bind()
            self.listeners.append(lst)
            self.metrics.socket_rcvbuf.labels(lst.address).set(lst.rcvbuf_granted)
            if lst.rcvbuf_granted < cfg.listen.rcvbuf_bytes and self.worker in (None, 0):
                log("warning", "receive buffer smaller than requested; raise net.core.rmem_max",
                    listener=lst.address, requested=cfg.listen.rcvbuf_bytes, granted=lst.rcvbuf_granted)
        parts = Components.build(cfg, self.worker, self.metrics, sink=self._sink_arg, decoder=self._decoder_arg,
                                 mediator=self._mediator_arg)
        self._load_state(parts.decoder)
        self.pipeline = Pipeline.of(cfg, self.metrics, parts)
        if self.worker is None and cfg.metrics.enabled:
            self.http = status_mod.HttpServer(cfg.metrics.listen, self.registry, self.fresh_status)
            self.http.start()
        assert self._loop is not None
        for lst in self.listeners:
            lst.start(self._loop)
        self.publish_status()

    def log_started(self) -> None:
        """The one 'started' line, written once everything is bound (RADIUS and IPDR included): a start that fails
        later must not have claimed to be up."""
        cfg = self.config
        assert self.pipeline is not None
        outputs = [o.name for o in self.pipeline.sink.outputs]
        if self.worker is None:
            log("info", "flowmed started", version=metrics_mod.version(), pid=os.getpid(),
                listeners=[lst.address for lst in self.listeners], outputs=outputs, workers=1,
                rcvbuf_granted=min((lst.rcvbuf_granted for lst in self.listeners), default=0),
                mediation=self.pipeline.mediator is not None, metrics=self.http.address if self.http else "off",
                store=cfg.store.path)
        else:
            log("info", "worker started", worker=self.worker, pid=os.getpid(),
                listeners=[lst.address for lst in self.listeners])

    async def start_side_listeners(self) -> None:
        """RADIUS accounting and IPDR/SP, when enabled: in the single process or worker 0 only (their state is
        one per host, and they feed the same Sink as the flows)."""
        if self.worker not in (None, 0) or self.pipeline is None:
            return
        sink = self.pipeline.sink
        if self.config.radius.enabled:
            from collector.radius_listener import start_radius

            self.radius = await start_radius(asyncio.get_running_loop(), self.config, None, sink.add, self.metrics,
                                             flush=sink.flush)
        if self.config.ipdr.enabled:
            from collector.ipdr import start_ipdr

            try:
                self.ipdr = await start_ipdr(asyncio.get_running_loop(), self.config, sink)
            except OSError as exc:
                if self.config.ipdr.listen and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    raise ListenError("IPDR/SP", self.config.ipdr.listen, exc) from None
                raise
            log("info", "ipdr collector started", exporters=len(self.config.ipdr.exporters),
                listen=self.config.ipdr.listen or "off")

    async def stop_side_listeners(self) -> None:
        """Stop RADIUS and IPDR before the final flush (they answer, acknowledge and hand over what they hold)."""
        radius, ipdr = self.radius, self.ipdr
        self.radius = self.ipdr = None
        for name, side in (("radius", radius), ("ipdr", ipdr)):
            if side is not None:
                try:
                    await side.stop()
                except Exception as exc:
                    log("error", f"{name} stop failed", error=repr(exc))

    async def main_loop(self) -> None:
        assert self.stop_event is not None
        watchdog = watchdog_interval_s()
        tick = min(TICK_S, watchdog) if watchdog else TICK_S
        while not self.stop_event.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), tick)
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self.on_tick()
            if watchdog or self.worker is not None:
                self.notifier.notify("WATCHDOG=1", *([f"FLOWMED_WORKER={self.worker}"] if self.worker is not None
                                                     else []))

    def on_tick(self) -> None:
        """Once a second: expiry, flush deadlines, state save, kernel drops, metrics, status."""
        assert self.pipeline is not None
        supervisor = os.environ.get("FLOWMED_SUPERVISOR_PID")
        if self.worker is not None and supervisor and os.getppid() != int(supervisor):
            log("error", "supervisor is gone; stopping", worker=self.worker)
            self.request_stop()
        p, m = self.pipeline, self.metrics
        now = now_ms()
        p.refresh_gauges(now)
        for stage_name, stage in p.stages:  # closes usage intervals when no flows arrive, picks up bindings
            try:
                for name, batch in stage.tick(now).items():
                    if batch.num_rows:
                        p.sink.add(name, batch)
            except Exception as exc:
                m.pipeline_errors.labels(stage_name).inc()
                log("error", f"{stage_name} tick failed", error=repr(exc))
        for name, batch in self.exporter_stats.tick(now, p.board, m.decode_errors).items():
            p.sink.add(name, batch)
        try:
            p.sink.maybe_flush()
        except Exception as exc:
            m.pipeline_errors.labels("sink").inc()
            log("error", "sink flush failed", error=repr(exc))
        if time.monotonic() - self._last_state_save >= self.config.decoder.state_save_interval_s:
            self.save_state()
        for lst in self.listeners:
            if m.socket_drops is not None:  # else the supervisor counts them
                count_kernel_drops(lst, m)
            new = lst.datagrams - lst.reported_datagrams
            if new:
                m.listener_datagrams.labels(lst.address).inc(new)
                m.listener_bytes.labels(lst.address).inc(lst.bytes - lst.reported_bytes)
                lst.reported_datagrams, lst.reported_bytes = lst.datagrams, lst.bytes
        self._sink_metrics()
        self.publish_status()
        if time.monotonic() - self._last_status_line >= STATUS_LINE_INTERVAL_S:
            self._last_status_line = time.monotonic()
            self.notifier.notify(f"STATUS={status_line(self.snapshot)}",
                                 *([f"FLOWMED_WORKER={self.worker}"] if self.worker is not None else []))

    def _sink_metrics(self) -> None:
        if self.pipeline is None:
            return
        sink = self.pipeline.sink
        m = self.metrics
        m.sink_rows_buffered.set(sink.pending_rows)
        for table, rows in dict(sink.dropped_rows).items():
            key = ("sink", table)
            if rows > self._dropped_seen.get(key, 0):
                m.sink_dropped_rows.labels(table).inc(rows - self._dropped_seen.get(key, 0))
                log("error", "rows dropped: the outputs cannot keep up", table=table,
                    rows=rows - self._dropped_seen.get(key, 0))
                self._dropped_seen[key] = rows
        for output, stats in dict(sink.stats).items():
            key = ("output", output)
            rows = stats.dropped_rows
            if rows > self._dropped_seen.get(key, 0):
                m.output_dropped_rows.labels(output).inc(rows - self._dropped_seen.get(key, 0))
                self._dropped_seen[key] = rows
        spool = spool_summary(sink)
        m.spool_bytes.set(spool.get("bytes", 0))
        m.spool_oldest_age.set(spool.get("oldest_age_s", 0.0))
        for o in sink.outputs:
            if isinstance(o, ClickHouseOutput):
                st = o.status()
                m.clickhouse_connected.set(1 if st["connected"] else 0)
                m.clickhouse_backlog_rows.set(st["spool_rows"])
        dropped = spool.get("dropped_rows", 0)
        if dropped > self._dropped_seen.get(("spool", ""), 0):
            m.spool_dropped_rows.inc(dropped - self._dropped_seen.get(("spool", ""), 0))
            self._dropped_seen[("spool", "")] = dropped

    def request_stop(self, sig: int | None = None) -> None:
        if self.stop_event is not None and not self.stop_event.is_set():
            log("info", "stopping", signal=signal.Signals(sig).name if sig else "",
                **({} if self.worker is None else {"worker": self.worker}))
            self.notifier.notify("STOPPING=1", "STATUS=flushing")
            self.stop_event.set()

    def request_reload(self) -> None:
        self.reload_requested = True  # handled by the main loop at its next tick (within a second)

    def reload(self) -> bool:
        """SIGHUP: reload the config; an invalid one is refused and the old one stays."""
        try:
            new = config_mod.load(self.config_path, self.overrides)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("refused").inc()
            log("error", "configuration reload refused; keeping the running configuration", error=str(exc),
                key=exc.key)
            return False
        old = self.config
        self.config = new
        setup_logging(new.log.level, new.log.format)
        set_level(new.log.level)
        assert self.pipeline is not None
        p = self.pipeline
        p.config = new
        p.decoder.set_sampling(sampling_policy(new))
        if (new.listen.allow, new.listen.exporter_rate_limit, new.listen.exporter_rate_burst) != \
                (old.listen.allow, old.listen.exporter_rate_limit, old.listen.exporter_rate_burst):
            p.admission = make_admission(new)  # exporter allowlist and rate limit take effect at once
            log("info", "exporter allowlist and rate limit reloaded", allow=new.listen.allow,
                exporter_rate_limit=new.listen.exporter_rate_limit)
        now = now_ms()
        for _, stage in p.stages:
            stage.reload(new, now)
        if new.listen.endpoints() != old.listen.endpoints() or new.metrics.listen != old.metrics.listen:
            log("warning", "listen addresses changed: they take effect at the next restart")
        self.metrics.config_reloads.labels("ok").inc()
        log("info", "configuration reloaded", config=self.config_path or "(defaults)")
        return True

    async def shutdown(self) -> int:
        """Stop receiving, drain, decode, flush, save state; bounded by ``service.shutdown_timeout_s``."""
        assert self.pipeline is not None and self._loop is not None
        t0 = time.monotonic()
        for lst in self.listeners:
            lst.stop()
        drained = sum(lst.drain() for lst in self.listeners)
        self.close_listeners()
        if self._batch_timer is not None:
            self._batch_timer.cancel()
        self.process_pending()
        p = self.pipeline
        timeout = self.config.service.shutdown_timeout_s
        try:  # first: templates are worth keeping even if the flush below gets stuck; but a third of the time at most
            await asyncio.wait_for(self.save_state_final(), max(0.1, timeout / 3 - (time.monotonic() - t0)))
        except TimeoutError:
            log("error", "template state not saved at stop: its writer is stuck", timeout_s=round(timeout / 3, 1))
        try:
            await asyncio.wait_for(self.stop_side_listeners(), max(0.1, timeout - (time.monotonic() - t0)))
            await asyncio.wait_for(self._loop.run_in_executor(None, self._final_flush),
                                   max(0.1, timeout - (time.monotonic() - t0)))
        except TimeoutError:
            log("error", "shutdown timed out: data still in memory is lost", timeout_s=timeout)
            self.notifier.notify("STATUS=shutdown timed out")
            # The flush thread is stuck (a hung disk or server); waiting for it at interpreter exit would overrun
            # the limit we promise, so leave now.
            logging.shutdown()
            os._exit(1)
        self.on_tick_metrics_final()
        if self.http is not None:
            self.http.close()
        written = {name: st.rows for name, st in p.sink.stats.items()}
        log("info", "flowmed stopped" if self.worker is None else "worker stopped",
            **({} if self.worker is None else {"worker": self.worker}), datagrams=p.datagrams, flows=p.flows,
            drained_at_stop=drained, flushed_at_stop_rows=self.rows_flushed,
            **{f"rows_written_{name}": rows for name, rows in written.items()},
            **{f"flows_written_{name}": st.rows_by_table.get("flows", 0)
               for name, st in p.sink.stats.items()},
            seconds=round(time.monotonic() - t0, 3))
        self.notifier.close()
        self.store_lock.release()
        return 0

    def _final_flush(self) -> None:
        p = self.pipeline
        assert p is not None
        for stage_name, stage in p.stages:
            try:
                for name, batch in stage.close(now_ms()).items():
                    if batch.num_rows:
                        p.sink.add(name, batch)
            except Exception as exc:
                log("error", f"{stage_name} close failed", error=repr(exc))
        before = p.sink.pending_rows
        p.sink.flush()
        p.sink.close()
        self.rows_flushed = before

    def on_tick_metrics_final(self) -> None:
        self.publish_status()

    def close_listeners(self) -> None:
        for lst in self.listeners:
            lst.close()

    # --- batching --------------------------------------------------------------------------------------------------

    def _on_data(self) -> None:
        """After a read: cut a batch when full, else make sure one is cut within batch_interval_ms."""
        if len(self.pending) >= self.config.listen.batch_datagrams:
            if not self._batch_scheduled:
                self._batch_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self.process_pending)
        elif self._batch_timer is None and self.pending:
            assert self._loop is not None
            self._batch_timer = self._loop.call_later(self.config.listen.batch_interval_ms / 1000,
                                                      self.process_pending)

    def process_pending(self) -> None:
        """Decode everything received so far as one batch."""
        self._batch_scheduled = False
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        if not self.pending or self.pipeline is None:
            return
        batch = self.pending[:]
        self.pending.clear()
        self.pipeline.process(batch)

    # --- state and status ------------------------------------------------------------------------------------------

    def _load_state(self, decoder: Any) -> None:
        """Load saved templates: every other state file first (a changed worker count loses nothing), own last.

        Loading is bounded whatever the files hold: every record is checked against the decoder's limits and
        template budgets, nothing is compiled, and the own log is at most about twice the live state (the writer
        compacts it). Files of the JSON format before the log are loaded too and saved again in the log.
        """
        own = state_path(self.config, self.worker)
        main = state_path(self.config, None)
        legacy_main = main.with_suffix(".json") if main.suffix != ".json" else None
        legacy_own = None
        if legacy_main is not None:
            legacy_own = legacy_main if self.worker is None else \
                legacy_main.with_name(f"{legacy_main.name}.worker{self.worker}")
        writer = self.state_writer = StateWriter(own, legacy_own)
        others = [p for p in sorted(main.parent.glob(main.name + "*"))
                  if p != own and not p.name.endswith((".tmp", ".held"))]
        legacy = []
        if legacy_main is not None:
            legacy = [p for p in sorted(main.parent.glob(legacy_main.name + "*"))
                      if p != legacy_own and not p.name.endswith(".tmp")]
            if legacy_own is not None and legacy_own.is_file():
                legacy.append(legacy_own)  # last: its own templates win
        for path in [*others, *legacy]:
            if path in legacy and path.stat().st_size > LEGACY_STATE_MAX_BYTES:
                log("warning", "old template state too large to load; templates will be learned again",
                    path=str(path), bytes=path.stat().st_size)
                continue
            self._load_file(decoder, path, path.read_bytes, mark=True)
        try:
            own_log, held = writer.load()
        except OSError as exc:
            own_log = held = None
            log("warning", "template state not loaded; templates will be learned again", path=str(own),
                error=repr(exc))
        if own_log is not None:
            self._load_file(decoder, own, lambda: own_log, mark=False)
        if held is not None:
            self._load_file(decoder, writer.held_path, lambda: held, mark=False)

    def _load_file(self, decoder: Any, path: Path, read: Any, *, mark: bool) -> None:
        try:
            refused = decoder.load_state(read(), mark=mark)
            log("info" if not mark else "debug", "template state loaded", path=str(path), refused=refused)
        except Exception as exc:  # a damaged state file costs the templates, never the start
            log("warning", "template state not loaded; templates will be learned again", path=str(path),
                error=repr(exc))

    def save_state(self) -> None:
        """Start saving what changed in the template state (written on the state writer's thread); while the
        previous save is still being written, nothing (the changes wait for the next tick's try)."""
        writer = self.state_writer
        if self.pipeline is None or writer is None or writer.busy:
            return  # tried again at the next tick
        self._last_state_save = time.monotonic()
        try:
            changes = self.pipeline.decoder.state_changes()
        except Exception as exc:  # a bug; state saving is housekeeping
            log("error", "template state not saved", error=repr(exc))
            return
        writer.submit(changes).add_done_callback(self._state_saved)

    def _state_saved(self, fut: concurrent.futures.Future[None]) -> None:
        """(The writer's thread.) Count the save."""
        exc = fut.exception()
        if exc is None:
            self.metrics.state_saves.labels("ok").inc()
        else:
            self.metrics.state_saves.labels("failed").inc()
            assert self.state_writer is not None
            log("error", "template state not saved", path=str(self.state_writer.path), error=repr(exc))

    async def save_state_final(self) -> None:
        """At stop: wait for the save being written, then save what changed since (bounded by the changes)."""
        writer = self.state_writer
        if writer is None or self.pipeline is None:
            return
        if writer._future is not None:
            with contextlib.suppress(Exception):  # counted by _state_saved
                await asyncio.wrap_future(writer._future)
        self.save_state()
        if writer._future is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(writer._future)
        writer.close()

    def fresh_status(self) -> dict[str, Any]:
        """For the HTTP thread: a snapshot built on the event loop now (the last published one if the loop is busy)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return self.snapshot
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def build() -> None:
            self.publish_status()
            fut.set_result(self.snapshot)

        try:
            loop.call_soon_threadsafe(build)
            return fut.result(timeout=2.0)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return self.snapshot

    def publish_status(self) -> None:
        """Build the status snapshot (served by the HTTP thread, or written for the supervisor)."""
        p = self.pipeline
        sink = p.sink if p else None
        if p is not None:
            p.sync_templates()
        outputs = []
        for o in sink.outputs if sink is not None else ():
            name = o.name
            stats = sink.stats.get(name, OutputStats()) if sink is not None else OutputStats()
            entry: dict[str, Any] = {
                "name": name, "state": "ok", "rows": stats.rows, "batches": stats.batches, "errors": stats.errors,
                "dropped_rows": stats.dropped_rows, "last_error": stats.last_error,
                "replayed_rows": stats.replayed_rows}
            if isinstance(o, ClickHouseOutput):  # the server side: what it acknowledged, the connection, the backlog
                st = o.status()
                entry["state"] = "connected" if st["connected"] else "spooling"
                entry["last_error"] = st["last_error"] or entry["last_error"]
                entry.update({
                    "connected": st["connected"], "rows_inserted": st.get("rows_inserted", 0),
                    "rows_inserted_by_table": st["rows_inserted_by_table"],
                    "insert_errors": st.get("insert_errors", 0), "connect_errors": st.get("connect_errors", 0),
                    "errors_by_code": st["errors_by_code"], "last_insert_ms": st["last_insert_ms"],
                    "last_insert_seconds": st["last_insert_seconds"], "retry_in_s": st["retry_in_s"],
                    "disconnected_for_s": st["disconnected_for_s"], "backlog_rows": st["spool_rows"],
                    "backlog_batches": st["spool_batches"], "backlog_age_s": st["spool_oldest_age_s"],
                    "already_stored": st.get("already_stored", 0)})
            outputs.append(entry)
        spool = spool_summary(sink)
        self.snapshot = {
            "version": metrics_mod.version(), "pid": os.getpid(), "worker": self.worker,
            "worker_count": self.config.service.workers, "uptime_s": time.time() - self.started,
            "datagrams": p.datagrams if p else 0, "flows": p.flows if p else 0, "rows_flushed": rows_flushed(sink),
            "listeners": [{"address": lst.address, "worker": self.worker, "rcvbuf_bytes": lst.rcvbuf_granted,
                           "datagrams": lst.datagrams,
                           "kernel_drops": lst.kernel_drops() or 0} for lst in self.listeners],
            "exporters": p.board.to_list() if p else [],
            "outputs": outputs,
            "spool": spool,
            "rejects": p.rejects() if p else {},
        }
        if self.worker is not None:
            run_dir = os.environ.get("FLOWMED_RUN_DIR")
            if run_dir:
                with contextlib.suppress(OSError):
                    status_mod.write_snapshot(Path(run_dir) / f"status-{self.worker}.json", self.snapshot)


def run(config: Config, config_path: str | None, overrides: tuple[str, ...], worker: int | None = None,
        listen_fds: list[int] | None = None) -> int:
    """Run one receiving process on uvloop until stopped; returns the exit status."""
    import uvloop

    setup_logging(config.log.level, config.log.format)
    server = Server(config, config_path, overrides, worker=worker, listen_fds=listen_fds)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(server.serve())

