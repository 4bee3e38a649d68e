"""IPDR/SP collector (asyncio): dials out to configured CMTSs and accepts allowlisted exporter connections.

Each TCP connection runs one task around a sans-I/O :class:`decoders.ipdr.session.CollectorConnection`:
CONNECT/CONNECT_RESPONSE, GET_SESSIONS, FLOW_START for the wanted sessions, FINAL_TEMPLATE_DATA_ACK per
TEMPLATE_DATA, then DATA decoded column-wise into ``ipdr_records`` and ``usage`` batches
(:class:`mediation.ipdr.usage.IpdrUsage`) handed to the Sink.

Acknowledgement only after durability: when a session's ACK is due (``ackSequenceInterval`` records, a fraction of
``ackTimeInterval``, the stream idle for ``idle_ack_s``, or SESSION_STOP), the connection waits for
:meth:`Durability.sync` — ``Sink.flush()`` in an executor (it returns once every output has the rows durable), then
the delta state's journal commit — and only then sends the cumulative DATA_ACK. While a sync runs no connection
processes records, so what the commit records is exactly what the flush made durable. A connection waiting for a
sync does not read, which is the back-pressure the ack window expects.

Keepalive both ways: a KEEP_ALIVE is sent when nothing was sent for half the CMTS's advertised interval; a CMTS
silent for twice our advertised interval is declared dead (ERROR 0, close). Dial-out connections reconnect with
exponential backoff; every CMTS has its own task, so one failing never stalls another.

Connection slots: an accepted connection must complete the CONNECT handshake within ``connect_timeout_s`` of the
accept (bytes trickling in do not extend it), and one source address holds at most
``max_connections_per_address`` accepted connections, so peers that connect and drip cannot keep a CMTS out.
After the handshake only complete messages count as signs of life for the keepalive timeout. Refusals and handshake
timeouts are counted in ``flowmed_ipdr_connections_refused{reason}``.

Pre-existing flows: the first time a connection to an exporter starts a flow (FLOW_START), its connect time is
recorded as flowmed's first session with that exporter (:meth:`mediation.ipdr.usage.IpdrUsage.session_started`,
durable at once): service flows created before it only set a baseline.

Bad input is scoped as the session layer says: a session-level violation sends ERROR + FLOW_STOP for that session
only; a framing violation closes that connection only; everything is counted (``stats`` and
``flowmed_decode_errors{exporter, reason}``).

Over 500 lines because the dial-out, the listener and the per-connection task share the acknowledgement
bookkeeping that makes redelivery exact; the protocol itself is sans-I/O in :mod:`decoders.ipdr`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from collector.bindings_db import open_bindings
from collector.config import Config, split_endpoint
from decoders.ipdr import messages as m
from decoders.ipdr.session import CollectorConnection, ConnState, ProtocolViolation, RecordsReceived, SessState
from mediation.ipdr.settings import IpdrConfig, IpdrExporter
from mediation.ipdr.subscribers import CmSubscribers
from mediation.ipdr.usage import AddressLookup, IpdrUsage

log = logging.getLogger("flowmed.ipdr")
TICK_S = 0.25
READ_SIZE = 256 * 1024


class IpdrSink(Protocol):
    """Where IPDR usage and raw records go: the daemon's :class:`storage.sink.Sink`."""

    def add(self, table_name: str, batch: pa.RecordBatch) -> bool:
        """Buffer ``batch``; False when it was refused (memory bound reached)."""
        ...

    def flush(self) -> None:
        """Return once everything added is durable (blocks)."""
        ...


def _s16(host: str) -> bytes:
    addr = ipaddress.ip_address(host)
    if addr.version == 4:
        return bytes(10) + b"\xff\xff" + addr.packed
    return addr.packed


class SinkRefused(RuntimeError):
    """The sink would not take a batch (memory bound reached)."""


class Durability:
    """Flush the sink, then commit the delta state: the point after which records may be acknowledged."""

    def __init__(self, sink: IpdrSink, usage: IpdrUsage) -> None:
        self.sink, self.usage = sink, usage
        self.lock = asyncio.Lock()
        self.syncs = 0
        self._requested = 0  # sync requests handed out
        self._covered = 0  # requests up to this one are durable

    async def sync(self) -> None:
        """Return once everything processed before the call is durable (flushed and committed).

        Group commit: requests made while a flush runs are served together by the next one, so several CMTSs
        acknowledging at once cost one flush, not one each. Records are only processed under the lock, so a flush
        that starts after a request covers every record processed before it.
        """
        self._requested += 1
        ticket = self._requested
        async with self.lock:
            if self._covered >= ticket:
                return
            target = self._requested
            # A failed flush raises to the caller, which then acknowledges nothing (the CMTS redelivers). The
            # in-memory state is kept: it matches what the sink holds, which a later flush still writes, so the
            # redelivered records are recognised (watermark, stale) instead of counted twice.
            await asyncio.get_running_loop().run_in_executor(None, self.sink.flush)
            self.usage.commit()
            self._covered = target
            self.syncs += 1


@dataclass
class IpdrStats:
    connections_opened: int = 0
    connections_rejected: dict[str, int] = field(default_factory=dict)
    records: int = 0
    usage_rows: int = 0
    acks_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    peer_errors: int = 0
    sessions_stopped: int = 0


class IpdrCollector:
    """Runs the IPDR/SP side of flowmed.

    Args:
        config: the ``[ipdr]`` section.
        sink: the daemon's :class:`storage.sink.Sink` (``add``/``flush``).
        usage: the delta state and table builder.
        clock: monotonic clock (seconds), injectable for tests.
        wall_clock: wall clock (epoch seconds): connect times (the first session with an exporter) and the time
            records were received; injectable so tests can run a simulated CMTS's 15-minute intervals at once.
        housekeeping_s: how often the usage stage's ``tick`` runs (it re-reads a changed CM MAC file).
    """

    def __init__(self, config: IpdrConfig, sink: IpdrSink, usage: IpdrUsage,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 housekeeping_s: float = 5.0) -> None:
        self.config = config
        self.sink = sink
        self.usage = usage
        self.durability = Durability(sink, usage)
        self.clock = clock
        self.wall_clock = wall_clock
        self.housekeeping_s = housekeeping_s
        self.stats = IpdrStats()
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._stopping = False
        self._allowed = [ipaddress.ip_network(p, strict=False) for p in config.allow]
        for e in config.exporters:
            self._allowed.append(ipaddress.ip_network(split_endpoint(e.address)[0]))
        self.listen_port: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start a dialer per configured exporter and the listener (if configured)."""
        for exporter in self.config.exporters:
            self._spawn(self._dial_loop(exporter))
        self._spawn(self._housekeeping())
        if self.config.listen:
            host, port = split_endpoint(self.config.listen)
            self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
            self.listen_port = self._server.sockets[0].getsockname()[1]
            log.info("ipdr: listening for exporters on %s:%d", host, self.listen_port)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: make everything durable, ACK it, FLOW_STOP every session, DISCONNECT, close."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.durability.sync(), timeout)
        for conn in list(self.connections):
            conn.goodbye()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        if self._server is not None:
            await self._server.wait_closed()

    async def _housekeeping(self) -> None:
        """Pick up changes of the CM MAC -> subscriber file; publish the open-session gauge."""
        while not self._stopping:
            await asyncio.sleep(self.housekeeping_s)
            try:
                # the stage's own tick (today: re-reads a changed CM MAC file); what it returns goes to the sink
                for name, batch in self.usage.tick(int(self.wall_clock() * 1000)).items():
                    self.sink.add(name, batch)
            except Exception:
                log.exception("ipdr: the usage stage's tick failed")
            with contextlib.suppress(Exception):
                from collector import metrics

                metrics.current().ipdr_sessions.set(self.open_sessions)

    @property
    def open_sessions(self) -> int:
        """Sessions started (FLOW_START sent) and not stopped, over every connection."""
        return sum(1 for c in self.connections for s in c.conn.sessions.values()
                   if s.state not in (SessState.IDLE, SessState.CLOSED))

    # -- dial out ------------------------------------------------------------------------------------------------

    async def _dial_loop(self, exporter: IpdrExporter) -> None:
        host, port = split_endpoint(exporter.address)
        name = exporter.name or exporter.address
        delay = self.config.reconnect_min_s
        while not self._stopping:
            started = self.clock()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        self.config.connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                log.warning("ipdr: %s: connect failed: %s (retry in %.1fs)", name, exc, delay)
            else:
                conn = _Connection(self, reader, writer, name, host, exporter.ipv6_bare, initiator=True)
                useful = await conn.run()
                if useful or self.clock() - started > self.config.reconnect_max_s:
                    delay = self.config.reconnect_min_s
                if self._stopping:
                    return
                log.info("ipdr: %s: connection closed (reconnect in %.1fs)", name, delay)
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, self.config.reconnect_max_s)

    # -- accept --------------------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if peer else "?"
        reason = None
        if self._stopping:
            reason = "stopping"
        elif self.config.allowlist and not self._is_allowed(host):
            reason = "not_allowed"
        elif len(self.connections) >= self.config.max_connections:
            reason = "max_connections"
        elif sum(1 for c in self.connections if not c.initiator and c.host == host) >= \
                self.config.max_connections_per_address:
            reason = "max_per_address"
        if reason is not None:
            self.count_refused(host, reason)
            log.warning("ipdr: connection from %s refused: %s", host, reason, extra={"client": host})
            writer.transport.abort()
            return
        exporter = next((e for e in self.config.exporters if split_endpoint(e.address)[0] == host), None)
        name = (exporter.name or exporter.address) if exporter else host
        conn = _Connection(self, reader, writer, name, host, bool(exporter and exporter.ipv6_bare),
                           initiator=False)
        await conn.run()

    def _is_allowed(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._allowed)

    def count_error(self, exporter: str, reason: str) -> None:
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1
        _metric_error(exporter, reason)

    def count_refused(self, host: str, reason: str) -> None:
        """A connection refused at accept (also counted as ``flowmed_decode_errors{reason="ipdr_connection_*"}``),
        or closed for not completing the handshake in time (``handshake_timeout``; ``ipdr_connect_timeout`` there)."""
        self.stats.connections_rejected[reason] = self.stats.connections_rejected.get(reason, 0) + 1
        if reason != "handshake_timeout":
            _metric_error(host, f"connection_{reason}")
        with contextlib.suppress(Exception):
            from collector import metrics

            metrics.current().ipdr_connections_refused.labels(reason).inc()


def _metric_error(exporter: str, reason: str) -> None:
    with contextlib.suppress(Exception):
        from collector import metrics

        mt = metrics.current()
        mt.decode_errors.labels(mt.exporter_label(exporter), f"ipdr_{reason}").inc()


def _metric_records(n: int) -> None:
    with contextlib.suppress(Exception):
        from collector import metrics

        metrics.current().ipdr_records.inc(n)


class _Connection:
    """One CMTS connection: the read loop, timers and the session decisions."""

    def __init__(self, owner: IpdrCollector, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str,
                 host: str, ipv6_bare: bool, initiator: bool) -> None:
        cfg = owner.config
        self.owner, self.cfg = owner, cfg
        self.reader, self.writer = reader, writer
        self.name, self.initiator, self.host = name, initiator, host
        self.exporter_ip = _s16(host)
        self.conn = CollectorConnection(max_message_size=cfg.max_message_size, max_sessions=cfg.max_sessions,
                                        max_templates=cfg.max_templates, max_template_fields=cfg.max_template_fields,
                                        ipv6_bare=ipv6_bare)
        now = owner.clock()
        self.opened = self.last_rx = self.last_tx = now  # the handshake deadline counts from here, not from bytes
        self.opened_wall_ms = int(owner.wall_clock() * 1000)
        self.first_session_noted = False
        self.last_data: dict[int, float] = {}
        self.request_id = 0
        self.useful = False
        self.closing = False

    # -- I/O helpers

    def send(self, msg: m.Message) -> None:
        self.writer.write(self.conn.send(msg))
        self.last_tx = self.owner.clock()

    def goodbye(self) -> None:
        """FLOW_STOP every open session, DISCONNECT, close (graceful stop)."""
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(Exception):
            self._send_acks(list(self.conn.sessions))
            for sid, s in self.conn.sessions.items():
                if s.state not in (SessState.IDLE, SessState.CLOSED):
                    self.send(m.FlowStop(sid, 0, "collector stopping"))
            if self.conn.state is not ConnState.CLOSED:
                self.send(m.Disconnect())
        self.writer.close()

    async def run(self) -> bool:
        """Serve the connection until it closes; returns whether it got as far as receiving data."""
        owner = self.owner
        owner.connections.add(self)
        owner.stats.connections_opened += 1
        try:
            if self.initiator:
                sock = self.writer.get_extra_info("socket")
                local = sock.getsockname() if sock is not None else ("0.0.0.0", 0)
                ident = int(ipaddress.ip_address(local[0])) if sock is not None and sock.family == socket.AF_INET \
                    else 0
                self.send(m.Connect(ident, local[1], m.Capability.MULTISESSION, self.cfg.keepalive_s,
                                    self.cfg.vendor_id))
                await self.writer.drain()
            await self._loop()
        except (ConnectionError, OSError) as exc:
            log.info("ipdr: %s: connection lost: %s", self.name, exc)
        except Exception:  # a bug or a failed flush: this connection ends, the others and the dialer go on
            owner.count_error(self.name, "internal_error")
            log.exception("ipdr: %s: connection failed", self.name)
        finally:
            owner.connections.discard(self)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        return self.useful

    async def _loop(self) -> None:
        owner = self.owner
        while not self.closing:
            data = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):  # unlike wait_for, never loses a cancellation (3.11)
                    data = await self.reader.read(READ_SIZE)
            now = owner.clock()
            if data == b"":
                log.info("ipdr: %s: closed by the exporter", self.name)
                return
            if data:
                frames = self.conn.frames_received
                events = self.conn.receive_data(data, now)
                if self.conn.frames_received != frames:  # a complete message, not a byte dribbled in
                    self.last_rx = now
                await self._handle(events, now)
                if self.conn.state is ConnState.CLOSED:
                    return
            await self._timers(now)
            await self.writer.drain()

    # -- events

    async def _handle(self, events: list[object], now: float) -> None:
        for ev in events:
            if isinstance(ev, RecordsReceived):
                await self._records(ev, now)
            elif isinstance(ev, ProtocolViolation):
                self._violation(ev)
            elif isinstance(ev, m.Connect):  # exporter-initiated
                self.send(m.ConnectResponse(m.Capability.MULTISESSION, self.cfg.keepalive_s, self.cfg.vendor_id))
                self._get_sessions()
            elif isinstance(ev, m.ConnectResponse):
                log.info("ipdr: %s: connected (%s, keepalive %ds)", self.name, ev.vendor_id, ev.keepalive_s)
                self._get_sessions()
            elif isinstance(ev, m.GetSessionsResponse):
                self._start_flows(ev)
            elif isinstance(ev, m.TemplateData):
                names = ", ".join(t.type_name for t in ev.templates)
                log.info("ipdr: %s: session %d templates (config %d): %s", self.name, ev.session_id, ev.config_id,
                         names)
                self.send(m.FinalTemplateDataAck(ev.session_id))
            elif isinstance(ev, m.SessionStart):
                if ev.dropped_records:
                    self.owner.count_error(self.name, "exporter_dropped_records")
                    log.warning("ipdr: %s: session %d: exporter dropped %d records", self.name, ev.session_id,
                                ev.dropped_records)
            elif isinstance(ev, m.SessionStop):
                await self._ack([ev.session_id])
            elif isinstance(ev, m.Error):
                self.owner.stats.peer_errors += 1
                log.warning("ipdr: %s: ERROR from exporter: code 0x%04x (%s) session %d: %s", self.name, ev.code,
                            "session-specific" if ev.session_specific else "connection", ev.session_id,
                            ev.description)
            elif isinstance(ev, m.Disconnect):
                log.info("ipdr: %s: DISCONNECT from exporter", self.name)
                self.closing = True

    def _get_sessions(self) -> None:
        self.request_id = (self.request_id + 1) & 0xFFFF
        self.send(m.GetSessions(self.request_id))

    def _start_flows(self, ev: m.GetSessionsResponse) -> None:
        wanted = [w.upper() for w in self.cfg.sessions]
        names = [b.name for b in ev.sessions]
        if not any(not wanted or any(w in n.upper() for w in wanted) for n in names):
            self.owner.count_error(self.name, "no_wanted_session")
            log.warning("ipdr: %s: none of the exporter's sessions %s matches ipdr.sessions %s", self.name, names,
                        self.cfg.sessions)
        for block in ev.sessions:
            if wanted and not any(w in block.name.upper() for w in wanted):
                continue
            s = self.conn.sessions.get(block.session_id)
            if s is not None and s.state in (SessState.IDLE, SessState.CLOSED):
                if not self.first_session_noted:  # flows created before the first one ever are pre-existing
                    self.owner.usage.session_started(self.name, self.opened_wall_ms)
                    self.first_session_noted = True
                self.send(m.FlowStart(block.session_id))
                log.info("ipdr: %s: FLOW_START session %d (%s)", self.name, block.session_id, block.name)

    async def _records(self, ev: RecordsReceived, now: float) -> None:
        owner = self.owner
        self.last_data[ev.session_id] = now
        if ev.gap:
            owner.count_error(self.name, "dsn_gap")
        if ev.replayed:
            owner.count_error(self.name, "dsn_replayed")
        if not len(ev.records):
            return
        self.useful = True
        session_name = self.conn.sessions[ev.session_id].name
        async with owner.durability.lock:  # never between a flush and its commit
            result = owner.usage.mediate(ev, self.name, self.exporter_ip, int(owner.wall_clock() * 1000),
                                         session_name)
            # usage first: if the sink refuses it (overload), the batch is undone and nothing is acknowledged, so
            # the CMTS redelivers it; raw records refused after their usage was taken are only counted.
            if owner.sink.add("usage", result.usage) is False:
                owner.usage.undo_last()
                owner.count_error(self.name, "sink_refused")
                raise SinkRefused(f"sink refused {result.usage.num_rows} usage rows: closing to get a redelivery")
            if owner.sink.add("ipdr_records", result.ipdr_records) is False:
                owner.count_error(self.name, "sink_refused_raw")
        owner.stats.records += result.ipdr_records.num_rows
        owner.stats.usage_rows += result.usage.num_rows
        _metric_records(result.ipdr_records.num_rows)

    def _violation(self, v: ProtocolViolation) -> None:
        self.owner.count_error(self.name, v.reason)
        log.warning("ipdr: %s: %s: %s", self.name, v.reason, v.detail, extra={"client": self.name})
        if v.fatal:
            with contextlib.suppress(Exception):
                self.writer.write(m.encode(m.Error(0, int(time.time()), v.error_code, v.detail[:200])))
                self.writer.write(m.encode(m.Disconnect()))
            self.closing = True
        elif v.session_id is not None:
            sid = v.session_id
            self.owner.stats.sessions_stopped += 1
            self.send(m.Error(sid, int(time.time()), v.error_code, v.detail[:200]))
            self.send(m.FlowStop(sid, 1, v.reason))

    # -- timers

    async def _timers(self, now: float) -> None:
        if self.conn.state is ConnState.CONNECTED:
            due = [sid for sid, s in self.conn.sessions.items()
                   if s.received and (self.conn.ack_due(sid, now, self.cfg.ack_time_fraction)
                                      or now - self.last_data.get(sid, now) >= self.cfg.idle_ack_s)]
            if due:
                await self._ack(due)
            peer_ka = self.conn.peer_keepalive_s or self.cfg.keepalive_s
            if now - self.last_tx >= max(0.5, peer_ka / 2):
                self.send(m.KeepAlive())
        elif now - self.opened > self.cfg.connect_timeout_s:
            self.owner.count_error(self.name, "connect_timeout")
            self.owner.count_refused(self.host, "handshake_timeout")
            log.warning("ipdr: %s: no CONNECT handshake within %.0fs", self.name, self.cfg.connect_timeout_s,
                        extra={"client": self.host})
            self.closing = True
            return
        if now - self.last_rx > 2 * self.cfg.keepalive_s:
            self.owner.count_error(self.name, "keepalive_expired")
            log.warning("ipdr: %s: nothing received for %.0fs: closing", self.name, now - self.last_rx)
            with contextlib.suppress(Exception):
                self.send(m.Error(0, int(time.time()), m.ErrorCode.KEEPALIVE_EXPIRED, "keepalive expired"))
            self.closing = True

    async def _ack(self, session_ids: list[int]) -> None:
        """Make everything received durable, then acknowledge it."""
        if not any(self.conn.ack_for(sid) for sid in session_ids):
            return
        await self.owner.durability.sync()
        self._send_acks(session_ids)

    def _send_acks(self, session_ids: list[int]) -> None:
        for sid in session_ids:
            ack = self.conn.ack_for(sid)
            if ack is not None:
                self.send(ack)
                self.owner.stats.acks_sent += 1


def address_lookup(config: Config) -> AddressLookup | None:
    """``(S16 addresses, times ms) -> subscriber ids ('' unknown)`` over the subscriber bindings database (static file
    and RADIUS bindings), refreshed at most every ``subscribers.refresh_interval_s``; None if it cannot be opened."""
    try:
        bindings = open_bindings(config)
        # Bounded like the Mediator's index: only recent history in memory, older times read from the database.
        bindings.set_memory_limits(config.subscribers.memory_horizon_ms(config.mediation),
                                   config.subscribers.max_memory_bindings)
    except Exception as exc:  # the IPDR path works without address bindings
        log.warning("ipdr: subscriber bindings unavailable (%s): CM MAC file only", exc)
        return None
    last = [0.0]

    def lookup(addresses: np.ndarray, times: np.ndarray) -> np.ndarray:
        now = time.monotonic()
        if now - last[0] >= config.subscribers.refresh_interval_s:
            bindings.refresh()
            bindings.maybe_prune(int(time.time() * 1000))
            last[0] = now
        idx, _ = bindings.lookup(np.asarray(addresses, dtype="S16"), np.asarray(times, dtype=np.int64))
        names = bindings.subscriber_names
        if not len(names):
            return np.full(len(idx), "", dtype=object)
        return np.where(idx >= 0, names[np.maximum(idx, 0)], "").astype(object)

    return lookup


def make_usage(config: Config) -> IpdrUsage:
    """The delta state and table builder for ``config`` (state under store.path)."""
    cfg = config.ipdr
    subs = CmSubscribers(cfg.cm_subscribers_file or None)
    return IpdrUsage(config.data_path(cfg.state_dir), subs, interval_s=config.mediation.interval_s,
                     preexisting=cfg.preexisting,
                     address_lookup=address_lookup(config) if cfg.address_bindings else None)


async def start_ipdr(loop: asyncio.AbstractEventLoop | None, config: Config, sink: IpdrSink,
                     usage: IpdrUsage | None = None) -> IpdrCollector:
    """Daemon entry point: build and start the IPDR collector for ``config.ipdr`` feeding ``sink``.

    Returns the running :class:`IpdrCollector`; call ``await collector.stop()`` on shutdown *before* closing the
    sink (it flushes, commits the state, acknowledges and says FLOW_STOP/DISCONNECT to every CMTS). ``loop`` is
    accepted for symmetry with the other listeners; the running loop is used.
    """
    collector = IpdrCollector(config.ipdr, sink, usage if usage is not None else make_usage(config))
    await collector.start()
    return collector
