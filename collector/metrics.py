"""Every Prometheus metric flowmed exports, in one place, built on an explicit registry.

Conventions (issue 7.4): ``flowmed_`` prefix, counters end in ``_total`` (prometheus-client appends it), base units
(seconds, bytes). Labels come from bounded sets only: the exporter label is capped by ``metrics.max_exporter_labels``
(further exporters share the value ``"other"``), reasons are the decoders' stable ``reason`` strings, outputs and
tables are names from the code. With several workers, prometheus-client's multiprocess mode merges the workers'
values (every gauge declares its ``multiprocess_mode``); no custom collectors, as that mode cannot merge them.

Components get the process's instance with :func:`current` (the daemon installs one at start with :func:`install`).
"""

from __future__ import annotations

import os
import platform
import threading
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OTHER = "other"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024, 2048, 4096, 16384)


def version() -> str:
    """flowmed's installed version ("unknown" when run from a tree that was never installed)."""
    try:
        return metadata.version("flowmed")
    except metadata.PackageNotFoundError:
        return "unknown"


class ExporterLabels:
    """Maps exporter addresses to label values, at most ``limit`` distinct ones; the rest become ``"other"``.

    Exporters are chosen by whoever can send a datagram, so an unbounded label would let them blow up the
    time-series database. The first ``limit`` exporters seen keep their own label for the life of the process.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, exporter: str) -> str:
        if exporter in self._known:
            return exporter
        with self._lock:
            if len(self._known) < self.limit:
                self._known.add(exporter)
                return exporter
        return OTHER


class Metrics:
    """The metric objects of one process, registered in ``registry``.

    ``role`` is ``"single"`` (one process does everything), ``"worker"`` (one of N receiving processes) or
    ``"supervisor"`` (the parent of N workers: only its own few metrics; the workers' are merged from files).
    """

    def __init__(self, registry: CollectorRegistry, max_exporter_labels: int = 256, role: str = "single") -> None:
        self.registry = registry
        self.exporter_label = ExporterLabels(max_exporter_labels)
        r = registry

        if role in ("single", "supervisor"):
            self.build_info = Gauge("flowmed_build_info", "flowmed build: version and Python (value is always 1).",
                                    ["version", "python"], registry=r, multiprocess_mode="max")
            self.build_info.labels(version(), platform.python_version()).set(1)
        if role == "supervisor":
            self.workers = Gauge("flowmed_workers", "Worker processes running.", registry=r,
                                 multiprocess_mode="livemax")
            self.worker_restarts = Counter("flowmed_worker_restarts", "Worker processes that died and were restarted.",
                                           registry=r)
        if role in ("single", "supervisor"):
            # Counted where SIGHUP is received and validated: the process itself, or the supervisor of the workers.
            self.config_reloads = Counter("flowmed_config_reloads",
                                          "SIGHUP reloads by result (ok, or refused: the old configuration stays).",
                                          ["result"], registry=r)
        else:
            self.config_reloads = Counter("flowmed_worker_config_reloads", "SIGHUP reloads applied by a worker.",
                                          ["result"], registry=r)

        # Receive path. Kernel drops are counted by whoever owns the sockets for good: the single process, or the
        # supervisor (a restarted worker would count its socket's drops again from zero).
        self.socket_drops = Counter("flowmed_socket_drops",
                                    "Datagrams the kernel dropped because the socket's receive buffer was full.",
                                    ["listener"], registry=r) if role in ("single", "supervisor") else None
        if role == "supervisor":
            return
        self.listener_datagrams = Counter("flowmed_listener_datagrams", "Datagrams read from a listening socket.",
                                          ["listener"], registry=r)
        self.listener_bytes = Counter("flowmed_listener_received_bytes", "Payload bytes read from a listening socket.",
                                      ["listener"], registry=r)
        self.socket_rcvbuf = Gauge("flowmed_socket_receive_buffer_bytes",
                                   "Receive buffer the kernel granted (SO_RCVBUF as read back).", ["listener"],
                                   registry=r, multiprocess_mode="max")
        # Decoding.
        self.datagrams = Counter("flowmed_datagrams_received", "Export datagrams decoded, per exporter and version.",
                                 ["exporter", "version"], registry=r)
        self.records = Counter("flowmed_records_received", "Flow records decoded, per exporter and version.",
                               ["exporter", "version"], registry=r)
        self.decode_errors = Counter("flowmed_decode_errors", "Malformed or refused input, per exporter and reason.",
                                     ["exporter", "reason"], registry=r)
        self.datagrams_refused = Counter("flowmed_datagrams_refused",
                                         "Datagrams dropped before decoding, per exporter and reason (not_allowed: "
                                         "outside listen.allow; rate_limited: over listen.exporter_rate_limit).",
                                         ["exporter", "reason"], registry=r)
        self.limit_hits = Counter("flowmed_decoder_limit_hits",
                                  "Times a decoder bound (max_exporters, max_templates_per_exporter, ...) refused "
                                  "something, per exporter and limit.", ["exporter", "limit"], registry=r)
        self.sequence_lost = Counter("flowmed_sequence_lost",
                                     "Export datagrams (v9, sFlow) or records (v5, IPFIX) missing by sequence number.",
                                     ["exporter"], registry=r)
        # sFlow v5: samples and their loss accounting (per exporter: agents and data sources are unbounded labels)
        self.sflow_samples = Counter("flowmed_sflow_samples", "sFlow samples decoded, per exporter and kind (flow, "
                                     "counter).", ["exporter", "kind"], registry=r)
        self.sflow_samples_lost = Counter("flowmed_sflow_samples_lost",
                                          "sFlow samples missing by the sample sequence numbers of their data sources.",
                                          ["exporter"], registry=r)
        self.sflow_sample_pool = Counter("flowmed_sflow_sample_pool_packets",
                                         "Packets the sFlow-sampled interfaces saw (growth of the sample pools).",
                                         ["exporter"], registry=r)
        self.sflow_agent_drops = Counter("flowmed_sflow_agent_drops",
                                         "Samples sFlow agents dropped themselves (growth of their drop counters).",
                                         ["exporter"], registry=r)
        self.sflow_skipped = Counter("flowmed_sflow_skipped",
                                     "sFlow samples and records of formats not decoded (skipped by their length), per "
                                     "exporter and structure.", ["exporter", "structure"], registry=r)
        self.templates = Gauge("flowmed_templates", "Templates known, per exporter.", ["exporter"], registry=r,
                               multiprocess_mode="livesum")
        self.exporters = Gauge("flowmed_exporters", "Exporters tracked by the decoder.", registry=r,
                               multiprocess_mode="livesum")
        self.pending_bytes = Gauge("flowmed_pending_template_bytes",
                                   "Bytes of data sets held while waiting for their template.", registry=r,
                                   multiprocess_mode="livesum")
        self.template_bytes = Gauge("flowmed_template_bytes",
                                    "What the templates of all exporters cost in bytes (decoder.template_max_bytes "
                                    "bounds it; docs/hardening.md).", registry=r, multiprocess_mode="livesum")
        self.decode_batches = Counter("flowmed_decode_batches", "Batches of datagrams decoded.", registry=r)
        self.batch_datagrams = Histogram("flowmed_decode_batch_datagrams", "Datagrams per decoded batch.",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.decode_seconds = Histogram("flowmed_decode_duration_seconds",
                                        "Time to decode (and mediate) one batch of datagrams.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.pipeline_errors = Counter("flowmed_pipeline_errors",
                                       "Batches lost to an unexpected error after decoding (a bug; see the log).",
                                       ["stage"], registry=r)
        self.state_saves = Counter("flowmed_state_saves", "Template state saves, by result.", ["result"], registry=r)
        # Outputs (the Sink and the outputs report through these).
        self.output_batches = Counter("flowmed_output_batches", "Batches written, per output and table.",
                                      ["output", "table"], registry=r)
        self.output_rows = Counter("flowmed_output_rows", "Rows written, per output and table.", ["output", "table"],
                                   registry=r)
        self.output_errors = Counter("flowmed_output_errors", "Failed writes (the batch was spooled), per output.",
                                     ["output"], registry=r)
        self.output_write_seconds = Histogram("flowmed_output_write_duration_seconds",
                                              "Time to write one batch, per output.", ["output"],
                                              buckets=LATENCY_BUCKETS, registry=r)
        self.sink_rows_buffered = Gauge("flowmed_sink_buffered_rows", "Rows waiting in memory for the next flush.",
                                        registry=r, multiprocess_mode="livesum")
        self.spool_bytes = Gauge("flowmed_spool_bytes", "Bytes waiting in the spool.", registry=r,
                                 multiprocess_mode="livesum")
        self.spool_oldest_age = Gauge("flowmed_spool_oldest_age_seconds", "Age of the oldest spooled batch.",
                                      registry=r, multiprocess_mode="livemax")
        self.sink_dropped_rows = Counter("flowmed_sink_dropped_rows",
                                         "Rows refused because too many were waiting to be written, per table.",
                                         ["table"], registry=r)
        self.output_dropped_rows = Counter("flowmed_output_dropped_rows",
                                           "Rows an output could not take after its last retry, per output.",
                                           ["output"], registry=r)
        self.spool_dropped_rows = Counter("flowmed_spool_dropped_rows", "Rows dropped because the spool was full.",
                                          registry=r)
        self.output_replayed_rows = Counter("flowmed_output_replayed_rows",
                                            "Rows the sink's handoff journal gave an output at start because a crash "
                                            "had cut their handoff (the output lacked them), per output.", ["output"],
                                            registry=r)
        self.handoff_unjournaled = Counter("flowmed_handoff_unjournaled_batches",
                                           "Batches handed to the outputs without a handoff journal record because "
                                           "the disk refused it (a crash before every output had them could leave "
                                           "the outputs unequal).", registry=r)
        self.handoff_set_aside = Counter("flowmed_handoff_set_aside_records",
                                         "Handoff journal records found unreadable at start and moved to corrupt/ "
                                         "(their rows may be missing from an output; see the log).", registry=r)
        # The ClickHouse server's side of its output (output_rows counts what was spooled for it).
        self.clickhouse_connected = Gauge("flowmed_clickhouse_connected",
                                          "1 while the ClickHouse output has a working connection, else 0.",
                                          registry=r, multiprocess_mode="livemin")
        self.clickhouse_inserted_rows = Counter("flowmed_clickhouse_inserted_rows",
                                                "Rows the ClickHouse server acknowledged, per table.", ["table"],
                                                registry=r)
        self.clickhouse_errors = Counter("flowmed_clickhouse_errors",
                                         "Failed ClickHouse connects and inserts, per stage (connect, insert) and "
                                         "code (ClickHouse error code, else the client's error class).",
                                         ["stage", "code"], registry=r)
        self.clickhouse_insert_seconds = Histogram("flowmed_clickhouse_insert_duration_seconds",
                                                   "Time from sending an INSERT to the server's acknowledgement.",
                                                   buckets=LATENCY_BUCKETS, registry=r)
        self.clickhouse_backlog_rows = Gauge("flowmed_clickhouse_backlog_rows",
                                             "Rows spooled for ClickHouse and not yet inserted (the age of the "
                                             "oldest is flowmed_spool_oldest_age_seconds).", registry=r,
                                             multiprocess_mode="livesum")
        # Mediation, RADIUS, IPDR and rating (their modules report through these).
        self.usage_bytes = Counter("flowmed_usage_bytes",
                                   "Flow bytes by mediation result: attributed, unattributed, rejected, duplicate.",
                                   ["result"], registry=r)
        self.rejects = Counter("flowmed_rejects", "Flow records mediation rejected, per reason (future, too_old, "
                               "impossible_timestamp, ...; the records are kept in the rejects table).", ["reason"],
                               registry=r)
        self.compliance_records = Counter("flowmed_compliance_records",
                                          "IP detail records written, by attribution status.", ["status"], registry=r)
        self.nat_events = Counter("flowmed_nat_events", "NAT log rows written, by kind: event (natEvent records), "
                                  "other (events naming no mapping), observed (translations seen in flows).",
                                  ["kind"], registry=r)
        self.radius_requests = Counter("flowmed_radius_requests", "RADIUS accounting requests per client and result.",
                                       ["client", "result"], registry=r)
        self.ipdr_sessions = Gauge("flowmed_ipdr_sessions", "IPDR/SP sessions open.", registry=r,
                                   multiprocess_mode="livesum")
        self.ipdr_records = Counter("flowmed_ipdr_records", "IPDR records received.", registry=r)
        self.ipdr_connections_refused = Counter(
            "flowmed_ipdr_connections_refused", "IPDR/SP connections refused at accept (not_allowed, max_connections, "
            "max_per_address, stopping) or closed because the CONNECT handshake did not complete in time "
            "(handshake_timeout).", ["reason"], registry=r)
        self.rating_runs = Counter("flowmed_rating_runs", "Rating runs by result.", ["result"], registry=r)
        self.rating_lag_seconds = Gauge("flowmed_rating_lag_seconds", "Age of the oldest closed, unrated usage.",
                                        registry=r, multiprocess_mode="livemax")


_current: Metrics | None = None
_lock = threading.Lock()


def install(metrics: Metrics) -> Metrics:
    """Make ``metrics`` the process's instance (the daemon does this at start)."""
    global _current
    _current = metrics
    return metrics


def current() -> Metrics:
    """The process's metrics; a private registry is created on first use outside the daemon (tools, tests)."""
    global _current
    with _lock:
        if _current is None:
            _current = Metrics(CollectorRegistry(auto_describe=True))
        return _current


def multiprocess_dir() -> str | None:
    """The directory prometheus-client's multiprocess mode uses in this process, if enabled."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")
