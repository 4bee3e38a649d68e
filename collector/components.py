"""The daemon's parts, assembled in one place: :meth:`Components.build` (after uvicorn's ``Config.load`` step).

A receiving process needs a decoder, a Sink with its outputs, the Mediator (when ``[mediation] enabled``), the static
bindings file (one process only), the compliance stage and the list of stages the Pipeline runs on each batch. They
are built here from the configuration, once, with typed fields, so :class:`collector.server.Server` and
:class:`collector.pipeline.Pipeline` only run them and probe for nothing. Tests and tools may hand in their own
decoder, sink or mediator (``Components.build(..., sink=...)``); what they hand in must implement the protocols
below (:class:`SinkPort`, :class:`DecoderPort`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import pyarrow as pa

from collector import metrics as metrics_mod
from collector.bindings_db import open_bindings
from collector.config import Config
from collector.tables import load_tables  # every table and its retention setting registered
from decoders.dispatch import DispatchDecoder, DispatchResult
from decoders.netflow.decoder import DecoderLimits, FlowDecoder
from decoders.netflow.kernel import warm_up as warm_up_netflow
from decoders.netflow.persistence import StateChanges
from decoders.received import Datagram, Received
from decoders.sampling import SamplingPolicy
from decoders.sflow.decoder import SflowDecoder, SflowLimits
from decoders.sflow.decoder import warm_up as warm_up_sflow
from mediation.compliance.kernels import warm_up as warm_up_compliance
from mediation.compliance.stage import ComplianceStage, make_compliance
from mediation.flow_stages import NamedStages, flow_stages
from mediation.mediator import Mediator
from mediation.subscribers.static import StaticBindings
from storage.factory import SinkHooks, build_sink
from storage.outputs import Output, OutputStats


def now_ms() -> int:
    """The wall clock in UTC milliseconds: the ``now`` the daemon gives its stages."""
    return time.time_ns() // 1_000_000


class SinkPort(Protocol):
    """What the daemon uses of :class:`storage.sink.Sink` (a test's fake implements the same)."""

    @property
    def outputs(self) -> Sequence[Output]:
        """The outputs batches are written to (store, ClickHouse), for the status and the spool metrics."""

    @property
    def stats(self) -> Mapping[str, OutputStats]:
        """Per output name: rows and batches written, errors, rows dropped and replayed."""

    @property
    def pending_rows(self) -> int:
        """Rows accepted but not yet handed to the writer thread."""

    @property
    def dropped_rows(self) -> Mapping[str, int]:
        """Per table: rows refused because the outputs could not keep up."""

    @property
    def journal_errors(self) -> int:
        """Batches handed to the outputs without a handoff journal record (the disk refused it)."""

    @property
    def journal_set_aside(self) -> int:
        """Unreadable handoff journal records moved aside at start."""

    def add(self, table_name: str, batch: pa.RecordBatch) -> bool: ...

    def maybe_flush(self, now: float | None = None) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class DecoderPort(Protocol):
    """What the daemon uses of :class:`decoders.dispatch.DispatchDecoder` (a test's fake implements the same)."""

    @property
    def exporters(self) -> Mapping[str, object]: ...

    def decode(self, datagrams: Received | list[Datagram]) -> DispatchResult: ...

    def expire(self, now_ms: int) -> Mapping[tuple[str, str], int]: ...

    def templates_known(self) -> dict[str, int]: ...

    def pending_bytes(self) -> int: ...

    def template_memory(self) -> int: ...

    def set_sampling(self, sampling: SamplingPolicy) -> None: ...

    def state_changes(self) -> StateChanges: ...

    def load_state(self, data: bytes, *, mark: bool = False) -> int: ...


MediatorArg = Mediator | None | Literal["auto"]
"""A mediator handed to :meth:`Components.build`: ``"auto"`` builds it from the configuration (and the static
bindings with it); a Mediator or None is taken as it is (no static bindings then)."""


@dataclass
class Components:
    """Everything one receiving process runs, built once by :meth:`build`."""

    decoder: DecoderPort
    sink: SinkPort
    mediator: Mediator | None = None
    static: StaticBindings | None = None
    """The static bindings file, owned by one process (the single one, or worker 0)."""
    compliance: ComplianceStage | None = None
    """nat_events and ip_detail_records, when enabled (:func:`mediation.compliance.stage.make_compliance`)."""
    stages: NamedStages = field(default_factory=list)
    """What the Pipeline runs on each batch of flows, in order (:func:`mediation.flow_stages.flow_stages`)."""

    @classmethod
    def assemble(cls, config: Config, decoder: DecoderPort, sink: SinkPort, mediator: Mediator | None = None, *,
                 compliance: ComplianceStage | None = None, static: StaticBindings | None = None) -> Components:
        """Parts already built (by :meth:`build`, a tool or a test) with the stage list that runs them."""
        stages = flow_stages(mediator, compliance, static=static,
                             static_check_interval_s=config.subscribers.static_check_interval_s)
        return cls(decoder, sink, mediator, static, compliance, stages)

    @classmethod
    def build(cls, config: Config, worker: int | None, metrics: metrics_mod.Metrics, *,
              sink: SinkPort | None = None, decoder: DecoderPort | None = None,
              mediator: MediatorArg = "auto") -> Components:
        """The parts for ``config`` in process ``worker`` (None: the single process), outputs counted in
        ``metrics``; ``sink``, ``decoder`` and ``mediator`` replace the configured ones when given.

        Compiles the NetFlow, sFlow and mediation kernels (or loads them from ``NUMBA_CACHE_DIR``) so that the
        first datagram does not pay for it. Raises ``OSError``/``ValueError`` for what makes a start fail (an unwritable
        store, a broken static bindings file).
        """
        if decoder is None:
            decoder = make_decoder(config)
        # compile (or load from NUMBA_CACHE_DIR) the decode kernels before READY, not at the first datagram
        warm_up_netflow()
        warm_up_sflow()
        if sink is None:
            sink = make_sink(config, metrics, worker)
        if mediator == "auto":
            built = make_mediator(config, worker)
            static = make_static(config, built, worker)
        else:
            built, static = mediator, None
        if built is not None:
            from mediation.dedup import warm_up as warm_up_mediation
            from mediation.mediator import warm_up as warm_up_mediator

            warm_up_mediation()  # the record key and de-duplication kernels, before READY like the sFlow ones
            warm_up_mediator()  # the parts, attribution, class, validation and reconciliation kernels
            if config.compliance.enabled:
                warm_up_compliance()  # the compliance stage's scan, row and binding cache kernels
        return cls.assemble(config, decoder, sink, built, compliance=make_compliance(config, built, worker),
                            static=static)


def make_decoder(config: Config) -> DispatchDecoder:
    """The flow decoder for ``config``: NetFlow/IPFIX and sFlow, whatever endpoint they come to (limits from
    ``[decoder]``, ``max_exporters`` bounding each protocol's exporters; policy from ``[sampling]``)."""
    d = config.decoder
    limits = DecoderLimits(max_exporters=d.max_exporters, max_templates_per_exporter=d.max_templates_per_exporter,
                           max_template_fields=d.max_template_fields, pending_max_bytes=d.pending_max_bytes,
                           template_max_bytes_per_exporter=d.template_max_bytes_per_exporter,
                           template_max_bytes=d.template_max_bytes,
                           pending_max_age_ms=int(d.pending_max_age_s * 1000),
                           template_timeout_ms=int(d.template_timeout_s * 1000))
    sampling = sampling_policy(config)
    return DispatchDecoder(FlowDecoder(limits, sampling),
                           SflowDecoder(SflowLimits(max_exporters=d.max_exporters), sampling))


def sampling_policy(config: Config) -> SamplingPolicy:
    """``[sampling]`` as the decoder's SamplingPolicy."""
    s = config.sampling
    return SamplingPolicy(s.default_rate, [(r.prefix, r.rate, r.override) for r in s.rules])


def make_mediator(config: Config, worker: int | None = None) -> Mediator | None:
    """The flow Mediator when ``[mediation] enabled``, else None. Its bindings are the durable store shared by every
    process (``subscribers.bindings_db``)."""
    if not config.mediation.enabled:
        return None
    return Mediator(config, open_bindings(config), worker=worker, host=config.service.host_index)


def make_static(config: Config, mediator: Mediator | None, worker: int | None = None) -> StaticBindings | None:
    """The static bindings file, applied now, when there is one and mediation runs. One process only applies it
    (the single process, or worker 0); the others pick its bindings up through ``Bindings.refresh``."""
    if mediator is None or not config.subscribers.static_file or worker not in (None, 0):
        return None
    static = StaticBindings(config.subscribers.static_file, mediator.bindings)
    static.reload(now_ms())  # a broken file at start is a start failure, like a broken config
    return static


def make_sink(config: Config, metrics: metrics_mod.Metrics, worker: int | None = None) -> SinkPort:
    """The Sink with every output the config enables (:func:`storage.factory.build_sink`), counted in ``metrics``.

    With several workers each has its own ClickHouse spool and handoff journal and only worker 0 does the store's
    housekeeping (recovery, compaction, retention).
    """

    def on_write(output: str, table: str, rows: int, seconds: float) -> None:
        metrics.output_batches.labels(output, table).inc()
        metrics.output_rows.labels(output, table).inc(rows)
        metrics.output_write_seconds.labels(output).observe(seconds)

    def on_error(output: str, table: str, exc: BaseException) -> None:
        metrics.output_errors.labels(output).inc()

    def on_replay(output: str, table: str, rows: int) -> None:
        metrics.output_replayed_rows.labels(output).inc(rows)

    def on_insert(table: str, rows: int, seconds: float) -> None:
        metrics.clickhouse_inserted_rows.labels(table).inc(rows)
        metrics.clickhouse_insert_seconds.observe(seconds)

    def on_insert_error(stage: str, code: str) -> None:
        metrics.clickhouse_errors.labels(stage, code).inc()

    hooks = SinkHooks(on_write=on_write, on_error=on_error, on_replay=on_replay, on_insert=on_insert,
                      on_insert_error=on_insert_error)
    return build_sink(config, worker=worker, host=config.service.host_index, tables=load_tables().values(), hooks=hooks)
